// A softmax classifier in the batch-first layout ({batch, features}) started from given weights
// instead of an initialiser, trained on integer class labels. Shows what a user with data in
// plain buffers needs: Tensor::from(shape, std::vector), TensorView over a raw pointer, int64
// labels (softmax_cross_entropy infers the class axis from their shape), Program::set_param on a
// parameter's handle, and reading gradients and parameters back.
#include <gradgraph/gradgraph.hpp>

#include <cstdint>
#include <cstdio>
#include <vector>

int main() {
  const std::int64_t features = 3, classes = 2;
  gg::Graph g(gg::f64);
  gg::Value X = g.input("X", {gg::dyn, features});
  gg::Value labels = g.input("labels", {gg::dyn}, gg::i64);
  gg::Value W = g.param("W", {features, classes});
  gg::Value b = g.param("b", {classes});
  gg::Value logits = gg::matmul(X, W) + b;                        // {batch, classes}
  gg::Value loss = gg::softmax_cross_entropy(logits, labels);      // labels {batch}: classes on axis 1
  gg::Value accuracy = gg::mean(gg::equal(gg::argmax(logits, 1), labels));
  std::vector<gg::Value> grads = gg::gradients(loss, {W, b});
  std::vector<gg::Value> step = gg::sgd({W, b}, grads, {.lr = 0.5});
  gg::Program p = g.compile({loss, accuracy, grads, step});

  // Given weights, e.g. from another framework: any dtype conversion is explicit (Tensor::copy_of).
  const std::vector<double> w0 = {0.5, -0.5, 0.1, 0.2, -0.3, 0.3};  // row-major {3, 2}
  p.set_param(W, gg::Tensor::from(gg::Shape{features, classes}, w0));
  p.set_param(b, gg::Tensor::from<double>({classes}, {0.0, 0.0}));

  // Data in the caller's own buffers, fed without a copy.
  const double x[] = {1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1};  // four examples of three features
  const std::int64_t y[] = {1, 0, 1, 0};
  const gg::TensorView xv(x, gg::Shape{4, features}), yv(y, gg::Shape{4});

  for (int it = 0; it <= 40; ++it) {
    p.run({{X, xv}, {labels, yv}});
    if (it % 10 == 0) std::printf("step %2d  loss %.4f  accuracy %.2f\n", it, p.scalar(loss), p.scalar(accuracy));
  }
  const gg::TensorView dW = p.get(grads[0]), w = p.param(W);
  std::printf("last dL/dW[0][0] = %.5f, W[0][0] now %.5f\n", dW.at({0, 0}), w.at({0, 0}));
  return 0;
}
