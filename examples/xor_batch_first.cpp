// XOR with a tanh hidden layer in the row-major, batch-first layout ({batch, features}), a
// binary cross-entropy written out of elementary ops (no fused loss), and SGD with momentum.
// Also writes the forward+backward graph as Graphviz (xor.dot) to look at.
#include <gradgraph/gradgraph.hpp>

#include <cstdio>
#include <fstream>

int main() {
  gg::Graph g(gg::f64);
  gg::Value X = g.input("X", {gg::dyn, 2});
  gg::Value T = g.input("T", {gg::dyn, 1});
  gg::Value W1 = g.param("W1", {2, 8}, gg::glorot_uniform(2, 8));
  gg::Value b1 = g.param("b1", {8});
  gg::Value W2 = g.param("W2", {8, 1}, gg::glorot_uniform(8, 1));
  gg::Value b2 = g.param("b2", {1});

  gg::Value H = gg::tanh(gg::matmul(X, W1) + b1);  // {batch, 8}; b1 broadcasts over rows
  gg::Value P = gg::sigmoid(gg::matmul(H, W2) + b2);
  // BCE = -mean(t log p + (1 - t) log(1 - p)), clamped away from log(0) by a small epsilon.
  const double eps = 1e-12;
  gg::Value bce = -gg::mean(T * gg::log(P + eps) + (1.0 - T) * gg::log((1.0 - P) + eps));

  std::vector<gg::Value> params = {W1, b1, W2, b2};
  std::vector<gg::Value> step = gg::sgd(params, gg::gradients(bce, params), {.lr = 0.5, .momentum = 0.9});
  gg::CompileOptions opts;
  opts.seed = 3;
  gg::Program p = g.compile({bce, P, step}, opts);

  gg::Tensor x = gg::Tensor::from<double>({4, 2}, {0, 0, 0, 1, 1, 0, 1, 1});
  gg::Tensor t = gg::Tensor::from<double>({4, 1}, {0, 1, 1, 0});
  for (int it = 0; it <= 300; ++it) {
    p.run({{X, x}, {T, t}});
    if (it % 50 == 0) std::printf("step %3d  bce %.5f\n", it, p.scalar(bce));
  }
  gg::TensorView out = p.get(P);
  std::printf("p(xor=1): %.3f %.3f %.3f %.3f\n", out.at({0, 0}), out.at({1, 0}), out.at({2, 0}), out.at({3, 0}));

  std::ofstream dot("xor.dot");
  gg::write_dot(g, dot);
  return 0;
}
