// The notebook's network, built with the graph API and differentiated by gradients(), gives
// exactly the notebook's hand-derived gradients (written here literally, with plain loops).
#include "support.hpp"

#include <gradgraph/gradgraph.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

namespace {

using Mlp = gg::test::MlpWithGrads;

using Mat = std::vector<double>;  // row-major

// The notebook, cell by cell, in float64.
struct Reference {
  Mat dW1, db1, dW2, db2;
  double loss = 0;
};

Reference notebook(const Mat& X, const Mat& Y, const Mat& W1, const Mat& b1, const Mat& W2, const Mat& b2, int n0, int n1,
                   int n2, int m) {
  Mat Z1(n1 * m), A1(n1 * m), Z2(n2 * m), A2(n2 * m);
  for (int i = 0; i < n1; ++i)
    for (int j = 0; j < m; ++j) {
      double s = 0;
      for (int k = 0; k < n0; ++k) s += W1[i * n0 + k] * X[k * m + j];
      Z1[i * m + j] = s + b1[i];
      A1[i * m + j] = std::max(Z1[i * m + j], 0.0);
    }
  for (int i = 0; i < n2; ++i)
    for (int j = 0; j < m; ++j) {
      double s = 0;
      for (int k = 0; k < n1; ++k) s += W2[i * n1 + k] * A1[k * m + j];
      Z2[i * m + j] = s + b2[i];
    }
  for (int j = 0; j < m; ++j) {  // softmax per column (max-subtracted: same value, no overflow)
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < n2; ++i) mx = std::max(mx, Z2[i * m + j]);
    for (int i = 0; i < n2; ++i) sum += std::exp(Z2[i * m + j] - mx);
    for (int i = 0; i < n2; ++i) A2[i * m + j] = std::exp(Z2[i * m + j] - mx) / sum;
  }
  Reference r;
  for (int i = 0; i < n2 * m; ++i) r.loss -= Y[i] * std::log(A2[i]) / m;
  // dZ2 = A2 - Y; dW2 = dZ2 A1^T / m; db2 = sum_cols(dZ2) / m
  Mat dZ2(n2 * m);
  for (int i = 0; i < n2 * m; ++i) dZ2[i] = A2[i] - Y[i];
  r.dW2.assign(n2 * n1, 0);
  r.db2.assign(n2, 0);
  for (int i = 0; i < n2; ++i) {
    for (int k = 0; k < n1; ++k) {
      double s = 0;
      for (int j = 0; j < m; ++j) s += dZ2[i * m + j] * A1[k * m + j];
      r.dW2[i * n1 + k] = s / m;
    }
    double s = 0;
    for (int j = 0; j < m; ++j) s += dZ2[i * m + j];
    r.db2[i] = s / m;
  }
  // dZ1 = (W2^T dZ2) * 1[Z1 > 0]; dW1 = dZ1 X^T / m; db1 = sum_cols(dZ1) / m
  Mat dZ1(n1 * m);
  for (int k = 0; k < n1; ++k)
    for (int j = 0; j < m; ++j) {
      double s = 0;
      for (int i = 0; i < n2; ++i) s += W2[i * n1 + k] * dZ2[i * m + j];
      dZ1[k * m + j] = s * (Z1[k * m + j] > 0 ? 1.0 : 0.0);
    }
  r.dW1.assign(n1 * n0, 0);
  r.db1.assign(n1, 0);
  for (int k = 0; k < n1; ++k) {
    for (int c = 0; c < n0; ++c) {
      double s = 0;
      for (int j = 0; j < m; ++j) s += dZ1[k * m + j] * X[c * m + j];
      r.dW1[k * n0 + c] = s / m;
    }
    double s = 0;
    for (int j = 0; j < m; ++j) s += dZ1[k * m + j];
    r.db1[k] = s / m;
  }
  return r;
}

Mat to_mat(const gg::TensorView& v) {
  Mat out(static_cast<std::size_t>(v.numel()));
  for (std::int64_t i = 0; i < v.numel(); ++i) out[static_cast<std::size_t>(i)] = v.flat(i);
  return out;
}

// Normwise (gg::test::rel_diff): elementwise ratios blow up for entries that are sums
// cancelling to nearly zero, whose float32 error is relative to the terms, not the sum.
void compare_with_notebook(gg::DType dt, int n0, int n1, int n2, int m, double tol) {
  Mlp net(dt, n0, n1, n2);
  gg::Program p = net.g.compile({net.loss, net.grads}, gg::CompileOptions{true, 1, gg::RngKind::standard, 7, nullptr});
  std::mt19937 rng(42);
  std::uniform_real_distribution<double> pix(0.0, 1.0);
  gg::Tensor X(dt, {n0, m}), Y(dt, {n2, m});
  for (std::int64_t i = 0; i < X.numel(); ++i) X.view().set({i / m, i % m}, pix(rng));
  for (int j = 0; j < m; ++j) Y.set({static_cast<std::int64_t>(rng() % static_cast<unsigned>(n2)), j}, 1.0);
  p.run({{net.X, X}, {net.Y, Y}});
  Reference r = notebook(to_mat(X), to_mat(Y), to_mat(p.param("W1")), to_mat(p.param("b1")), to_mat(p.param("W2")),
                         to_mat(p.param("b2")), n0, n1, n2, m);
  CHECK(std::fabs(p.scalar(net.loss) - r.loss) <= tol * std::fabs(r.loss));
  CHECK(gg::test::rel_diff(to_mat(p.get(net.grads[0])), r.dW1) <= tol);
  CHECK(gg::test::rel_diff(to_mat(p.get(net.grads[1])), r.db1) <= tol);
  CHECK(gg::test::rel_diff(to_mat(p.get(net.grads[2])), r.dW2) <= tol);
  CHECK(gg::test::rel_diff(to_mat(p.get(net.grads[3])), r.db2) <= tol);
}

}  // namespace

TEST_CASE("gradients of the 784-64-10 network equal the notebook's formulas in float64", "[notebook]") {
  compare_with_notebook(gg::f64, 784, 64, 10, 32, 1e-12);
}

TEST_CASE("gradients of a 20-7-5 network with 3 examples equal the notebook's formulas in float64", "[notebook]") {
  compare_with_notebook(gg::f64, 20, 7, 5, 3, 1e-12);
}

TEST_CASE("gradients of the 784-64-10 network equal the notebook's formulas in float32", "[notebook]") {
  compare_with_notebook(gg::f32, 784, 64, 10, 32, 1e-5);
}
