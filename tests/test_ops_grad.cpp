// Every differentiable op's vector-Jacobian product agrees with central finite differences in
// float64. Each loss is sum(op(x) * R) with a random constant R, so every output element reaches
// the loss with its own weight (a plain sum would hide errors that cancel across elements).
#include "support.hpp"

#include <gradgraph/gradgraph.hpp>

#include "ops/op.hpp"  // the internal ops a pass makes, built directly here

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace {

using gg::Shape;
using gg::Value;

constexpr double kTol = 1e-6;

gg::Tensor random_tensor(const Shape& s, double lo, double hi, std::uint64_t seed) {
  gg::Generator rng(gg::RngKind::standard, seed);
  gg::Tensor t(gg::f64, s);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.ptr<double>()[i] = lo + (hi - lo) * rng.uniform();
  return t;
}

// A tensor whose entries are uniform in [lo, hi] with a random sign: away from zero on both sides.
gg::Tensor signed_tensor(const Shape& s, double lo, double hi, std::uint64_t seed) {
  gg::Generator rng(gg::RngKind::standard, seed + 1000);
  gg::Tensor t = random_tensor(s, lo, hi, seed);
  for (std::int64_t i = 0; i < t.numel(); ++i)
    if (rng.uniform() < 0.5) t.ptr<double>()[i] = -t.ptr<double>()[i];
  return t;
}

// sum(y * R), R a random constant of y's (static) shape.
Value weighted_sum(Value y, std::uint64_t seed = 99) {
  gg::Graph& g = *y.graph;
  return gg::sum(y * g.constant(random_tensor(y.shape(), -1.0, 1.0, seed)));
}

struct Feeds {
  std::vector<gg::Tensor> keep;
  std::vector<gg::Program::Feed> list;
  void add(Value input, gg::Tensor t) {
    keep.push_back(t);
    list.push_back({input, keep.back().view()});
  }
};

// Checks d loss / d wrt by central differences; every element of every wrt must be checked.
void check_op(gg::Graph& g, Value loss, const std::vector<Value>& wrt, const Feeds& feeds = {},
              const gg::GradCheckOptions& opts = {}) {
  std::int64_t expected = 0;
  for (const Value& w : wrt) {
    if (w.op_name() == std::string("param")) {
      expected += w.shape().numel();
    } else {
      for (const auto& f : feeds.list)
        if (f.input == w) expected += f.value.numel();
    }
  }
  const gg::GradCheckResult r = gg::check_gradients(g, loss, wrt, feeds.list, opts);
  INFO("worst: " << r.worst << " (" << r.checked << " elements checked, max relative error " << r.max_rel_error << ")");
  CHECK(r.checked == expected);
  CHECK(r.max_rel_error <= kTol);
}

// One operand of a binary op: a parameter initialised in [lo, hi].
struct Pair {
  Shape a, b;
};

std::string describe(const Pair& p) { return gg::to_string(p.a) + " with " + gg::to_string(p.b); }

const std::vector<Pair>& broadcast_pairs() {
  static const std::vector<Pair> pairs = {
      {{3, 4}, {3, 4}},       {{3, 4}, {4}},  {{4}, {3, 4}},    {{3, 4}, {3, 1}}, {{3, 1}, {3, 4}},
      {{2, 3, 4}, {3, 1}},    {{3, 1}, {2, 3, 4}}, {{}, {3, 4}}, {{3, 4}, {}},     {{3, 1}, {1, 4}},
      {{2, 1, 4}, {3, 1}},
  };
  return pairs;
}

void check_binary(Value (*op)(Value, Value), double b_lo, double b_hi) {
  const Pair p = GENERATE(from_range(broadcast_pairs()));
  INFO("operands " << describe(p));
  gg::Graph g(gg::f64);
  Value a = g.param("a", p.a, gg::uniform(-2.0, 2.0));
  Value b = g.param("b", p.b, gg::uniform(b_lo, b_hi));
  check_op(g, weighted_sum(op(a, b)), {a, b});
}

void check_unary(Value (*op)(Value), double lo, double hi, const Shape& s = {3, 4}) {
  gg::Graph g(gg::f64);
  Value x = g.param("x", s, gg::uniform(lo, hi));
  check_op(g, weighted_sum(op(x)), {x});
}

}  // namespace

// ---- linear algebra --------------------------------------------------------------------------

TEST_CASE("matmul's gradients match finite differences for every combination of transpose flags", "[grad][matmul]") {
  const bool ta = GENERATE(false, true);
  const bool tb = GENERATE(false, true);
  INFO("trans_a " << ta << ", trans_b " << tb);
  gg::Graph g(gg::f64);
  // op(A) is {3, 5}, op(B) is {5, 4}.
  Value A = g.param("A", ta ? Shape{5, 3} : Shape{3, 5}, gg::uniform(-1.0, 1.0));
  Value B = g.param("B", tb ? Shape{4, 5} : Shape{5, 4}, gg::uniform(-1.0, 1.0));
  Value C = gg::matmul(A, B, ta, tb);
  REQUIRE(C.shape() == Shape{3, 4});
  check_op(g, weighted_sum(C), {A, B});
}

TEST_CASE("matmul of a value with itself accumulates both operands' gradients", "[grad][matmul]") {
  gg::Graph g(gg::f64);
  Value A = g.param("A", {4, 3}, gg::uniform(-1.0, 1.0));
  check_op(g, weighted_sum(gg::matmul(A, A, true, false)), {A});
}

TEST_CASE("matmul's gradient w.r.t. a fed input with an open batch dimension matches finite differences",
          "[grad][matmul][input]") {
  gg::Graph g(gg::f64);
  Value W = g.param("W", {3, 5}, gg::uniform(-1.0, 1.0));
  Value X = g.input("X", {5, gg::dyn});
  Value R = g.input("R", {3, gg::dyn});
  Feeds f;
  f.add(X, random_tensor({5, 6}, -1.0, 1.0, 3));
  f.add(R, random_tensor({3, 6}, -1.0, 1.0, 4));
  check_op(g, gg::sum(gg::matmul(W, X) * R), {W, X}, f);
}

// ---- convolution -----------------------------------------------------------------------------

namespace {
struct ConvCase {
  std::int64_t n, c, oc, h, w, k;
  int stride, padding, dilation;
};
std::string describe(const ConvCase& c) {
  std::ostringstream os;
  os << "N" << c.n << " C" << c.c << " OC" << c.oc << " " << c.h << "x" << c.w << " k" << c.k << " s" << c.stride << " p"
     << c.padding << " d" << c.dilation;
  return os.str();
}
const std::vector<ConvCase>& conv_cases() {
  static const std::vector<ConvCase> cases = {
      {1, 1, 2, 5, 5, 3, 1, 1, 1}, {3, 2, 3, 6, 5, 3, 1, 0, 1}, {2, 3, 2, 7, 7, 3, 2, 1, 1},
      {3, 2, 2, 6, 6, 2, 2, 0, 1}, {1, 2, 3, 7, 6, 3, 1, 2, 2}, {2, 1, 1, 4, 4, 1, 1, 0, 1},
      {1, 8, 16, 3, 3, 3, 1, 1, 1},  // 16 x 72 weights: the weight gradient is a BLIS GEMM, not chunked dot products
  };
  return cases;
}

// The definition, with loops: y[n, o, i, j] = sum w[o, c, a, b] x[n, c, i s - p + a d, j s - p + b d].
std::vector<double> naive_conv(const gg::Tensor& x, const gg::Tensor& w, const ConvCase& c, std::int64_t oh, std::int64_t ow) {
  std::vector<double> y(static_cast<std::size_t>(c.n * c.oc * oh * ow), 0.0);
  for (std::int64_t n = 0; n < c.n; ++n)
    for (std::int64_t o = 0; o < c.oc; ++o)
      for (std::int64_t i = 0; i < oh; ++i)
        for (std::int64_t j = 0; j < ow; ++j) {
          double acc = 0;
          for (std::int64_t ch = 0; ch < c.c; ++ch)
            for (std::int64_t a = 0; a < c.k; ++a)
              for (std::int64_t b = 0; b < c.k; ++b) {
                const std::int64_t ih = i * c.stride - c.padding + a * c.dilation, iw = j * c.stride - c.padding + b * c.dilation;
                if (ih >= 0 && ih < c.h && iw >= 0 && iw < c.w) acc += w.at({o, ch, a, b}) * x.at({n, ch, ih, iw});
              }
          y[static_cast<std::size_t>(((n * c.oc + o) * oh + i) * ow + j)] = acc;
        }
  return y;
}
}  // namespace

TEST_CASE("conv2d computes the convolution's definition for strides, paddings, dilations and batch sizes", "[grad][conv]") {
  const ConvCase c = GENERATE(from_range(conv_cases()));
  INFO(describe(c));
  gg::Graph g(gg::f64);
  Value x = g.input("x", {gg::dyn, c.c, c.h, c.w});
  Value w = g.param("w", {c.oc, c.c, c.k, c.k}, gg::uniform(-1.0, 1.0));
  Value y = gg::conv2d(x, w, {}, c.stride, c.padding, c.dilation);
  gg::Program p(g, {y});
  const gg::Tensor xv = random_tensor({c.n, c.c, c.h, c.w}, -1.0, 1.0, 5);
  p.run({{x, xv}});
  const gg::TensorView out = p.get(y);
  const gg::Tensor wv = gg::Tensor::copy_of(p.param(w));
  const std::vector<double> want = naive_conv(xv, wv, c, out.shape[2], out.shape[3]);
  const std::vector<double> got = gg::test::values(out);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) CHECK_THAT(got[i], Catch::Matchers::WithinAbs(want[i], 1e-13));
}

