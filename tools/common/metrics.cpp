#include "metrics.hpp"

#include <gradgraph/atomic_file.hpp>

#include <charconv>
#include <cmath>
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

void Durations::add(double seconds) {
  const double at = seconds > kShortest ? std::log(seconds / kShortest) / std::log(kRatio) : 0.0;
  ++counts[at >= static_cast<double>(kBuckets - 1) ? kBuckets - 1 : static_cast<std::size_t>(at)];
  ++total;
}

double Durations::quantile(double q) const {
  if (total == 0) return 0;
  // The smallest bucket with more than q of the durations at or below it.
  const auto rank = static_cast<std::uint64_t>(std::floor(q * static_cast<double>(total)));
  std::uint64_t seen = 0;
  std::size_t b = 0;
  for (; b + 1 < kBuckets; ++b) {
    seen += counts[b];
    if (seen > rank) break;
  }
  return kShortest * std::pow(kRatio, static_cast<double>(b) + 0.5);
}

}  // namespace gg::tools
