// Training-curve figure for the example tools: one PNG, two panels side by side (loss on the
// left, accuracy on the right), drawn with cairo so the tools need no Python.
#pragma once

#include <string>
#include <vector>

namespace gg::tools {

// Writes a ~1200x500 PNG to `png_path` (atomically). `loss[i]` and `accuracy[i]` belong to
// iteration i+1; accuracies are percents (0..100). `test_accuracy[k]` is drawn at iteration
// (k+1)*test_every, or spread evenly over the run when test_every is 0. Non-finite values are
// skipped (the line breaks there). Throws std::invalid_argument for an empty loss or accuracy
// series or a negative test_every, std::runtime_error if the file cannot be written.
void plot_training_curves(const std::string& png_path, const std::vector<double>& loss,
                          const std::vector<double>& accuracy, const std::string& title,
                          const std::vector<double>& test_accuracy = {}, int test_every = 0);

}  // namespace gg::tools