TEST_CASE("conv2d's gradients w.r.t. input, weights and bias match finite differences", "[grad][conv]") {
  const ConvCase c = GENERATE(from_range(conv_cases()));
  INFO(describe(c));
  gg::Graph g(gg::f64);
  Value x = g.param("x", {c.n, c.c, c.h, c.w}, gg::uniform(-1.0, 1.0));
  // Weights scaled by fan-in keep y near 1 whatever the channel count, so that the loss, and the
  // finite differences' round-off, stay small.
  const double s = 1.0 / std::sqrt(static_cast<double>(c.c * c.k * c.k));
  Value w = g.param("w", {c.oc, c.c, c.k, c.k}, gg::uniform(-s, s));
  Value b = g.param("b", {c.oc}, gg::uniform(-0.5, 0.5));
  Value y = gg::conv2d(x, w, b, c.stride, c.padding, c.dilation);
  check_op(g, weighted_sum(y * y), {x, w, b});
}

TEST_CASE("conv2d's gradient ops have gradients of their own (second derivatives match finite differences)",
          "[grad][conv][second-order]") {
  const ConvCase c = GENERATE(from_range(conv_cases()));
  INFO(describe(c));
  gg::Graph g(gg::f64);
  Value x = g.param("x", {c.n, c.c, c.h, c.w}, gg::uniform(-1.0, 1.0));
  const double s = 1.0 / std::sqrt(static_cast<double>(c.c * c.k * c.k));
  Value w = g.param("w", {c.oc, c.c, c.k, c.k}, gg::uniform(-s, s));
  Value y = gg::conv2d(x, w, {}, c.stride, c.padding, c.dilation);
  // The loss's gradients are conv2d_dgrad and conv2d_wgrad nodes; differentiate them again.
  const auto grads = gg::gradients(weighted_sum(y * y), {x, w});
  CHECK(grads[0].op_name() == std::string("conv2d_dgrad"));
  check_op(g, weighted_sum(grads[0], 3) + weighted_sum(grads[1], 4), {x, w});
}

TEST_CASE("conv2d and its gradients are the same for every thread count, on batches cut into chunks",
          "[grad][conv]") {
  // 37 images: chunks of 5 with a short last one, more chunks than threads; 16 x 72 weights take
  // the BLIS weight gradient, 4 x 9 the dot-product one.
  const std::int64_t channels = GENERATE(8, 1);
  const std::int64_t oc = channels == 8 ? 16 : 4;
  INFO("C " << channels << " OC " << oc);
  const ConvCase c{37, channels, oc, 10, 9, 3, 1, 1, 1};
  gg::Graph g(gg::f64);
  Value x = g.param("x", {c.n, c.c, c.h, c.w}, gg::uniform(-1.0, 1.0));
  Value w = g.param("w", {c.oc, c.c, c.k, c.k}, gg::uniform(-1.0, 1.0));
  Value y = gg::conv2d(x, w, {}, c.stride, c.padding, c.dilation);
  const auto grads = gg::gradients(weighted_sum(y * y), {x, w});
  std::vector<std::vector<double>> first;
  for (int threads : {1, 2, 3}) {
    INFO("threads " << threads);
    gg::CompileOptions o;
    o.threads = threads;
    o.seed = 9;
    gg::Program p(g, {y, grads[0], grads[1]}, o);
    p.run({});
    std::vector<std::vector<double>> got = {gg::test::values(p.get(y)), gg::test::values(p.get(grads[0])),
                                            gg::test::values(p.get(grads[1]))};
    if (first.empty()) {
      const gg::Tensor xv = gg::Tensor::copy_of(p.param(x)), wv = gg::Tensor::copy_of(p.param(w));
      const std::vector<double> want = naive_conv(xv, wv, c, c.h, c.w);
      for (std::size_t i = 0; i < want.size(); ++i) REQUIRE_THAT(got[0][i], Catch::Matchers::WithinAbs(want[i], 1e-12));
      first = got;
    } else {
      for (std::size_t k = 0; k < got.size(); ++k) REQUIRE(got[k] == first[k]);
    }
  }
}

TEST_CASE("conv2d_bias built directly has gradients matching finite differences, with and without ReLU",
          "[grad][conv][fused]") {
  const int relu = GENERATE(0, 1);
  const ConvCase c = GENERATE(ConvCase{3, 2, 3, 6, 5, 3, 1, 1, 1}, ConvCase{2, 3, 2, 7, 7, 3, 2, 1, 1});
  INFO(describe(c) << " relu " << relu);
  gg::Graph g(gg::f64);
  Value x = g.param("x", {c.n, c.c, c.h, c.w}, gg::uniform(-1.0, 1.0));
  const double s = 1.0 / std::sqrt(static_cast<double>(c.c * c.k * c.k));  // as in the conv2d check
  Value w = g.param("w", {c.oc, c.c, c.k, c.k}, gg::uniform(-s, s));
  Value b = g.param("b", {c.oc, 1, 1}, gg::uniform(-0.3, 0.3));
  // The fused op takes conv2d's attributes, with relu set.
  gg::Attrs a = gg::conv2d(x, w, {}, c.stride, c.padding, c.dilation).node().attrs;
  REQUIRE(a.set_number("relu", relu));
  Value y = gg::detail::make(*gg::detail::find_op("conv2d_bias"), {x, w, b}, a);
  // A linear term too: y * y alone has no gradient where ReLU zeroes y, masked or not.
  check_op(g, weighted_sum(y) + weighted_sum(y * y, 3), {x, w, b});
}

TEST_CASE("a program fuses conv2d, its bias and ReLU into conv2d_bias, with the unfused program's bits",
          "[grad][conv][fused]") {
  const auto dtype = GENERATE(gg::f32, gg::f64);
  const bool relu = GENERATE(true, false);
  INFO(gg::dtype_name(dtype) << (relu ? " with relu" : " without relu"));
  gg::Graph g(dtype);
  Value x = g.input("x", {gg::dyn, 3, 8, 8});
  Value w = g.param("w", {4, 3, 3, 3}, gg::uniform(-0.5, 0.5));
  Value b = g.param("b", {4}, gg::uniform(-0.5, 0.5));
  Value z = gg::conv2d(x, w, b, 1, 1);
  Value y = relu ? gg::relu(z) : z;
  Value r = g.input("r", {gg::dyn, 4, 8, 8});
  const auto grads = gg::gradients(gg::sum(y * r), {w, b});
  gg::CompileOptions fused, plain;
  plain.fuse = false;
  gg::Program pf(g, {y, grads[0], grads[1]}, fused), pp(g, {y, grads[0], grads[1]}, plain);
  bool has_fused = false, has_conv = false;
  for (const std::string& step : pf.schedule(5)) {
    has_fused = has_fused || step.rfind("conv2d_bias", 0) == 0;
    has_conv = has_conv || step.rfind("conv2d ", 0) == 0 || step == "conv2d";
  }
  CHECK(has_fused);
  CHECK_FALSE(has_conv);
  const gg::Tensor xv = gg::test::random_tensor(dtype, {5, 3, 8, 8}, -1.0, 1.0, 8);
  const gg::Tensor rv = gg::test::random_tensor(dtype, {5, 4, 8, 8}, -1.0, 1.0, 9);
  pf.run({{x, xv}, {r, rv}});
  pp.run({{x, xv}, {r, rv}});
  CHECK(gg::test::values(pf.get(y)) == gg::test::values(pp.get(y)));
  CHECK(gg::test::values(pf.get(grads[0])) == gg::test::values(pp.get(grads[0])));
  CHECK(gg::test::values(pf.get(grads[1])) == gg::test::values(pp.get(grads[1])));
}

TEST_CASE("conv2d rejects a kernel that does not fit and a channel count that does not match, naming both shapes",
          "[grad][conv]") {
  gg::Graph g(gg::f32);
  Value x = g.input("x", {gg::dyn, 3, 4, 4});
  Value w5 = g.param("w5", {8, 3, 5, 5});
  Value w2 = g.param("w2", {8, 2, 3, 3});
  CHECK_THAT(gg::test::message_of<gg::GraphError>([&] { gg::conv2d(x, w5); }),
             Catch::Matchers::Contains("5x5 kernel does not fit the 4x4 image") && Catch::Matchers::Contains("'x' float32 {dyn, 3, 4, 4}"));
  CHECK_THAT(gg::test::message_of<gg::GraphError>([&] { gg::conv2d(x, w2); }),
             Catch::Matchers::Contains("take 2 input channels, the input has 3") && Catch::Matchers::Contains("'w2' float32 {8, 2, 3, 3}"));
  CHECK_NOTHROW(gg::conv2d(x, w5, {}, 1, 1));  // padding makes it fit
  CHECK_THROWS_AS(gg::conv2d(x, w2, g.param("b", {7})), gg::GraphError);
}

// ---- batch normalisation -----------------------------------------------------------------------

namespace {
// A batch_norm layer on x with its parameters and states: gamma near 1, beta near 0, running
// statistics that are not the batch's (so that evaluation visibly differs from training).
struct Bn {
  Value gamma, beta, mean, var, y, stats;
};
Bn batch_norm_on(gg::Graph& g, Value x, int axis, double momentum = 0.1) {
  const std::int64_t c = x.shape()[axis];
  Bn b;
  b.gamma = g.param("gamma", {c}, gg::uniform(0.5, 1.5));
  b.beta = g.param("beta", {c}, gg::uniform(-0.5, 0.5));
  b.mean = g.state("running_mean", {c}, gg::uniform(-0.2, 0.2));
  b.var = g.state("running_var", {c}, gg::uniform(0.5, 2.0));
  b.y = gg::batch_norm(x, b.gamma, b.beta, b.mean, b.var, axis, momentum);
  b.stats = Value{b.y.graph, b.y.id, 1};
  return b;
}

struct BnCase {
  Shape x;
  int axis;
};
std::string describe(const BnCase& c) { return gg::to_string(c.x) + " axis " + std::to_string(c.axis); }
const std::vector<BnCase>& bn_cases() {
  static const std::vector<BnCase> cases = {
      {{3, 2, 4, 5}, 1},  // NCHW images
      {{2, 3, 3, 3}, 1},  // a batch of 2
      {{5, 4}, 1},        // {batch, features} rows
      {{4, 7}, 0},        // {features, batch} columns
  };
  return cases;
}
}  // namespace

