#include "support.hpp"

#include "../tools/common/metrics.hpp"
#include "../tools/common/plot.hpp"

#include <catch2/catch.hpp>
#include <cairo.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

namespace fs = std::filesystem;

namespace {

using ScratchDir = gg::test::TempDir;

struct Curves {
  std::vector<double> loss, accuracy, test;
};

Curves typical_run(int n) {
  Curves c;
  for (int i = 0; i < n; ++i) {
    c.loss.push_back(2.3 * std::exp(-i / 50.0) + 0.2);
    c.accuracy.push_back(100 - 90 * std::exp(-i / 50.0));
  }
  for (int k = 1; k <= n / 50; ++k) c.test.push_back(100 - 92 * std::exp(-k));
  return c;
}

// Pixel statistics of a PNG: its size and, per half, how many pixels are strongly blue (the
// colour of the curves; axes, grid and text are grey or black).
struct PngSummary {
  int width = 0, height = 0;
  long blue_left = 0, blue_right = 0;
  long non_white = 0;
};

PngSummary summarize_png(const std::string& path) {
  cairo_surface_t* s = cairo_image_surface_create_from_png(path.c_str());
  PngSummary out;
  if (cairo_surface_status(s) == CAIRO_STATUS_SUCCESS) {
    out.width = cairo_image_surface_get_width(s);
    out.height = cairo_image_surface_get_height(s);
    const unsigned char* data = cairo_image_surface_get_data(s);
    const int stride = cairo_image_surface_get_stride(s);
    for (int y = 0; y < out.height; ++y)
      for (int x = 0; x < out.width; ++x) {
        // CAIRO_FORMAT_(A)RGB32 in native (little-endian) order: B, G, R, A.
        const unsigned char* p = data + y * stride + x * 4;
        int b = p[0], g = p[1], r = p[2];
        if (r != 255 || g != 255 || b != 255) ++out.non_white;
        if (b > r + 60 && b > 120) ++(x < out.width / 2 ? out.blue_left : out.blue_right);
      }
  }
  cairo_surface_destroy(s);
  return out;
}

std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> out(1);
  for (char ch : line) {
    if (ch == ',')
      out.emplace_back();
    else
      out.back() += ch;
  }
  return out;
}

}  // namespace

TEST_CASE("the training-curve PNG is written at 1200x500 with curves drawn in both panels") {
  ScratchDir d;
  const std::string path = d.file("curves.png");
  Curves c = typical_run(300);
  gg::tools::plot_training_curves(path, c.loss, c.accuracy, "Training Results: 92.18%, learning rate=0.1", c.test, 50);
  PngSummary s = summarize_png(path);
  CHECK(s.width == 1200);
  CHECK(s.height == 500);
  CHECK(s.blue_left > 300);
  CHECK(s.blue_right > 300);
  CHECK(d.entries() == 1);  // no temporary file left behind
}

TEST_CASE("plotting replaces an existing PNG") {
  ScratchDir d;
  const std::string path = d.file("curves.png");
  std::ofstream(path) << "not a png";
  Curves c = typical_run(100);
  gg::tools::plot_training_curves(path, c.loss, c.accuracy, "again");
  CHECK(summarize_png(path).width == 1200);
  CHECK(d.entries() == 1);
}

TEST_CASE("a single iteration, a constant series and NaN values still give a drawn figure") {
  ScratchDir d;
  const double nan = std::nan("");
  const std::string one = d.file("one.png"), flat = d.file("flat.png"), gaps = d.file("gaps.png");
  gg::tools::plot_training_curves(one, {0.7}, {55.0}, "one point", {60.0}, 1);
  gg::tools::plot_training_curves(flat, {1, 1, 1, 1}, {100, 100, 100, 100}, "flat");
  gg::tools::plot_training_curves(gaps, {2, nan, 1, 0.5, nan}, {nan, 20, 40, nan, 80}, "gaps", {nan, 50}, 2);
  for (const auto& p : {one, flat, gaps}) {
    PngSummary s = summarize_png(p);
    INFO(p);
    CHECK(s.width == 1200);
    CHECK(s.blue_left > 10);
    CHECK(s.blue_right > 10);
  }
}

TEST_CASE("a series with no finite value still gives axes rather than an error") {
  ScratchDir d;
  const double nan = std::nan("");
  const std::string path = d.file("diverged.png");
  gg::tools::plot_training_curves(path, {nan, nan}, {10, 10}, "diverged");
  PngSummary s = summarize_png(path);
  CHECK(s.non_white > 1000);
  CHECK(s.blue_right > 10);
}

TEST_CASE("plotting an empty loss or accuracy series throws invalid_argument and writes nothing") {
  ScratchDir d;
  const std::string path = d.file("empty.png");
  CHECK_THROWS_AS(gg::tools::plot_training_curves(path, {}, {50.0}, "t"), std::invalid_argument);
  CHECK_THROWS_AS(gg::tools::plot_training_curves(path, {1.0}, {}, "t"), std::invalid_argument);
  CHECK_THROWS_AS(gg::tools::plot_training_curves(path, {1.0}, {50.0}, "t", {60.0}, -1), std::invalid_argument);
  CHECK_THROWS_AS(gg::tools::plot_training_curves(path, {1.0, 0.5}, {50, 60}, "t", {60.0, 70.0}, 0, {1.0}), std::invalid_argument);
  CHECK(d.entries() == 0);
}

TEST_CASE("plotting into a missing directory throws an error naming the path") {
  ScratchDir d;
  const std::string path = d.file("nope/curves.png");
  CHECK_THROWS_WITH(gg::tools::plot_training_curves(path, {1.0, 0.5}, {50, 60}, "t"),
                    Catch::StartsWith(path + ": ") && Catch::Contains("No such file or directory"));
}

TEST_CASE("the metrics CSV has a header and one parseable row per iteration") {
  ScratchDir d;
  const std::string path = d.file("metrics.csv");
  const double loss0 = 2.302585092994046, loss1 = 0.1 + 0.2;
  gg::tools::write_metrics_csv(path, {{1, loss0, 12.5, std::nullopt}, {2, loss1, 92.18, 91.25}, {3, 0.25, 100, std::nullopt}});

  auto lines = lines_of(path);
  REQUIRE(lines.size() == 4);
  CHECK(lines[0] == "iteration,loss,train_accuracy,test_accuracy");
  CHECK(lines[1] == "1,2.302585092994046,12.5,");
  CHECK(lines[2] == "2,0.30000000000000004,92.18,91.25");

  auto f = split_csv(lines[2]);
  REQUIRE(f.size() == 4);
  CHECK(std::stoll(f[0]) == 2);
  CHECK(std::strtod(f[1].c_str(), nullptr) == loss1);  // full precision survives
  CHECK(std::strtod(f[2].c_str(), nullptr) == 92.18);
  CHECK(std::strtod(f[3].c_str(), nullptr) == 91.25);
  auto g = split_csv(lines[3]);
  REQUIRE(g.size() == 4);
  CHECK(g[3].empty());
}

TEST_CASE("a metrics CSV with no rows is just the header") {
  ScratchDir d;
  const std::string path = d.file("metrics.csv");
  gg::tools::write_metrics_csv(path, {});
  CHECK(lines_of(path) == std::vector<std::string>{"iteration,loss,train_accuracy,test_accuracy"});
}
