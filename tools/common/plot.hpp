// Figures for the example tools, drawn with cairo so the tools need no Python: training curves
// (two panels side by side, loss on the left, accuracy on the right), a confusion matrix and a
// grid of images with captions. Every PNG is written atomically: on failure an existing file is
// left as it was.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gg::tools {

// Writes a ~1200x500 PNG to `png_path` (atomically). `loss[i]` and `accuracy[i]` belong to
// iteration i+1; accuracies are percents (0..100). `test_accuracy[k]` is drawn at iteration
// x = test_at[k] when given (loss[i] is drawn at x = i + 1: pass i + 1 for a test measured with
// loss[i]), else at
// iteration (k+1)*test_every, or spread evenly over the run when test_every is 0. Non-finite
// values are skipped (the line breaks there). Throws std::invalid_argument for an empty loss or
// accuracy series, a negative test_every or a test_at of another length than test_accuracy,
// std::runtime_error if the file cannot be written.
void plot_training_curves(const std::string& png_path, const std::vector<double>& loss,
                          const std::vector<double>& accuracy, const std::string& title,
                          const std::vector<double>& test_accuracy = {}, int test_every = 0,
                          const std::vector<double>& test_at = {});

// A confusion-matrix heat map. `counts` holds classes*classes counts, row-major: row = true
// class, column = predicted class, classes = class_names.size(). Each cell is shaded by its
// share of its row (white-to-blue: 0 = lightest, 1 = darkest; a row with no examples stays
// lightest) and shows its count when the cell is big enough for the number; class names label
// both axes ("true class" down the left, "predicted class" along the bottom), a colour bar on
// the right gives the scale. The PNG is (270 + classes*c) x (128 + classes*c) pixels, or
// (270 + classes*c) x (194 + classes*c) when some class name is too wide for a column and the
// names along the bottom are turned upright; the cell size is
// c = max(12, min(64, 640 / classes), 192 / classes) (integer division), and the matrix's
// top-left corner is at (160, 64). Long names and titles are drawn smaller to fit.
// Throws std::invalid_argument "plot_confusion_matrix: <png_path>: ..." for no classes, more
// than 100, counts.size() != classes^2 or a negative count; std::runtime_error "<png_path>: ..."
// if the file cannot be written.
void plot_confusion_matrix(const std::string& png_path, const std::vector<std::int64_t>& counts,
                           const std::vector<std::string>& class_names, const std::string& title);

// A grid of 8-bit grayscale images (each width*height pixels, row-major, 0 = black) with a
// one-line caption under each (UTF-8, e.g. "true 3 → pred 5, p=0.97"), filled row by row,
// `columns` to a row. Each image is scaled up by s = max(1, 96 / max(width, height)) (3 for
// MNIST's 28x28) with nearest-neighbour sampling, so its pixels stay sharp squares, and gets a
// thin grey frame. The PNG is (32 + cols*cw) x (64 + rows*ch) pixels, where
// cols = clamp(images, 1, columns), rows = max(1, ceil(images / cols)), cw = max(s*width, 140) + 12,
// ch = s*height + 46. No images is allowed: the PNG then has the title and "(no images)" in a
// single empty cell (cols = rows = 1), so a tool can always write the file it was asked for.
// Throws std::invalid_argument "plot_image_grid: <png_path>: ..." if images.size() !=
// captions.size(), an image does not hold width*height pixels, width or height is outside
// 1..16384, columns < 1, or the PNG would exceed cairo's 32767 pixels on a side;
// std::runtime_error "<png_path>: ..." if the file cannot be written.
void plot_image_grid(const std::string& png_path, const std::vector<std::vector<std::uint8_t>>& images,
                     std::int64_t width, std::int64_t height, const std::vector<std::string>& captions,
                     const std::string& title, int columns = 8);

}  // namespace gg::tools