TEST_CASE("batch_norm normalises each channel with the batch's statistics and moves the running ones", "[grad][norm]") {
  gg::Graph g(gg::f64);
  Value x = g.input("x", {gg::dyn, 2, 3, 2});
  Bn bn = batch_norm_on(g, x, 1, 0.25);
  gg::Program p(g, {bn.y, bn.stats});
  const gg::Tensor xv = random_tensor({3, 2, 3, 2}, -2.0, 3.0, 17);
  const std::vector<double> rm0 = gg::test::values(p.param(bn.mean)), rv0 = gg::test::values(p.param(bn.var));
  p.run({{x, xv}});
  const std::vector<double> y = gg::test::values(p.get(bn.y)), s = gg::test::values(p.get(bn.stats));
  const std::vector<double> gamma = gg::test::values(p.param(bn.gamma)), beta = gg::test::values(p.param(bn.beta));
  for (std::int64_t c = 0; c < 2; ++c) {
    double sum = 0, sq = 0;
    for (std::int64_t n = 0; n < 3; ++n)
      for (std::int64_t i = 0; i < 6; ++i) sum += xv.flat((n * 2 + c) * 6 + i);
    const double mu = sum / 18;
    for (std::int64_t n = 0; n < 3; ++n)
      for (std::int64_t i = 0; i < 6; ++i) sq += (xv.flat((n * 2 + c) * 6 + i) - mu) * (xv.flat((n * 2 + c) * 6 + i) - mu);
    const double var = sq / 18, r = 1 / std::sqrt(var + 1e-5);
    INFO("channel " << c);
    CHECK_THAT(s[static_cast<std::size_t>(c)], Catch::Matchers::WithinAbs(mu, 1e-14));
    CHECK_THAT(s[static_cast<std::size_t>(2 + c)], Catch::Matchers::WithinAbs(r, 1e-12));
    CHECK(s[static_cast<std::size_t>(4 + c)] == 1.0);
    for (std::int64_t n = 0; n < 3; ++n)
      for (std::int64_t i = 0; i < 6; ++i) {
        const std::size_t at = static_cast<std::size_t>((n * 2 + c) * 6 + i);
        CHECK_THAT(y[at], Catch::Matchers::WithinAbs(gamma[c] * (xv.flat(static_cast<std::int64_t>(at)) - mu) * r + beta[c], 1e-12));
      }
    // PyTorch's update: the unbiased variance, 18 / 17.
    CHECK_THAT(p.param(bn.mean).flat(c), Catch::Matchers::WithinAbs(0.75 * rm0[c] + 0.25 * mu, 1e-14));
    CHECK_THAT(p.param(bn.var).flat(c), Catch::Matchers::WithinAbs(0.75 * rv0[c] + 0.25 * var * 18 / 17, 1e-14));
  }
}

TEST_CASE("batch_norm in an evaluation program uses the running statistics and leaves them alone", "[grad][norm]") {
  gg::Graph g(gg::f64);
  Value x = g.input("x", {gg::dyn, 3});
  Bn bn = batch_norm_on(g, x, 1);
  gg::CompileOptions eval;
  eval.training = false;
  gg::Program p(g, {bn.y, bn.stats}, eval);
  const std::vector<double> rm = gg::test::values(p.param(bn.mean)), rv = gg::test::values(p.param(bn.var));
  const gg::Tensor xv = random_tensor({1, 3}, -2.0, 2.0, 5);  // one example: fine in evaluation
  p.run({{x, xv}});
  const std::vector<double> y = gg::test::values(p.get(bn.y)), s = gg::test::values(p.get(bn.stats));
  const std::vector<double> gamma = gg::test::values(p.param(bn.gamma)), beta = gg::test::values(p.param(bn.beta));
  for (std::size_t c = 0; c < 3; ++c) {
    const double r = 1 / std::sqrt(rv[c] + 1e-5);
    CHECK_THAT(y[c], Catch::Matchers::WithinAbs(gamma[c] * (xv.flat(static_cast<std::int64_t>(c)) - rm[c]) * r + beta[c], 1e-14));
    CHECK(s[c] == rm[c]);
    CHECK(s[6 + c] == 0.0);
  }
  CHECK(gg::test::values(p.param(bn.mean)) == rm);
  CHECK(gg::test::values(p.param(bn.var)) == rv);
}

TEST_CASE("batch_norm's gradients in training match finite differences for images, rows and columns", "[grad][norm]") {
  const BnCase c = GENERATE(from_range(bn_cases()));
  INFO(describe(c));
  gg::Graph g(gg::f64);
  Value x = g.param("x", c.x, gg::uniform(-2.0, 2.0));
  Bn bn = batch_norm_on(g, x, c.axis);
  check_op(g, weighted_sum(bn.y) + weighted_sum(bn.y * bn.y, 3), {x, bn.gamma, bn.beta});
}

TEST_CASE("batch_norm's gradients match finite differences with an open batch dimension", "[grad][norm]") {
  const int axis = GENERATE(0, 1);
  INFO("axis " << axis);
  gg::Graph g(gg::f64);
  Value x = g.input("x", axis == 1 ? Shape{gg::dyn, 3, 2, 2} : Shape{3, gg::dyn});
  Bn bn = batch_norm_on(g, x, axis);
  Value R = g.input("R", x.shape());  // weights of the loss's terms, fed like x
  const Shape fed = axis == 1 ? Shape{5, 3, 2, 2} : Shape{3, 5};
  Feeds f;
  f.add(x, random_tensor(fed, -2.0, 2.0, 23));
  f.add(R, random_tensor(fed, -1.0, 1.0, 24));
  check_op(g, gg::sum(bn.y * bn.y * R), {x, bn.gamma, bn.beta}, f);
}

TEST_CASE("batch_norm's gradients in an evaluation program match finite differences", "[grad][norm]") {
  gg::Graph g(gg::f64);
  Value x = g.param("x", {2, 3, 2, 2}, gg::uniform(-2.0, 2.0));
  Bn bn = batch_norm_on(g, x, 1);
  gg::GradCheckOptions eval;
  eval.training = false;
  check_op(g, weighted_sum(bn.y * bn.y), {x, bn.gamma, bn.beta}, {}, eval);
}

TEST_CASE("batch_norm's gradient is differentiable again (second derivatives match finite differences)",
          "[grad][norm][second-order]") {
  const BnCase c = GENERATE(from_range(bn_cases()));
  INFO(describe(c));
  gg::Graph g(gg::f64);
  Value x = g.param("x", c.x, gg::uniform(-2.0, 2.0));
  Bn bn = batch_norm_on(g, x, c.axis);
  const auto grads = gg::gradients(weighted_sum(bn.y * bn.y), {x, bn.gamma});
  check_op(g, weighted_sum(grads[0], 3) + weighted_sum(grads[1], 4), {x, bn.gamma});
}

TEST_CASE("batch_norm_grad built directly has gradients matching finite differences in all four operands",
          "[grad][norm][second-order]") {
  const BnCase c = GENERATE(from_range(bn_cases()));
  INFO(describe(c));
  gg::Graph g(gg::f64);
  Value x = g.param("x", c.x, gg::uniform(-2.0, 2.0));
  Bn bn = batch_norm_on(g, x, c.axis);
  // The statistics as a free operand: mean, 1 / std and the training flag, all perturbed.
  Value gy = g.param("g", c.x, gg::uniform(-1.0, 1.0));
  Value s = g.param("s", {3, c.x[c.axis]}, gg::uniform(0.5, 1.5));
  Value out = gg::detail::make(*gg::detail::find_op("batch_norm_grad"), {gy, x, bn.gamma, s}, bn.y.node().attrs);
  Value d{out.graph, out.id, 1};
  REQUIRE(out.shape() == c.x);
  REQUIRE(d.shape() == Shape{2, c.x[c.axis]});
  check_op(g, weighted_sum(out * out) + weighted_sum(d * d, 3), {gy, x, bn.gamma, s});
}

TEST_CASE("batch_norm rejects parameters of the wrong size, a bad axis and statistics that are not states",
          "[grad][norm]") {
  gg::Graph g(gg::f32);
  Value x = g.input("x", {gg::dyn, 4, 5, 5});
  Value ok = g.param("gamma", {4}), bad = g.param("beta5", {5});
  Value rm = g.state("rm", {4}), rv = g.state("rv", {4}, gg::constant(1.0));
  CHECK_THAT(gg::test::message_of<gg::GraphError>([&] { gg::batch_norm(x, bad, ok, rm, rv); }),
             Catch::Matchers::Contains("gamma must be {4}") && Catch::Matchers::Contains("'beta5' float32 {5}"));
  CHECK_THAT(gg::test::message_of<gg::GraphError>([&] { gg::batch_norm(x, ok, ok, rm, rv, 4); }),
             Catch::Matchers::Contains("channel axis 4"));
  CHECK_THAT(gg::test::message_of<gg::GraphError>([&] { gg::batch_norm(x, ok, ok, ok, rv); }),
             Catch::Matchers::Contains("running_mean must be a state"));
}

TEST_CASE("batch_norm refuses to train on one value per channel", "[grad][norm]") {
  gg::Graph g(gg::f32);
  Value x = g.input("x", {gg::dyn, 3});
  Bn bn = batch_norm_on(g, x, 1);
  gg::Program p(g, {bn.y});
  CHECK_THAT(gg::test::message_of<std::invalid_argument>([&] { p.run({{x, gg::Tensor::zeros(gg::f32, {1, 3})}}); }),
             Catch::Matchers::Contains("more than one value per channel"));
}

// ---- dropout -----------------------------------------------------------------------------------

