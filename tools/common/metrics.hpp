// Per-iteration training metrics as CSV, for plotting or comparing runs outside the tools.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace gg::tools {

struct MetricsRow {
  std::int64_t iteration;
  double loss;
  double train_accuracy;                // percent
  std::optional<double> test_accuracy;  // percent; only on iterations where the test set was evaluated
};

// Writes "iteration,loss,train_accuracy,test_accuracy" and one line per row (atomically). Numbers
// are written in the shortest form that reads back to the identical double; an absent test
// accuracy is an empty field. Throws std::runtime_error if the file cannot be written.
void write_metrics_csv(const std::string& path, const std::vector<MetricsRow>& rows);

// Durations counted in buckets of 1% width (allocated once), for quantiles: a median per step
// stays put when a shared machine stalls a process for a millisecond now and then, where a mean
// does not.
struct Durations {
  static constexpr double kShortest = 1e-7, kRatio = 1.01;  // bucket b: [kShortest kRatio^b, kShortest kRatio^(b+1))
  static constexpr std::size_t kBuckets = 1900;              // up to 16 s; shorter and longer ones go to the ends
  std::vector<std::uint32_t> counts = std::vector<std::uint32_t>(kBuckets, 0);
  std::uint64_t total = 0;
  void add(double seconds);
  // The q-quantile (0 <= q < 1) to within 1%, in seconds: the middle of its bucket. 0 when nothing
  // was added.
  double quantile(double q) const;
};

}  // namespace gg::tools
