#include "metrics.hpp"

#include <gradgraph/atomic_file.hpp>

#include <charconv>
#include <ostream>

namespace gg::tools {

namespace {

// std::to_chars without a precision gives the shortest text that round-trips exactly:
// "92.18" rather than %.17g's "92.180000000000007", with no precision lost.
void put_double(std::ostream& os, double v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  os.write(buf, res.ptr - buf);
}

}  // namespace

void write_metrics_csv(const std::string& path, const std::vector<MetricsRow>& rows) {
  io::write_file_atomic(path, [&](std::ostream& os) {
    os << "iteration,loss,train_accuracy,test_accuracy\n";
    for (const MetricsRow& r : rows) {
      os << r.iteration << ',';
      put_double(os, r.loss);
      os << ',';
      put_double(os, r.train_accuracy);
      os << ',';
      if (r.test_accuracy) put_double(os, *r.test_accuracy);
      os << '\n';
    }
  });
}

}  // namespace gg::tools