TEST_CASE("dropout keeps each element with probability 1 - p, scaled by 1 / (1 - p), with a fresh mask every run",
          "[grad][dropout]") {
  gg::Graph g(gg::f64);
  Value x = g.input("x", {gg::dyn, 100});
  Value y = gg::dropout(x, 0.25);
  Value mask{y.graph, y.id, 1};
  gg::Program p(g, {y, mask});
  const gg::Tensor xv = random_tensor({200, 100}, 0.5, 1.5, 3);
  p.run({{x, xv}});
  const std::vector<double> s1 = gg::test::values(p.get(mask)), y1 = gg::test::values(p.get(y)), xs = gg::test::values(xv);
  std::int64_t kept = 0;
  for (std::size_t i = 0; i < s1.size(); ++i) {
    CHECK((s1[i] == 0.0 || s1[i] == 1.0 / 0.75));
    CHECK(y1[i] == xs[i] * s1[i]);
    kept += s1[i] != 0.0;
  }
  // 20,000 draws: the kept fraction is within 4 standard deviations (0.012) of 0.75.
  CHECK(std::fabs(static_cast<double>(kept) / 20000.0 - 0.75) < 0.012);
  CHECK(p.param("dropout1/step").at({}) == 1.0);
  p.run({{x, xv}});
  CHECK(gg::test::values(p.get(mask)) != s1);
  CHECK(p.param("dropout1/step").at({}) == 2.0);
  // Back to the first step's counter: the first mask again (what a resumed run relies on).
  p.param("dropout1/step").set({}, 0.0);
  p.run({{x, xv}});
  CHECK(gg::test::values(p.get(mask)) == s1);
}

TEST_CASE("dropout draws per example of the global batch: a shard told its place gets those examples' masks",
          "[grad][dropout]") {
  for (const bool batch_first : {true, false}) {  // rows {batch, 7}, or columns {7, batch}
    CAPTURE(batch_first);
    gg::Graph g(gg::f64);
    Value x = g.input("x", batch_first ? gg::Shape{gg::dyn, 7} : gg::Shape{7, gg::dyn});
    Value y = gg::dropout(x, 0.5);
    Value mask{y.graph, y.id, 1};
    gg::Program whole(g, {mask}), shard(g, {mask});
    auto ones = [&](std::int64_t examples) {
      return gg::Tensor::from(batch_first ? gg::Shape{examples, 7} : gg::Shape{7, examples},
                              std::vector<double>(static_cast<std::size_t>(7 * examples), 1.0));
    };
    const gg::Tensor eight = ones(8), five = ones(5);
    whole.run({{x, eight}});
    shard.set_examples_before(3);  // examples 3 .. 7 of the 8
    shard.run({{x, five}});
    const gg::TensorView all = whole.get(mask), part = shard.get(mask);
    for (std::int64_t e = 0; e < 5; ++e)
      for (std::int64_t f = 0; f < 7; ++f)
        CHECK((batch_first ? part.at({e, f}) == all.at({e + 3, f}) : part.at({f, e}) == all.at({f, e + 3})));
  }
}

// (Also the planner's regression test for an output nobody reads: the mask here is unfetched, and
// once shared the fetched output's memory.)
TEST_CASE("dropout is the identity in an evaluation program and leaves its counter alone", "[grad][dropout]") {
  gg::Graph g(gg::f32);
  Value x = g.input("x", {3, 4});
  Value y = gg::dropout(x, 0.5);
  gg::CompileOptions eval;
  eval.training = false;
  gg::Program p(g, {y}, eval);
  const gg::Tensor xv = gg::test::random_tensor(gg::f32, {3, 4}, -1, 1, 9);
  p.run({{x, xv}});
  CHECK(gg::test::values(p.get(y)) == gg::test::values(xv));
  CHECK(p.param("dropout1/step").at({}) == 0.0);
}

TEST_CASE("dropout's gradient is the incoming gradient times the same scaled mask", "[grad][dropout]") {
  gg::Graph g(gg::f64);
  Value w = g.param("w", {4, 50}, gg::uniform(-1.0, 1.0));
  Value y = gg::dropout(gg::tanh(w), 0.4);
  Value r = g.constant(random_tensor({4, 50}, -1.0, 1.0, 4));
  Value loss = gg::sum(y * r);
  const Value dt = gg::gradients(loss, {gg::Value{y.graph, y.node().inputs[0].node, 0}})[0];  // d loss / d tanh(w)
  gg::Program p(g, {Value{y.graph, y.id, 1}, dt});
  p.run({});
  const std::vector<double> s = gg::test::values(p.get(Value{y.graph, y.id, 1})), d = gg::test::values(p.get(dt));
  const std::vector<double> rv = gg::test::values(random_tensor({4, 50}, -1.0, 1.0, 4));
  for (std::size_t i = 0; i < d.size(); ++i) CHECK(d[i] == rv[i] * s[i]);
  CHECK_THROWS_AS(gg::dropout(w, 1.0), gg::GraphError);
  CHECK_THROWS_AS(gg::dropout(w, -0.1), gg::GraphError);
}

// ---- elementwise binary ------------------------------------------------------------------------

TEST_CASE("add's gradients match finite differences under broadcasting", "[grad][elementwise]") {
  check_binary(gg::add, -2.0, 2.0);
}

TEST_CASE("sub's gradients match finite differences under broadcasting", "[grad][elementwise]") {
  check_binary(gg::sub, -2.0, 2.0);
}

TEST_CASE("mul's gradients match finite differences under broadcasting", "[grad][elementwise]") {
  check_binary(gg::mul, -2.0, 2.0);
}

TEST_CASE("div's gradients match finite differences under broadcasting", "[grad][elementwise]") {
  check_binary(gg::div, 0.5, 2.0);
}

TEST_CASE("div's gradients match finite differences for a negative divisor", "[grad][elementwise]") {
  gg::Graph g(gg::f64);
  Value a = g.param("a", {3, 4}, gg::uniform(-2.0, 2.0));
  Value b = g.param("b", {3, 1}, gg::uniform(-2.0, -0.5));
  check_op(g, weighted_sum(a / b), {a, b});
}

TEST_CASE("binary ops' gradients w.r.t. broadcast fed inputs match finite differences", "[grad][elementwise][input]") {
  gg::Graph g(gg::f64);
  Value x = g.input("x", {2, 3, 4});
  Value c = g.input("c", {3, 1});
  Value d = g.input("d", {4});
  Feeds f;
  f.add(x, random_tensor({2, 3, 4}, -1.0, 1.0, 5));
  f.add(c, random_tensor({3, 1}, -1.0, 1.0, 6));
  f.add(d, random_tensor({4}, 0.5, 2.0, 7));
  check_op(g, weighted_sum((x * c - c) / d + d), {x, c, d}, f);
}

// ---- elementwise unary -------------------------------------------------------------------------

TEST_CASE("neg's gradient matches finite differences", "[grad][unary]") { check_unary(gg::neg, -2.0, 2.0); }

TEST_CASE("scale's gradient matches finite differences", "[grad][unary]") {
  check_unary([](Value x) { return gg::scale(x, -2.5); }, -2.0, 2.0);
}

TEST_CASE("add_scalar's gradient matches finite differences", "[grad][unary]") {
  check_unary([](Value x) { return gg::add_scalar(x, 0.75); }, -2.0, 2.0);
}

TEST_CASE("pow's gradient matches finite differences for whole powers on inputs of both signs", "[grad][unary]") {
  const double p = GENERATE(1.0, 2.0, 3.0, 4.0);
  INFO("p = " << p);
  gg::Graph g(gg::f64);
  Value x = g.param("x", {3, 4}, gg::uniform(-2.0, 2.0));
  check_op(g, weighted_sum(gg::pow(x, p)), {x});
}

TEST_CASE("pow's gradient matches finite differences for fractional and negative powers of positive inputs",
          "[grad][unary]") {
  const double p = GENERATE(0.5, 2.5, -1.0, -1.5, 1.0 / 3.0);
  INFO("p = " << p);
  gg::Graph g(gg::f64);
  Value x = g.param("x", {3, 4}, gg::uniform(0.5, 2.0));
  check_op(g, weighted_sum(gg::pow(x, p)), {x});
}

TEST_CASE("exp's gradient matches finite differences", "[grad][unary]") { check_unary(gg::exp, -2.0, 2.0); }

TEST_CASE("log's gradient matches finite differences on positive inputs", "[grad][unary]") {
  check_unary(gg::log, 0.2, 3.0);
}

TEST_CASE("sqrt's gradient matches finite differences on positive inputs", "[grad][unary]") {
  check_unary(gg::sqrt, 0.2, 3.0);
}

TEST_CASE("relu's gradient matches finite differences on inputs of both signs away from the kink", "[grad][unary]") {
  gg::Graph g(gg::f64);
  Value x = g.input("x", {4, 5});
  Feeds f;
  f.add(x, signed_tensor({4, 5}, 0.1, 2.0, 11));
  // A parameter on the positive side and one on the negative side too.
  Value pos = g.param("pos", {4, 5}, gg::uniform(0.1, 2.0));
  Value negp = g.param("negp", {4, 5}, gg::uniform(-2.0, -0.1));
  check_op(g, weighted_sum(gg::relu(x)) + weighted_sum(gg::relu(pos), 3) + weighted_sum(gg::relu(negp), 4),
           {x, pos, negp}, f);
}

TEST_CASE("sigmoid's gradient matches finite differences for inputs of both signs", "[grad][unary]") {
  check_unary(gg::sigmoid, -6.0, 6.0);
}

TEST_CASE("sigmoid's gradient stays finite and correct for large magnitudes of both signs", "[grad][unary]") {
  gg::Graph g(gg::f64);
  Value big = g.param("big", {3, 4}, gg::uniform(15.0, 40.0));
  Value small = g.param("small", {3, 4}, gg::uniform(-40.0, -15.0));
  Value huge = g.param("huge", {2}, gg::uniform(700.0, 800.0));  // exp(-x) underflows, exp(x) would overflow
  Value tiny = g.param("tiny", {2}, gg::uniform(-800.0, -700.0));
  check_op(g,
           weighted_sum(gg::sigmoid(big)) + weighted_sum(gg::sigmoid(small), 5) + weighted_sum(gg::sigmoid(huge), 6) +
               weighted_sum(gg::sigmoid(tiny), 7),
           {big, small, huge, tiny});
}

