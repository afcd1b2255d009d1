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

}  // namespace gg::tools
