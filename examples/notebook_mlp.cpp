// The NumpyNet notebook's network (784-64-10, ReLU, softmax cross-entropy), written in the
// graph API and trained for a few full-batch steps on a small synthetic data set.
// The gradients are not written anywhere: gg::gradients derives them.
#include <gradgraph/gradgraph.hpp>

#include <cstdio>
#include <fstream>
#include <random>
#include <string>

// With an argument, also writes the forward+backward graph there as Graphviz DOT; with
// --schedule, prints the compiled program's steps.
int main(int argc, char** argv) {
  const std::int64_t m = 512;  // examples (columns, as in the notebook)

  gg::Graph g(gg::f32);
  gg::Value X = g.input("X", {784, gg::dyn});
  gg::Value Y = g.input("Y", {10, gg::dyn});
  gg::Value W1 = g.param("W1", {64, 784}, gg::he_normal());
  gg::Value b1 = g.param("b1", {64, 1});
  gg::Value W2 = g.param("W2", {10, 64}, gg::he_normal());
  gg::Value b2 = g.param("b2", {10, 1});
  gg::Value A1 = gg::relu(gg::matmul(W1, X) + b1);
  gg::Value Z2 = gg::matmul(W2, A1) + b2;
  gg::Value loss = gg::softmax_cross_entropy(Z2, Y, 0);  // mean over the examples
  std::vector<gg::Value> grads = gg::gradients(loss, {W1, b1, W2, b2});
  std::vector<gg::Value> step = gg::sgd({W1, b1, W2, b2}, grads, {.lr = 0.5});
  gg::Program p = g.compile({loss, step});  // ordered and planned once
  const std::string arg = argc > 1 ? argv[1] : "";
  if (arg == "--schedule") {
    for (const std::string& s : p.schedule(m)) std::printf("  %s\n", s.c_str());
  } else if (!arg.empty()) {
    std::ofstream dot(arg);
    gg::write_dot(g, dot);
  }
  std::printf("%d kernels per step; planned arena %zu bytes at batch %lld (%zu without sharing)\n", p.num_steps(m),
              p.planned_bytes(m), static_cast<long long>(m), p.unshared_bytes(m));

  // Synthetic "digits": class c lights up pixels [78c, 78c + 78) plus noise.
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> noise(0.0f, 0.3f);
  gg::Tensor images(gg::f32, {784, m}), labels(gg::f32, {10, m});
  for (std::int64_t j = 0; j < m; ++j) {
    const std::int64_t c = j % 10;
    labels.set({c, j}, 1.0);
    for (std::int64_t i = 0; i < 784; ++i) images.set({i, j}, noise(rng) + ((i / 78 == c) ? 0.7f : 0.0f));
  }

  for (int it = 0; it <= 50; ++it) {
    p.run({{X, images}, {Y, labels}});  // forward, backward and the update, in one planned run
    if (it % 10 == 0) std::printf("step %2d  loss %.4f\n", it, p.scalar(loss));
  }
  return 0;
}