TEST_CASE("tanh's gradient matches finite differences", "[grad][unary]") { check_unary(gg::tanh, -3.0, 3.0); }

// ---- along an axis -----------------------------------------------------------------------------

TEST_CASE("softmax's gradient matches finite differences along each axis of a rank-2 tensor", "[grad][softmax]") {
  const int axis = GENERATE(0, 1, -1, -2);
  INFO("axis " << axis);
  gg::Graph g(gg::f64);
  Value x = g.param("x", {3, 4}, gg::uniform(-2.0, 2.0));
  check_op(g, weighted_sum(gg::softmax(x, axis)), {x});
}

TEST_CASE("softmax's gradient matches finite differences along each axis of a rank-3 tensor", "[grad][softmax]") {
  const int axis = GENERATE(0, 1, 2, -1);
  INFO("axis " << axis);
  gg::Graph g(gg::f64);
  Value x = g.param("x", {2, 3, 4}, gg::uniform(-2.0, 2.0));
  check_op(g, weighted_sum(gg::softmax(x, axis)), {x});
}

TEST_CASE("log_softmax's gradient matches finite differences along each axis of a rank-2 tensor", "[grad][softmax]") {
  const int axis = GENERATE(0, 1, -1, -2);
  INFO("axis " << axis);
  gg::Graph g(gg::f64);
  Value x = g.param("x", {3, 4}, gg::uniform(-2.0, 2.0));
  check_op(g, weighted_sum(gg::log_softmax(x, axis)), {x});
}

TEST_CASE("log_softmax's gradient matches finite differences along each axis of a rank-3 tensor", "[grad][softmax]") {
  const int axis = GENERATE(0, 1, 2, -1);
  INFO("axis " << axis);
  gg::Graph g(gg::f64);
  Value x = g.param("x", {2, 3, 4}, gg::uniform(-2.0, 2.0));
  check_op(g, weighted_sum(gg::log_softmax(x, axis)), {x});
}

TEST_CASE("softmax's and log_softmax's gradients w.r.t. a fed input with large logits match finite differences",
          "[grad][softmax][input]") {
  gg::Graph g(gg::f64);
  Value x = g.input("x", {4, 3});
  Feeds f;
  gg::Tensor t = random_tensor({4, 3}, -2.0, 2.0, 21);
  t.set({1, 0}, 300.0);  // a large logit: max-subtraction keeps exp finite
  f.add(x, t);
  check_op(g, weighted_sum(gg::softmax(x, 0)) + weighted_sum(gg::log_softmax(x, 0), 8), {x}, f);
}

// ---- reductions and broadcasts -------------------------------------------------------------------

TEST_CASE("sum's gradient matches finite differences over all axes", "[grad][reduce]") {
  const bool keepdims = GENERATE(false, true);
  gg::Graph g(gg::f64);
  Value x = g.param("x", {2, 3, 4}, gg::uniform(-2.0, 2.0));
  Value s = gg::sum(x);
  if (keepdims) {
    s = gg::sum(x, {0, 1, 2}, true);
    REQUIRE(s.shape() == Shape{1, 1, 1});
  }
  // sum(x)^2 weights every element by the total: a non-constant gradient.
  check_op(g, weighted_sum(s * s), {x});
}

TEST_CASE("sum's gradient matches finite differences along each axis, with and without keepdims", "[grad][reduce]") {
  const int axis = GENERATE(0, 1, 2, -1, -3);
  const bool keepdims = GENERATE(false, true);
  INFO("axis " << axis << ", keepdims " << keepdims);
  gg::Graph g(gg::f64);
  Value x = g.param("x", {2, 3, 4}, gg::uniform(-2.0, 2.0));
  Value s = gg::sum(x, axis, keepdims);
  // Square the sums so that the gradient depends on them (and so on the reduction's layout).
  check_op(g, weighted_sum(s * s), {x});
}

TEST_CASE("mean's gradient matches finite differences over all axes and along an axis", "[grad][reduce]") {
  gg::Graph g(gg::f64);
  Value x = g.param("x", {3, 4}, gg::uniform(-2.0, 2.0));
  Value all = gg::mean(x);
  Value rows = gg::mean(x, 1);
  Value cols = gg::mean(x, 0, true);
  check_op(g, weighted_sum(all * all) + weighted_sum(rows * rows, 2) + weighted_sum(cols * cols, 3), {x});
}

TEST_CASE("sum's and mean's gradients match finite differences over several axes", "[grad][reduce]") {
  const std::vector<int> axes = GENERATE(std::vector<int>{0, 2}, std::vector<int>{1, 2}, std::vector<int>{-1, 0},
                                         std::vector<int>{0, 1, 2});
  const bool keepdims = GENERATE(false, true);
  INFO("axes " << axes.size() << " keepdims " << keepdims);
  gg::Graph g(gg::f64);
  Value x = g.param("x", {2, 3, 4}, gg::uniform(-2.0, 2.0));
  Value s = gg::sum(x, axes, keepdims);
  Value m = gg::mean(x, axes, keepdims);
  check_op(g, weighted_sum(s * s) + weighted_sum(m, 5), {x});
}

TEST_CASE("max's and min's gradients match finite differences over all axes, one axis and several", "[grad][reduce]") {
  const std::vector<int> axes = GENERATE(std::vector<int>{}, std::vector<int>{1}, std::vector<int>{-1},
                                         std::vector<int>{0, 2});
  const bool keepdims = GENERATE(false, true);
  INFO("axes " << axes.size() << " keepdims " << keepdims);
  gg::Graph g(gg::f64);
  // 24 distinct values 0.1 apart in a shuffled order: no ties, and no finite-difference step
  // crosses from one maximum to another.
  std::vector<double> v(24);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.1 * static_cast<double>((i * 7) % 24) - 1.2;
  Value x = g.param("x", {2, 3, 4});
  Value shift = g.constant(gg::Tensor::from(Shape{2, 3, 4}, v));
  Value y = x + shift;  // x starts at 0: the shuffled values are y's
  Value hi = axes.empty() ? gg::max(y) : gg::max(y, axes, keepdims);
  Value lo = axes.empty() ? gg::min(y) : gg::min(y, axes, keepdims);
  check_op(g, weighted_sum(hi * hi) + weighted_sum(lo, 5), {x});
}

TEST_CASE("max and min share the gradient equally between tied elements and propagate NaN", "[grad][reduce]") {
  gg::Graph g(gg::f64);
  Value x = g.input("x", {2, 3});
  Value hi = gg::max(x, 1);
  Value lo = gg::min(x, 0, true);
  const auto grads = gg::gradients(gg::sum(hi) + gg::sum(lo), {x});
  gg::Program p(g, {hi, lo, grads[0]});
  p.run({{x, gg::Tensor::from<double>({2, 3}, {4, 4, 1, -2, 3, -2})}});
  CHECK(gg::test::values(p.get(hi)) == std::vector<double>{4, 3});
  CHECK(gg::test::values(p.get(lo)) == std::vector<double>{-2, 3, -2});
  // Row 0's maximum 4 is tied twice; column 0's minimum is -2 alone, column 2's is -2 alone.
  CHECK(gg::test::values(p.get(grads[0])) == std::vector<double>{0.5, 0.5, 0, 1, 2, 1});
  const double nan = std::numeric_limits<double>::quiet_NaN();
  p.run({{x, gg::Tensor::from<double>({2, 3}, {1, nan, 0, 1, 2, 3})}});
  CHECK(std::isnan(p.get(hi).at({0})));
  CHECK(p.get(hi).at({1}) == 3.0);
}

TEST_CASE("mean's gradient over the open batch dimension divides by the fed batch size", "[grad][reduce][input]") {
  gg::Graph g(gg::f64);
  Value W = g.param("W", {3, 1}, gg::uniform(-2.0, 2.0));
  Value X = g.input("X", {3, gg::dyn});
  Value Z = W * X;
  Value over_batch = gg::mean(Z * Z, 1);  // {3}
  Value everything = gg::mean(Z);          // scalar, divides by 3 * batch
  const std::int64_t batch = GENERATE(1, 5);
  INFO("batch " << batch);
  Feeds f;
  f.add(X, random_tensor({3, batch}, -1.0, 1.0, 31));
  check_op(g, weighted_sum(over_batch) + weighted_sum(everything * everything, 2), {W, X}, f);
}

TEST_CASE("sum_to's gradient matches finite differences for several target shapes", "[grad][reduce]") {
  const Pair p = GENERATE(Pair{{2, 3, 4}, {3, 1}}, Pair{{2, 3, 4}, {3, 4}}, Pair{{2, 3, 4}, {2, 1, 4}},
                          Pair{{2, 3, 4}, {1, 1, 1}}, Pair{{3, 4}, {4}}, Pair{{3, 4}, {1, 4}}, Pair{{3, 4}, {}});
  INFO("sum " << describe(p));
  gg::Graph g(gg::f64);
  Value x = g.param("x", p.a, gg::uniform(-2.0, 2.0));
  Value s = gg::sum_to(x, p.b);
  REQUIRE(s.shape() == p.b);
  check_op(g, weighted_sum(s * s), {x});
}

TEST_CASE("broadcast_to's gradient matches finite differences for several source shapes", "[grad][reduce]") {
  const Pair p = GENERATE(Pair{{4}, {3, 4}}, Pair{{3, 1}, {3, 4}}, Pair{{3, 1}, {2, 3, 4}}, Pair{{}, {2, 3}},
                          Pair{{2, 1, 4}, {2, 3, 4}}, Pair{{1, 4}, {2, 3, 4}});
  INFO("broadcast " << describe(p));
  gg::Graph g(gg::f64);
  Value x = g.param("x", p.a, gg::uniform(-2.0, 2.0));
  Value b = gg::broadcast_to(x, p.b);
  REQUIRE(b.shape() == p.b);
  check_op(g, weighted_sum(b * b), {x});
}

