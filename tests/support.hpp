// Helpers shared by the test files.
#pragma once

#include <gradgraph/gradgraph.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <fstream>
#include <sstream>
#include <cstdint>
#include <vector>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <stdexcept>
#include <string>

namespace gg::test {

// A fresh empty directory per test case, removed with everything in it afterwards.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "gg-test-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::string operator/(const std::string& name) const { return file(name); }
  std::string str() const { return path.string(); }
  std::size_t entries() const {
    return static_cast<std::size_t>(std::distance(std::filesystem::directory_iterator(path), {}));
  }
};

// Uniform values in [lo, hi) from gradgraph's standard generator.
inline gg::Tensor random_tensor(gg::DType dt, const gg::Shape& s, double lo, double hi, std::uint64_t seed) {
  gg::Generator rng(gg::RngKind::standard, seed);
  gg::Tensor t(dt, s);
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    const double v = lo + (hi - lo) * rng.uniform();
    if (dt == gg::f32)
      t.ptr<float>()[i] = static_cast<float>(v);
    else
      t.ptr<double>()[i] = v;
  }
  return t;
}

// One-hot targets {classes, batch} with random classes.
inline gg::Tensor one_hot(gg::DType dt, std::int64_t classes, std::int64_t batch, std::uint64_t seed) {
  gg::Generator rng(gg::RngKind::standard, seed);
  gg::Tensor t(dt, {classes, batch});
  for (std::int64_t j = 0; j < batch; ++j)
    t.set({static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(classes))), j}, 1.0);
  return t;
}

// A view's elements as doubles, row-major.
inline std::vector<double> values(const gg::TensorView& v) {
  const gg::Tensor c = gg::Tensor::copy_of(v, gg::f64);
  return std::vector<double>(c.ptr<double>(), c.ptr<double>() + c.numel());
}

// The notebook's network (features x examples, classes along axis 0), forward only;
// differentiate() appends the gradients of the loss w.r.t. the four parameters.
struct Mlp {
  gg::Graph g;
  gg::Value X, Y, W1, b1, W2, b2, Z1, A1, Z2, loss;
  std::vector<gg::Value> params, grads;
  explicit Mlp(gg::DType dt, std::int64_t n0 = 784, std::int64_t n1 = 64, std::int64_t n2 = 10) : g(dt) {
    X = g.input("X", {n0, gg::dyn});
    Y = g.input("Y", {n2, gg::dyn});
    W1 = g.param("W1", {n1, n0}, gg::he_normal());
    b1 = g.param("b1", {n1, 1}, gg::uniform(-0.1, 0.1));
    W2 = g.param("W2", {n2, n1}, gg::he_normal());
    b2 = g.param("b2", {n2, 1}, gg::uniform(-0.1, 0.1));
    Z1 = gg::matmul(W1, X) + b1;
    A1 = gg::relu(Z1);
    Z2 = gg::matmul(W2, A1) + b2;
    loss = gg::softmax_cross_entropy(Z2, Y, 0);
    params = {W1, b1, W2, b2};
  }
  void differentiate() { grads = gg::gradients(loss, params); }
  // The loss, then the four gradients.
  std::vector<gg::Value> fetches() const {
    std::vector<gg::Value> f = grads;
    f.insert(f.begin(), loss);
    return f;
  }
};

// The same network with its gradients already built.
struct MlpWithGrads : Mlp {
  explicit MlpWithGrads(gg::DType dt, std::int64_t n0 = 784, std::int64_t n1 = 64, std::int64_t n2 = 10)
      : Mlp(dt, n0, n1, n2) {
    differentiate();
  }
};

// The message of the E that f throws (the test fails if it throws nothing or something else).
template <typename E, typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  FAIL("no exception was thrown");
  return {};
}

// Normwise relative difference: max |a - b| / max |b| (max |a - b| when b is all zeros).
inline double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double e = 0, s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    e = std::max(e, std::fabs(a[i] - b[i]));
    s = std::max(s, std::fabs(b[i]));
  }
  return s > 0 ? e / s : e;
}

// A whole file's bytes.
inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

using Bytes = std::vector<std::uint8_t>;

inline void put_be32(Bytes& b, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<std::uint8_t>(v >> s));
}

// An IDX file: 00 00 type rank, big-endian dims, then `data` verbatim (which may deliberately not
// match the dims).
inline Bytes idx(std::vector<std::uint32_t> dims, const Bytes& data, std::uint8_t type = 0x08) {
  Bytes b = {0, 0, type, static_cast<std::uint8_t>(dims.size())};
  for (std::uint32_t d : dims) put_be32(b, d);
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

}  // namespace gg::test
