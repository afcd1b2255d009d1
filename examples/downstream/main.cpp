// A program outside gradgraph's source tree: it sees only an installed gradgraph (the headers under
// include/gradgraph/, libgradgraph.so or .a, gradgraph.pc), as any downstream project would.
// It learns XOR with a batch-first 2-8-2 MLP (tanh, softmax cross-entropy on int64 labels, Adam),
// saves the weights as safetensors and reads them back. Exit 0 only if the loss fell to under a
// tenth of its start, all four points are classified right, and the weights survived the round trip.
#include <gradgraph/gradgraph.hpp>
#include <gradgraph/safetensors.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

int main(int argc, char** argv) {
  const std::string checkpoint = argc > 1 ? argv[1] : "downstream.st";

  gg::Graph g(gg::f32);
  gg::Value x = g.input("X", {gg::dyn, 2});           // {batch, features}
  gg::Value y = g.input("y", {gg::dyn}, gg::i64);     // class indices
  gg::Value h = gg::nn::dense(x, 8, {.layout = gg::nn::Layout::rows, .activation = gg::nn::Activation::tanh});
  gg::Value logits = gg::nn::dense(h, 2, {.layout = gg::nn::Layout::rows});  // {batch, 2}
  gg::Value loss = gg::softmax_cross_entropy(logits, y);
  gg::Value accuracy = gg::mean(gg::equal(gg::argmax(logits, 1), y));
  std::vector<gg::Value> params = g.params();
  std::vector<gg::Value> step = gg::adam(params, gg::gradients(loss, params), {.lr = 0.05});
  gg::CompileOptions options;
  options.seed = 7;
  gg::Program p = g.compile({loss, accuracy, step}, options);

  std::vector<float> points = {0, 0, 0, 1, 1, 0, 1, 1};
  std::vector<std::int64_t> labels = {0, 1, 1, 0};
  const gg::TensorView xv(points.data(), {4, 2});
  const gg::TensorView yv(labels.data(), {4});

  double first = 0, last = 0;
  for (int i = 0; i < 200; ++i) {
    p.run({{x, xv}, {y, yv}});  // the loss and accuracy of the weights before this step's update
    last = p.scalar(loss);
    if (i == 0) first = last;
  }
  const double acc = p.scalar(accuracy);
  std::printf("loss %.4f -> %.4f after 200 Adam steps, accuracy %.0f%%\n", first, last, acc * 100.0);

  // The weights, written and read back as any safetensors reader would see them.
  std::vector<std::pair<std::string, gg::TensorView>> tensors;
  for (const gg::Value& w : params) tensors.emplace_back(w.name(), p.param(w));
  gg::io::save_safetensors(checkpoint, tensors, {{"example", "examples/downstream"}});
  const gg::io::SafetensorsFile back = gg::io::load_safetensors(checkpoint);
  bool same = back.tensors.size() == tensors.size();
  for (const auto& [name, view] : tensors) {
    const gg::Tensor& t = back.at(name);
    same = same && t.shape() == view.shape &&
           std::memcmp(t.data(), view.data, static_cast<std::size_t>(view.numel()) * sizeof(float)) == 0;
  }
  std::printf("%zu tensors saved to %s and read back %s\n", tensors.size(), checkpoint.c_str(),
              same ? "unchanged" : "DIFFERENT");

  const bool learned = last < 0.1 * first && acc == 1.0;
  if (!learned) std::fprintf(stderr, "downstream: XOR was not learned (loss %.4f -> %.4f, accuracy %.2f)\n", first, last, acc);
  return learned && same ? 0 : 1;
}