// ---- shape -------------------------------------------------------------------------------------

TEST_CASE("reshape's gradient matches finite differences for a parameter and for an intermediate", "[grad][shape]") {
  const Shape to = GENERATE(Shape{2, 6}, Shape{12}, Shape{2, 2, 3}, Shape{4, 3});
  INFO("reshape {3, 4} to " << gg::to_string(to));
  gg::Graph g(gg::f64);
  Value x = g.param("x", {3, 4}, gg::uniform(-2.0, 2.0));
  Value direct = gg::reshape(x, to);                // a view of persistent storage
  Value inner = gg::reshape(gg::exp(x), to);        // a view of an arena buffer
  check_op(g, weighted_sum(direct * direct) + weighted_sum(inner, 2), {x});
}

TEST_CASE("transpose's gradient matches finite differences in 2-d and for 3-d permutations", "[grad][shape]") {
  const std::vector<int> perm = GENERATE(std::vector<int>{1, 0, 2}, std::vector<int>{2, 0, 1}, std::vector<int>{1, 2, 0},
                                         std::vector<int>{2, 1, 0}, std::vector<int>{0, 1, 2});
  INFO("perm " << perm[0] << perm[1] << perm[2]);
  gg::Graph g(gg::f64);
  Value x = g.param("x", {2, 3, 4}, gg::uniform(-2.0, 2.0));
  Value m = g.param("m", {3, 5}, gg::uniform(-2.0, 2.0));
  Value t = gg::transpose(x, perm);
  Value t2 = gg::transpose(m);
  REQUIRE(t2.shape() == Shape{5, 3});
  // Squares so that the gradient depends on where each element went.
  check_op(g, weighted_sum(t * t) + weighted_sum(t2 * t2, 2), {x, m});
}

TEST_CASE("transpose's gradient w.r.t. a fed input matches finite differences", "[grad][shape][input]") {
  gg::Graph g(gg::f64);
  Value x = g.input("x", {3, gg::dyn});
  Value R = g.input("R", {gg::dyn, 3});
  Feeds f;
  f.add(x, random_tensor({3, 4}, -1.0, 1.0, 41));
  f.add(R, random_tensor({4, 3}, -1.0, 1.0, 42));
  Value t = gg::transpose(x);
  check_op(g, gg::sum(t * t * R), {x}, f);
}

TEST_CASE("slice's gradient matches finite differences along each axis, for parameters and intermediates", "[grad][shape]") {
  const int axis = GENERATE(0, 1, 2, -1);
  INFO("axis " << axis);
  gg::Graph g(gg::f64);
  Value x = g.param("x", {3, 4, 5}, gg::uniform(-2.0, 2.0));
  // A slice of a parameter (a view of persistent memory) and of an intermediate (an arena view),
  // each read by an op that needs contiguous memory and by one that reads strides.
  Value a = gg::slice(x, axis, 1, 3);
  Value b = gg::slice(gg::tanh(x), axis, 0, 2);
  check_op(g, weighted_sum(gg::exp(a)) + weighted_sum(a * b, 7), {x});
}

TEST_CASE("slice's gradient w.r.t. a fed input matches finite differences", "[grad][shape][input]") {
  gg::Graph g(gg::f64);
  Value X = g.input("X", {6, gg::dyn});
  Value W = g.param("W", {2, 3}, gg::uniform(-1.0, 1.0));
  Value R = g.input("R", {2, gg::dyn});
  Value top = gg::slice(X, 0, 1, 4);  // rows 1..3 of every column
  Feeds f;
  f.add(X, random_tensor({6, 5}, -1.0, 1.0, 91));
  f.add(R, random_tensor({2, 5}, -1.0, 1.0, 92));
  check_op(g, gg::sum(gg::matmul(W, top) * R) + gg::sum(top * top), {X, W}, f);
}

// ---- dtypes and indexing ------------------------------------------------------------------------

TEST_CASE("cast's gradient matches finite differences from float32 to float64 and back", "[grad][convert]") {
  gg::Graph g(gg::f64);
  Value x = g.param("x", {3, 4}, gg::uniform(-2.0, 2.0));
  // float64 -> float32 -> float64 rounds to float: the finite difference sees float steps, so the
  // check runs on the float64 -> float64 identity path and on the float32 gradient's dtype.
  Value y = gg::cast(gg::cast(x, gg::f32), gg::f64);
  REQUIRE(y.dtype() == gg::f64);
  const Value dx = gg::gradients(gg::sum(y * y), {x})[0];
  CHECK(dx.dtype() == gg::f64);
  gg::Program p(g, {dx});
  p.run({});
  for (std::int64_t i = 0; i < 3; ++i)
    for (std::int64_t j = 0; j < 4; ++j) {
      const double v = static_cast<float>(p.param(x).at({i, j}));
      CHECK(p.get(dx).at({i, j}) == static_cast<double>(static_cast<float>(2 * v)));
    }
  gg::Graph h(gg::f64);
  Value z = h.param("z", {3, 4}, gg::uniform(-2.0, 2.0));
  check_op(h, weighted_sum(gg::cast(gg::tanh(z), gg::f64)), {z});
}

TEST_CASE("gather's gradient w.r.t. the table matches finite differences, repeated indices included", "[grad][convert]") {
  const int axis = GENERATE(0, 1);
  INFO("axis " << axis);
  gg::Graph g(gg::f64);
  Value table = g.param("table", {5, 4}, gg::uniform(-2.0, 2.0));
  Value idx = g.constant(gg::Tensor::from<std::int64_t>({2, 3}, {3, 0, 3, 1, 1, 2}));
  Value rows = gg::gather(table, idx, axis);
  CHECK(rows.shape() == (axis == 0 ? Shape{2, 3, 4} : Shape{5, 2, 3}));
  check_op(g, weighted_sum(rows * rows), {table});
}

// ---- pooling -------------------------------------------------------------------------------------

namespace {

// A square pooling window: kernel, stride, padding.
struct Pool {
  int kernel, stride, padding;
};

std::string describe(const Pool& p) {
  return "kernel " + std::to_string(p.kernel) + ", stride " + std::to_string(p.stride) + ", padding " +
         std::to_string(p.padding);
}

// Non-overlapping; padded; overlapping with padding; overlapping without; and non-overlapping with
// the map's last row and column never read (5x6 maps).
const std::vector<Pool>& pools() {
  static const std::vector<Pool> p = {{2, 2, 0}, {3, 2, 1}, {3, 1, 1}, {2, 1, 0}, {3, 3, 0}};
  return p;
}

// The values k / n for k = -n/2 .. n/2 - 1, shuffled: no ties, and no finite-difference step (1e-6)
// crosses from one maximum to another (1 / n apart). Within [-0.5, 0.5), so that the losses stay
// near 1: the round-off of a central difference grows with the loss.
gg::Tensor distinct_tensor(const Shape& s, std::uint64_t seed) {
  const std::int64_t n = s.numel();
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
  gg::Generator(gg::RngKind::standard, seed).shuffle(order);
  gg::Tensor t(gg::f64, s);
  for (std::int64_t i = 0; i < n; ++i) t.ptr<double>()[i] = static_cast<double>(order[static_cast<std::size_t>(i)] - n / 2) / static_cast<double>(n);
  return t;
}

}  // namespace

TEST_CASE("max_pool2d's gradient matches finite differences over kernels, strides, paddings and batch sizes",
          "[grad][pool]") {
  const Pool pool = GENERATE(from_range(pools()));
  const std::int64_t batch = GENERATE(1, 3);
  INFO(describe(pool) << ", batch " << batch);
  gg::Graph g(gg::f64);
  const Shape s{batch, 2, 5, 6};
  Value x = g.param("x", s);  // starts at 0: the distinct values are y's operand's
  Value y = gg::max_pool2d(x + g.constant(distinct_tensor(s, 7)), pool.kernel, pool.stride, pool.padding);
  // y * y: the gradient depends on which element won, so a misrouted one has the wrong value too.
  check_op(g, weighted_sum(y * y) + weighted_sum(y, 5), {x});
}

TEST_CASE("avg_pool2d's gradient matches finite differences over kernels, strides, paddings and batch sizes",
          "[grad][pool]") {
  const Pool pool = GENERATE(from_range(pools()));
  const std::int64_t batch = GENERATE(1, 3);
  INFO(describe(pool) << ", batch " << batch);
  gg::Graph g(gg::f64);
  Value x = g.param("x", {batch, 2, 5, 6}, gg::uniform(-1.0, 1.0));
  Value y = gg::avg_pool2d(x, pool.kernel, pool.stride, pool.padding);
  check_op(g, weighted_sum(y * y) + weighted_sum(y, 5), {x});
}

TEST_CASE("pooling gradients w.r.t. a fed input with an open batch dimension match finite differences",
          "[grad][pool][input]") {
  const Pool pool = GENERATE(Pool{3, 2, 1}, Pool{3, 1, 1});
  const std::int64_t batch = GENERATE(1, 3);
  INFO(describe(pool) << ", batch " << batch);
  gg::Graph g(gg::f64);
  Value x = g.input("x", {gg::dyn, 2, 5, 6});
  Value hi = gg::max_pool2d(x, pool.kernel, pool.stride, pool.padding);
  Value mean = gg::avg_pool2d(x, pool.kernel, pool.stride, pool.padding);
  REQUIRE(hi.shape().dims[0] == gg::dyn);
  REQUIRE(mean.shape() == hi.shape());
  Shape r = hi.shape();
  Value R = g.input("R", r);
  r.dims[0] = batch;
  Feeds f;
  f.add(x, distinct_tensor({batch, 2, 5, 6}, 8));
  f.add(R, random_tensor(r, -1.0, 1.0, 9));
  check_op(g, gg::sum(hi * hi * R) + gg::sum(mean * R), {x}, f);
}

