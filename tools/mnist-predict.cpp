// mnist-predict CHECKPOINT IMAGE...: the class of each 28x28 grayscale image (PGM or PNG) under a
// checkpoint written by mnist-train, with the top-3 probabilities. Images of another size are
// rejected, not resized: MNIST digits are centred in 28x28 frames, and a resize would not make them so.
#include <gradgraph/gradgraph.hpp>

#include "common/image.hpp"

#include "common/cli.hpp"

#include <boost/program_options.hpp>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

namespace po = boost::program_options;

namespace {

using gg::tools::UsageError;

struct Options {
  std::string checkpoint;
  std::vector<std::string> images;
  int top = 3;
};

std::optional<Options> parse(int argc, char** argv) {
  Options o;
  po::options_description desc(
      "mnist-predict CHECKPOINT IMAGE...: classify 28x28 grayscale images (PGM or PNG, white digit on\n"
      "black as in MNIST) with a checkpoint written by mnist-train.\n\nOptions");
  desc.add_options()("help,h", "show this help and exit")("top", po::value(&o.top)->default_value(3),
                                                          "how many classes to list per image");
  po::options_description hidden;
  hidden.add_options()("checkpoint", po::value(&o.checkpoint))("image", po::value(&o.images));
  po::options_description all;
  all.add(desc).add(hidden);
  po::positional_options_description pos;
  pos.add("checkpoint", 1).add("image", -1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(all).positional(pos).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: mnist-predict CHECKPOINT IMAGE...\n" << desc << "\n";
      return std::nullopt;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  if (o.checkpoint.empty() || o.images.empty()) throw UsageError("usage: mnist-predict CHECKPOINT IMAGE...");
  if (o.top < 1 || o.top > 100) throw UsageError("--top must be 1 to 100 (got " + std::to_string(o.top) + ")");
  return o;
}

int run(const Options& o) {
  gg::train::Rebuilt net = gg::train::rebuild(o.checkpoint);
  const gg::train::CheckpointInfo& info = net.info;
  if (net.model.example != gg::Shape{28, 28})
    throw std::runtime_error(o.checkpoint + ": its network takes " + gg::to_string(net.model.example) + " inputs, not 28x28 images");
  // Every image is read and checked before anything is computed: one bad file, one line, no output.
  gg::train::Dataset d;
  d.name = "images";
  d.example = net.model.example;
  d.classes = net.model.logits.shape()[net.model.class_axis];
  for (const std::string& path : o.images) {
    const std::vector<std::uint8_t> px = gg::tools::require_28x28(gg::tools::read_gray_image(path), path);
    d.pixels.insert(d.pixels.end(), px.begin(), px.end());
    d.labels.push_back(0);  // unknown: evaluate's accuracy is meaningless here, its probabilities are not
    ++d.count;
  }
  gg::train::Trainer trainer(*net.graph, net.model, {});
  trainer.load(o.checkpoint);
  const gg::train::Evaluation e = trainer.evaluate(d, net.normalization);
  const auto data = info.metadata.find("data");
  const std::vector<std::string> names = gg::train::class_names(data == info.metadata.end() ? "" : data->second, e.classes);
  const int top = static_cast<int>(std::min<std::int64_t>(o.top, e.classes));
  for (std::int64_t i = 0; i < d.count; ++i) {
    std::vector<std::int64_t> order(static_cast<std::size_t>(e.classes));
    std::iota(order.begin(), order.end(), std::int64_t{0});
    const double* p = e.probabilities.data() + i * e.classes;
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return p[a] > p[b]; });
    std::printf("%s: %s", o.images[static_cast<std::size_t>(i)].c_str(), names[static_cast<std::size_t>(order[0])].c_str());
    for (int k = 0; k < top; ++k)
      std::printf("%s%s %.3f", k ? ", " : " | top: ", names[static_cast<std::size_t>(order[static_cast<std::size_t>(k)])].c_str(),
                  p[order[static_cast<std::size_t>(k)]]);
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return gg::tools::cli_main("mnist-predict", argc, argv, parse, run); }
