// mnist-eval CHECKPOINT: the test accuracy of a checkpoint written by mnist-train, per class and
// as a confusion matrix; --plot draws the matrix and the most confidently wrong test images. The
// network is rebuilt from the checkpoint's own description (gg::train::rebuild).
#include <gradgraph/gradgraph.hpp>
#include <gradgraph/idx.hpp>

#include "common/plot.hpp"

#include "common/cli.hpp"

#include <boost/program_options.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

namespace po = boost::program_options;

namespace {

using gg::tools::UsageError;

struct Options {
  std::string checkpoint, data, plot, export_onnx;
  double test_divisor = 0;
  int threads = 0, wrong = 32;
};

std::optional<Options> parse(int argc, char** argv) {
  Options o;
  po::options_description desc(
      "mnist-eval CHECKPOINT: test accuracy, per-class accuracy and the confusion matrix of a checkpoint\n"
      "written by mnist-train.\n\nOptions");
  // clang-format off
  desc.add_options()
    ("help,h", "show this help and exit")
    ("data", po::value(&o.data), "directory with the test IDX files (default: the one the checkpoint was trained on, "
       "else gradgraph's MNIST cache)")
    ("plot", po::value(&o.plot), "write PREFIX-confusion.png (the confusion matrix as a heat map) and PREFIX-wrong.png "
       "(the most confidently wrong test images)")
    ("wrong", po::value(&o.wrong)->default_value(32), "how many wrong images --plot shows")
    ("export-onnx", po::value(&o.export_onnx), "also write the checkpoint's network as an ONNX model to this file "
       "(opset 11; input X in the checkpoint's layout, normalised as its data were; outputs logits and probabilities; docs/interop.md)")
    ("test-divisor", po::value(&o.test_divisor)->default_value(0), "divide the test pixels by this (0: the checkpoint's normalisation)")
    ("threads", po::value(&o.threads)->default_value(0), "threads (0: all cores)");
  // clang-format on
  po::options_description hidden;
  hidden.add_options()("checkpoint", po::value(&o.checkpoint));
  po::options_description all;
  all.add(desc).add(hidden);
  po::positional_options_description pos;
  pos.add("checkpoint", 1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(all).positional(pos).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: mnist-eval CHECKPOINT [options]\n" << desc << "\n";
      return std::nullopt;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  if (o.checkpoint.empty()) throw UsageError("which checkpoint? usage: mnist-eval CHECKPOINT [options]");
  if (o.threads < 0 || o.threads > 64) throw UsageError("--threads must be 0 (all cores) to 64 (got " + std::to_string(o.threads) + ")");
  if (o.wrong < 0 || o.wrong > 1000) throw UsageError("--wrong must be 0 to 1000 (got " + std::to_string(o.wrong) + ")");
  if (!(o.test_divisor >= 0) || !std::isfinite(o.test_divisor))
    throw UsageError("--test-divisor must be 0 or positive");
  return o;
}

int run(const Options& o) {
  gg::train::Rebuilt net = gg::train::rebuild(o.checkpoint);
  const gg::train::CheckpointInfo& info = net.info;
  std::string data = o.data;
  if (data.empty()) {
    const auto it = info.metadata.find("data");
    data = it != info.metadata.end() && std::filesystem::is_directory(it->second) ? it->second : gg::data::default_data_dir();
  }
  gg::train::Dataset test = gg::train::load_idx(data, "t10k");
  if (test.example != net.model.example)
    throw std::runtime_error(data + ": test images are " + gg::to_string(test.example) + ", the checkpoint's network takes " +
                             gg::to_string(net.model.example));
  gg::train::TrainOptions to;
  to.compile.threads = o.threads;
  gg::train::Trainer trainer(*net.graph, net.model, to);
  trainer.load(o.checkpoint);
  gg::train::Normalization norm = net.normalization;
  if (o.test_divisor > 0) norm.divisor = o.test_divisor;
  const gg::train::Evaluation e = trainer.evaluate(test, norm);
  const std::vector<std::string> names = gg::train::class_names(data, e.classes);

  std::printf("%s: %s (%s), trained %s steps\n", o.checkpoint.c_str(), info.get("spec").c_str(), info.get("dtype").c_str(),
              info.get("step").c_str());
  std::printf("test set %s: %lld images, %s\n", test.name.c_str(), static_cast<long long>(e.count), norm.text().c_str());
  std::printf("Accuracy: %.2f %% (loss %.4f)\n\n", e.accuracy * 100.0, e.loss);
  std::size_t width = 5;
  for (const std::string& n : names) width = std::max(width, n.size());
  std::printf("%-*s  accuracy  images\n", static_cast<int>(width), "class");
  for (std::int64_t c = 0; c < e.classes; ++c) {
    std::int64_t row = 0;
    for (std::int64_t k = 0; k < e.classes; ++k) row += e.confusion[static_cast<std::size_t>(c * e.classes + k)];
    std::printf("%-*s  %7.2f%%  %6lld\n", static_cast<int>(width), names[static_cast<std::size_t>(c)].c_str(),
                e.per_class[static_cast<std::size_t>(c)] * 100.0, static_cast<long long>(row));
  }
  std::printf("\nconfusion matrix (rows: true class, columns: predicted)\n%*s", static_cast<int>(width), "");
  for (std::int64_t k = 0; k < e.classes; ++k) std::printf(" %5lld", static_cast<long long>(k));
  std::printf("\n");
  for (std::int64_t c = 0; c < e.classes; ++c) {
    std::printf("%-*s", static_cast<int>(width), names[static_cast<std::size_t>(c)].c_str());
    for (std::int64_t k = 0; k < e.classes; ++k)
      std::printf(" %5lld", static_cast<long long>(e.confusion[static_cast<std::size_t>(c * e.classes + k)]));
    std::printf("\n");
  }
  std::fflush(stdout);

  if (!o.export_onnx.empty()) {
    trainer.export_onnx(o.export_onnx, net.normalization);
    std::fprintf(stderr, "# wrote the ONNX model %s\n", o.export_onnx.c_str());
  }
  if (!o.plot.empty()) {
    gg::tools::plot_confusion_matrix(o.plot + "-confusion.png", e.confusion, names,
                                     "Confusion matrix: " + info.get("spec") + ", test accuracy " +
                                         std::to_string(e.accuracy * 100.0).substr(0, 5) + "%");
    std::vector<std::int64_t> wrong;
    for (std::int64_t i = 0; i < e.count; ++i)
      if (e.predicted[static_cast<std::size_t>(i)] != test.labels[static_cast<std::size_t>(i)]) wrong.push_back(i);
    std::stable_sort(wrong.begin(), wrong.end(), [&](std::int64_t a, std::int64_t b) {
      return e.confidence[static_cast<std::size_t>(a)] > e.confidence[static_cast<std::size_t>(b)];
    });
    wrong.resize(std::min<std::size_t>(wrong.size(), static_cast<std::size_t>(o.wrong)));
    std::vector<std::vector<std::uint8_t>> images;
    std::vector<std::string> captions;
    const std::int64_t f = test.features();
    for (std::int64_t i : wrong) {
      images.emplace_back(test.pixels.begin() + i * f, test.pixels.begin() + (i + 1) * f);
      char buf[160];
      std::snprintf(buf, sizeof buf, "#%lld: %s as %s, p=%.2f", static_cast<long long>(i),
                    names[static_cast<std::size_t>(test.labels[static_cast<std::size_t>(i)])].c_str(),
                    names[static_cast<std::size_t>(e.predicted[static_cast<std::size_t>(i)])].c_str(),
                    e.confidence[static_cast<std::size_t>(i)]);
      captions.push_back(buf);
    }
    const std::int64_t h = test.example.rank == 2 ? test.example[0] : 1, w = f / h;
    gg::tools::plot_image_grid(o.plot + "-wrong.png", images, w, h, captions,
                               "The " + std::to_string(images.size()) + " most confidently wrong test images");
    std::fprintf(stderr, "# wrote %s-confusion.png and %s-wrong.png\n", o.plot.c_str(), o.plot.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return gg::tools::cli_main("mnist-eval", argc, argv, parse, run); }