TEST_CASE("max_pool2d's gradient is differentiable again: second derivatives through max_unpool2d",
          "[grad][pool][second-order]") {
  const Pool pool = GENERATE(Pool{2, 2, 0}, Pool{3, 1, 1});
  INFO(describe(pool));
  gg::Graph g(gg::f64);
  const Shape s{3, 2, 4, 5};
  Value x = g.param("x", s);
  Value y = gg::max_pool2d(x + g.constant(distinct_tensor(s, 10)), pool.kernel, pool.stride, pool.padding);
  Value w = g.param("w", y.shape(), gg::uniform(-1.0, 1.0));
  const Value dx = gg::gradients(gg::sum(y * y * w), {x})[0];  // unpooled 2 y w
  REQUIRE(dx.op_name() == std::string("max_unpool2d"));
  // d/dx runs through the unpooling's VJP (a gather at the indices) into max_pool2d's VJP again;
  // d/dw through the gather alone.
  check_op(g, weighted_sum(dx), {x, w});
}

TEST_CASE("max_unpool2d and max_pool2d_gather built directly have gradients matching finite differences",
          "[grad][pool][second-order]") {
  const Pool pool = GENERATE(Pool{2, 2, 0}, Pool{3, 2, 1}, Pool{3, 1, 1});
  INFO(describe(pool));
  gg::Graph g(gg::f64);
  const Shape s{3, 2, 5, 6};
  Value pooled = gg::max_pool2d(g.constant(distinct_tensor(s, 11)), pool.kernel, pool.stride, pool.padding);
  Value indices{pooled.graph, pooled.id, 1};
  Value v = g.param("v", s, gg::uniform(-1.0, 1.0));
  Value grad = g.param("grad", pooled.shape(), gg::uniform(-1.0, 1.0));
  // The forward node's attributes (its window and map) are the adjoints'.
  const gg::Attrs& a = pooled.node().attrs;
  Value gathered = gg::detail::make(*gg::detail::find_op("max_pool2d_gather"), {v, indices}, a);
  Value unpooled = gg::detail::make(*gg::detail::find_op("max_unpool2d"), {grad, indices}, a);
  REQUIRE(gathered.shape() == pooled.shape());
  REQUIRE(unpooled.shape() == s);
  // Squares, so each gradient depends on where its values went.
  check_op(g, weighted_sum(gathered * gathered) + weighted_sum(unpooled * unpooled, 3), {v, grad});
}

TEST_CASE("avg_pool2d's gradient is differentiable again, and avg_pool2d_backward built directly matches finite differences",
          "[grad][pool][second-order]") {
  const Pool pool = GENERATE(from_range(pools()));
  INFO(describe(pool));
  gg::Graph g(gg::f64);
  Value x = g.param("x", {3, 2, 5, 6}, gg::uniform(-1.0, 1.0));
  Value y = gg::avg_pool2d(x, pool.kernel, pool.stride, pool.padding);
  Value w = g.param("w", y.shape(), gg::uniform(-1.0, 1.0));
  const Value dx = gg::gradients(gg::sum(y * y * w), {x})[0];  // spread 2 y w
  REQUIRE(dx.op_name() == std::string("avg_pool2d_backward"));
  Value grad = g.param("grad", y.shape(), gg::uniform(-1.0, 1.0));
  Value spread = gg::detail::make(*gg::detail::find_op("avg_pool2d_backward"), {grad}, y.node().attrs);
  REQUIRE(spread.shape() == x.shape());
  check_op(g, weighted_sum(dx) + weighted_sum(spread * spread, 3), {x, w, grad});
}

TEST_CASE("max_pool2d and avg_pool2d match hand-computed values with padding, and the first of tied maxima wins",
          "[grad][pool]") {
  gg::Graph g(gg::f64);
  Value x = g.input("x", {1, 1, 4, 4});
  Value R = g.input("R", {1, 1, 2, 2});
  Value hi = gg::max_pool2d(x, 3, 2, 1);  // 2x2 windows over rows and columns -1..1 and 1..3
  Value indices{hi.graph, hi.id, 1};
  Value mean = gg::avg_pool2d(x, 3, 2, 1);
  REQUIRE(hi.shape() == Shape{1, 1, 2, 2});
  REQUIRE(indices.dtype() == gg::i64);
  const auto dmax = gg::gradients(gg::sum(hi * R), {x})[0];
  const auto davg = gg::gradients(gg::sum(mean * R), {x})[0];
  gg::Program p(g, {hi, indices, mean, dmax, davg});
  // Every value is negative, so a padding cell that counted as 0 would win the border windows.
  // Window (0, 0) holds -5 twice, at (0, 1) and (1, 0): the first in row-major order wins.
  const gg::Tensor xv = gg::Tensor::from<double>({1, 1, 4, 4}, {-9, -5, -8, -10,  //
                                                                -5, -7, -6, -6,   //
                                                                -10, -8, -1, -9,  //
                                                                -3, -4, -9, -2});
  p.run({{x, xv}, {R, gg::Tensor::from<double>({1, 1, 2, 2}, {9, 18, 27, 36})}});
  CHECK(gg::test::values(p.get(hi)) == std::vector<double>{-5, -5, -3, -1});
  CHECK(gg::test::values(p.get(indices)) == std::vector<double>{1, 1, 12, 10});
  // count_include_pad: the padding's zeros are in every mean, whose divisor is always 9.
  CHECK(gg::test::values(p.get(mean)) == std::vector<double>{-26.0 / 9, -42.0 / 9, -37.0 / 9, -52.0 / 9});
  // The maximum at 1 wins two windows: their gradients add up; the tied -5 at 4 gets none.
  CHECK(gg::test::values(p.get(dmax)) == std::vector<double>{0, 27, 0, 0, 0, 0, 0, 0, 0, 0, 36, 0, 27, 0, 0, 0});
  // Each window spreads R / 9 over its cells of the map: sums of 1, 2, 3, 4 by overlap.
  CHECK(gg::test::values(p.get(davg)) == std::vector<double>{1, 3, 2, 2, 4, 10, 6, 6, 3, 7, 4, 4, 3, 7, 4, 4});
}

TEST_CASE("max_pool2d propagates NaN as PyTorch does, and a window of -inf names its first cell", "[grad][pool]") {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  gg::Graph g(gg::f64);
  Value x = g.input("x", {1, 2, 2, 4});
  Value hi = gg::max_pool2d(x, 2);
  Value indices{hi.graph, hi.id, 1};
  Value mean = gg::avg_pool2d(x, 2);
  gg::Program p(g, {hi, indices, mean});
  // Plane 0: two NaNs before a larger value (the value is NaN, the index the later NaN's: every
  // NaN takes over), and a NaN before a larger value. Plane 1: a window of -inf, and one without
  // a NaN, which a NaN elsewhere does not touch.
  p.run({{x, gg::Tensor::from<double>({1, 2, 2, 4}, {1, nan, 3, nan,     //
                                                     nan, 7, 4, 0,       //
                                                     -inf, -inf, 6, 1,   //
                                                     -inf, -inf, 5, 2})}});
  const std::vector<double> y = gg::test::values(p.get(hi));
  CHECK(std::isnan(y[0]));
  CHECK(std::isnan(y[1]));
  CHECK(y[2] == -inf);
  CHECK(y[3] == 6);
  CHECK(gg::test::values(p.get(indices)) == std::vector<double>{4, 3, 0, 2});
  const std::vector<double> m = gg::test::values(p.get(mean));
  CHECK(std::isnan(m[0]));
  CHECK(std::isnan(m[1]));
  CHECK(m[2] == -inf);
  CHECK(m[3] == 3.5);
}

TEST_CASE("relu then max_pool2d: the fused program masks the pooled gradient, with the unfused program's bits",
          "[grad][pool][fused]") {
  const auto dtype = GENERATE(gg::f32, gg::f64);
  const Pool pool = GENERATE(Pool{2, 2, 0}, Pool{3, 2, 1});  // overlapping windows too
  INFO(gg::dtype_name(dtype) << " " << describe(pool));
  gg::Graph g(dtype);
  Value x = g.input("x", {gg::dyn, 2, 7, 8});
  Value w = g.param("w", {2, 7, 8}, gg::uniform(-1.0, 1.0));
  Value y = gg::max_pool2d(gg::relu(x * w), pool.kernel, pool.stride, pool.padding);
  Value r = g.input("r", y.shape());
  const Value dw = gg::gradients(gg::sum(y * r), {w})[0];
  gg::CompileOptions plain;
  plain.fuse = false;
  gg::Program pf(g, {dw}), pp(g, {dw}, plain);
  // Fused, the relu_grad runs before the unpooling (on the pooled gradient); unfused, after.
  auto order = [](const std::vector<std::string>& schedule) {
    std::ptrdiff_t mask = -1, unpool = -1;
    for (std::size_t i = 0; i < schedule.size(); ++i) {
      if (schedule[i].rfind("relu_grad ", 0) == 0) mask = static_cast<std::ptrdiff_t>(i);
      if (schedule[i].rfind("max_unpool2d ", 0) == 0) unpool = static_cast<std::ptrdiff_t>(i);
    }
    REQUIRE(mask >= 0);
    REQUIRE(unpool >= 0);
    return mask < unpool;
  };
  CHECK(order(pf.schedule(3)));
  CHECK_FALSE(order(pp.schedule(3)));
  // Ties and zeros included: values from a few levels, a third of them negative.
  const gg::Tensor xv = gg::Tensor::copy_of(gg::Tensor::from<double>({3, 2, 7, 8}, [] {
    std::vector<double> v(3 * 2 * 7 * 8);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(static_cast<int>((i * 7919) % 9) - 3);
    return v;
  }()), dtype);
  const gg::Tensor rv = gg::test::random_tensor(dtype, Shape{3, 2, y.shape()[2], y.shape()[3]}, -1.0, 1.0, 4);
  pf.run({{x, xv}, {r, rv}});
  pp.run({{x, xv}, {r, rv}});
  CHECK(gg::test::values(pf.get(dw)) == gg::test::values(pp.get(dw)));
}

