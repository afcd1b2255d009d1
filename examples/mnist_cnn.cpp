// The reference CNN of docs/mnist.md, layer by layer with gg::nn, trained on MNIST through the
// training layer (gg::train) and evaluated on the test set.
//
//   build/examples/mnist_cnn [MNIST directory] [epochs]
//
// The directory defaults to the one scripts/fetch-mnist fills ($GRADGRAPH_DATA, else
// ~/.cache/gradgraph/mnist); 2 epochs reach about 98.9%, `mnist-train --model cnn` runs the same
// network with every option.
#include <gradgraph/gradgraph.hpp>
#include <gradgraph/train.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

namespace nn = gg::nn;

int main(int argc, char** argv) try {
  const char* env = std::getenv("GRADGRAPH_DATA");
  const char* home = std::getenv("HOME");
  const std::string dir = argc > 1 ? argv[1] : env ? env : std::string(home ? home : ".") + "/.cache/gradgraph/mnist";
  const int epochs = argc > 2 ? std::atoi(argv[2]) : 2;
  const gg::train::Dataset train = gg::train::load_idx(dir, "train"), test = gg::train::load_idx(dir, "t10k");

  gg::Graph g(gg::f32);
  gg::Value x = g.input("x", {gg::dyn, 1, 28, 28});  // NCHW images
  gg::Value h = nn::conv2d(x, 32, {.kernel = 3, .padding = 1, .activation = nn::Activation::relu});
  h = gg::max_pool2d(h, 2);
  h = nn::conv2d(h, 64, {.kernel = 3, .padding = 1, .activation = nn::Activation::relu});
  h = gg::flatten(gg::max_pool2d(h, 2));
  h = gg::dropout(nn::dense(h, 128, {.layout = nn::Layout::rows, .activation = nn::Activation::relu}), 0.25);
  gg::Value logits = nn::dense(h, 10, {.layout = nn::Layout::rows});

  gg::train::Model m{.x = x, .labels = g.input("labels", {gg::dyn}, gg::i64), .logits = logits, .class_axis = 1,
                     .layout = nn::Layout::nchw, .spec = "", .example = {28, 28}};
  gg::train::TrainOptions o;
  o.optimizer = {.kind = gg::train::Optimizer::Kind::adam, .lr = 1e-3};
  gg::train::Trainer t(g, m, o);
  gg::train::Batches batches(train, {.batch_size = 128, .seed = 1, .layout = m.layout});
  gg::train::Callbacks cb;
  cb.on_epoch = [](const gg::train::EpochInfo& e) {
    std::printf("epoch %lld: loss %.4f, train accuracy %.2f%%, %.0f images/s\n", static_cast<long long>(e.epoch + 1), e.loss,
                100 * e.accuracy, e.images_per_second);
    return true;
  };
  t.fit(batches, {.epochs = epochs}, cb);
  std::printf("test accuracy %.2f%%\n", 100 * t.evaluate(test).accuracy);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "mnist_cnn: %s\n", e.what());
  return 1;
}