TEST_CASE("2x2 max pooling at stride 2 keeps the rules on rows of every width: ties, NaN, -inf", "[grad][pool]") {
  // The 2x2 kernel works on blocks of 8 or 4 cells per row: widths around those sizes, random
  // values from a few levels (ties) with NaNs and -infs mixed in, against the rule cell by cell.
  const std::int64_t width = GENERATE(2, 4, 6, 8, 10, 14, 16, 18, 24, 30);
  const auto dtype = GENERATE(gg::f32, gg::f64);
  INFO("width " << width << " " << gg::dtype_name(dtype));
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  const std::int64_t H = 6, W = width;
  gg::Graph g(dtype);
  Value x = g.input("x", {2, 1, H, W});
  Value y = gg::max_pool2d(x, 2);
  Value indices{y.graph, y.id, 1};
  gg::Program p(g, {y, indices});
  std::vector<double> xs(static_cast<std::size_t>(2 * H * W));
  std::uint64_t state = 12345 + static_cast<std::uint64_t>(width);
  for (double& v : xs) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    const int r = static_cast<int>((state >> 33) % 12);
    v = r == 0 ? nan : r == 1 ? -inf : static_cast<double>(r % 4);
  }
  const gg::Tensor xv = gg::Tensor::copy_of(gg::Tensor::from<double>({2, 1, H, W}, xs), dtype);
  p.run({{x, xv}});
  const std::vector<double> got = gg::test::values(p.get(y)), at = gg::test::values(p.get(indices));
  for (std::int64_t c = 0; c < 2; ++c)
    for (std::int64_t i = 0; i < H / 2; ++i)
      for (std::int64_t j = 0; j < W / 2; ++j) {
        double best = -inf;
        std::int64_t where = 2 * i * W + 2 * j;
        for (std::int64_t a = 0; a < 2; ++a)
          for (std::int64_t b = 0; b < 2; ++b) {
            const std::int64_t q = (2 * i + a) * W + 2 * j + b;
            const double v = xs[static_cast<std::size_t>(c * H * W + q)];
            if (v > best || std::isnan(v)) best = v, where = q;
          }
        const std::size_t o = static_cast<std::size_t>((c * (H / 2) + i) * (W / 2) + j);
        INFO("plane " << c << " cell " << i << ", " << j);
        CHECK(at[o] == static_cast<double>(where));
        CHECK((std::isnan(best) ? std::isnan(got[o]) : got[o] == best));
      }
}

// ---- losses ------------------------------------------------------------------------------------

TEST_CASE("softmax_cross_entropy's gradients w.r.t. logits and targets match finite differences", "[grad][loss]") {
  const int axis = GENERATE(0, 1, -1);
  INFO("class axis " << axis);
  gg::Graph g(gg::f64);
  const Shape s = axis == 0 ? Shape{5, 3} : Shape{3, 5};  // 5 classes, 3 examples
  Value Z = g.param("Z", s, gg::uniform(-3.0, 3.0));
  Value Y = g.param("Y", s, gg::uniform(0.0, 1.0));  // soft targets (not normalised: Y is an arbitrary weight)
  Value L = gg::softmax_cross_entropy(Z, Y, axis);
  REQUIRE(L.shape() == Shape{});
  check_op(g, weighted_sum(L), {Z, Y});
}

TEST_CASE("softmax_cross_entropy's gradients w.r.t. fed one-hot targets and a batch of logits match finite differences",
          "[grad][loss][input]") {
  gg::Graph g(gg::f64);
  Value W = g.param("W", {4, 3}, gg::uniform(-1.0, 1.0));
  Value X = g.input("X", {3, gg::dyn});
  Value Y = g.input("Y", {4, gg::dyn});
  const std::int64_t batch = GENERATE(1, 6);
  INFO("batch " << batch);
  Feeds f;
  f.add(X, random_tensor({3, batch}, -2.0, 2.0, 51));
  gg::Tensor y(gg::f64, {4, batch});
  for (std::int64_t j = 0; j < batch; ++j) y.set({j % 4, j}, 1.0);
  f.add(Y, y);
  check_op(g, weighted_sum(gg::softmax_cross_entropy(gg::matmul(W, X), Y, 0)), {W, X, Y}, f);
}

TEST_CASE("softmax_cross_entropy_grad's gradients match finite differences through second derivatives",
          "[grad][loss][second-order]") {
  const int axis = GENERATE(0, -1);
  INFO("class axis " << axis);
  gg::Graph g(gg::f64);
  Value Z = g.param("Z", {4, 3}, gg::uniform(-2.0, 2.0));
  Value Y = g.param("Y", {4, 3}, gg::uniform(0.0, 1.0));
  Value s = g.param("s", {}, gg::uniform(0.5, 2.0));  // scales the loss: the grad op's incoming gradient
  Value L = s * gg::softmax_cross_entropy(Z, Y, axis);
  const Value dZ = gg::gradients(L, {Z})[0];
  bool uses_grad_op = false;
  for (int i = 0; i < g.size(); ++i) uses_grad_op = uses_grad_op || g.node(i).op_name() == std::string("softmax_cross_entropy_grad");
  REQUIRE(uses_grad_op);
  check_op(g, weighted_sum(dZ), {Z, Y, s});
}

TEST_CASE("softmax_cross_entropy_grad built directly has gradients matching finite differences for all three operands",
          "[grad][loss][second-order]") {
  const int axis = GENERATE(0, 1);
  INFO("class axis " << axis);
  gg::Graph g(gg::f64);
  Value Z = g.param("Z", {3, 4}, gg::uniform(-2.0, 2.0));
  Value Y = g.param("Y", {3, 4}, gg::uniform(0.0, 1.0));
  Value G = g.param("G", {}, gg::uniform(0.5, 2.0));
  // The loss node's attributes (its class axis) are the grad op's.
  const Value L = gg::softmax_cross_entropy(Z, Y, axis);
  Value d = gg::detail::make(*gg::detail::find_op("softmax_cross_entropy_grad"), {Z, Y, G}, L.node().attrs);
  check_op(g, weighted_sum(d), {Z, Y, G});
}

// ---- fused and helper ops ----------------------------------------------------------------------

TEST_CASE("add_relu built directly has gradients matching finite differences under broadcasting", "[grad][fused]") {
  const Pair p = GENERATE(Pair{{3, 4}, {3, 4}}, Pair{{3, 4}, {3, 1}}, Pair{{3, 4}, {4}}, Pair{{2, 3, 4}, {3, 1}});
  INFO("operands " << describe(p));
  gg::Graph g(gg::f64);
  // a = mag * sign with |a| >= 0.3 and |b| <= 0.1 keeps a + b at least 0.2 away from the kink.
  Value mag = g.param("mag", p.a, gg::uniform(0.3, 2.0));
  Value a = mag * g.constant(signed_tensor(p.a, 1.0, 1.0, 61));
  Value b = g.param("b", p.b, gg::uniform(-0.1, 0.1));
  Value y = gg::detail::make(*gg::detail::find_op("add_relu"), {a, b});
  REQUIRE(y.shape() == p.a);
  check_op(g, weighted_sum(y), {mag, b});
}

TEST_CASE("relu(a + b) checked through a fused program (add_relu forward) matches finite differences", "[grad][fused]") {
  gg::Graph g(gg::f64);
  Value mag = g.param("mag", {3, 4}, gg::uniform(0.3, 2.0));
  Value a = mag * g.constant(signed_tensor({3, 4}, 1.0, 1.0, 62));
  Value b = g.param("b", {3, 1}, gg::uniform(-0.1, 0.1));
  Value loss = weighted_sum(gg::relu(a + b));
  {
    gg::Program probe(g, {loss});
    bool fused = false;
    for (const std::string& step : probe.schedule(0)) fused = fused || step.rfind("add_relu", 0) == 0;
    REQUIRE(fused);
  }
  check_op(g, loss, {mag, b});
}

TEST_CASE("relu_grad's gradient w.r.t. the incoming gradient matches finite differences (second derivative of relu)",
          "[grad][second-order]") {
  gg::Graph g(gg::f64);
  Value mag = g.param("mag", {3, 4}, gg::uniform(0.2, 2.0));
  Value x = mag * g.constant(signed_tensor({3, 4}, 1.0, 1.0, 71));
  Value w = g.param("w", {3, 4}, gg::uniform(-2.0, 2.0));
  Value L = gg::sum(gg::relu(x) * w);
  const Value dx = gg::gradients(L, {x})[0];  // relu_grad(w, relu(x))
  REQUIRE(dx.op_name() == std::string("relu_grad"));
  check_op(g, weighted_sum(dx * w), {w});
}

// ---- gradients w.r.t. inputs of a whole network ---------------------------------------------------

TEST_CASE("gradients of a small two-layer network w.r.t. its input and its parameters match finite differences",
          "[grad][input]") {
  gg::Graph g(gg::f64);
  Value X = g.input("X", {6, gg::dyn});
  Value Y = g.input("Y", {3, gg::dyn});
  Value W1 = g.param("W1", {5, 6}, gg::uniform(-0.8, 0.8));
  Value b1 = g.param("b1", {5, 1}, gg::uniform(-0.1, 0.1));
  Value W2 = g.param("W2", {3, 5}, gg::uniform(-0.8, 0.8));
  Value b2 = g.param("b2", {3, 1}, gg::uniform(-0.1, 0.1));
  Value loss = gg::softmax_cross_entropy(gg::matmul(W2, gg::tanh(gg::matmul(W1, X) + b1)) + b2, Y, 0);
  Feeds f;
  f.add(X, random_tensor({6, 4}, 0.0, 1.0, 81));
  gg::Tensor y(gg::f64, {3, 4});
  for (std::int64_t j = 0; j < 4; ++j) y.set({(j * 2) % 3, j}, 1.0);
  f.add(Y, y);
  check_op(g, loss, {X, W1, b1, W2, b2}, f);
}
