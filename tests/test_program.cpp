// Programs: feeding, planning per batch size, memory sharing, strided feeds, parameter access,
// initialisers, optimizer update ops, the fusion pass and shared parameter storage.
#include "support.hpp"

#include <gradgraph/gradgraph.hpp>
#include <gradgraph/init.hpp>

#include "ops/op.hpp"  // ops defined in this file, to show the planner needs nothing more

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace {

using Catch::Matchers::Contains;
using gg::Shape;
using gg::Value;
using Mlp = gg::test::MlpWithGrads;
using gg::test::message_of;
using gg::test::one_hot;
using gg::test::random_tensor;
using gg::test::rel_diff;
using gg::test::values;

gg::CompileOptions options(bool fuse = true, std::uint64_t seed = 3) {
  gg::CompileOptions o;
  o.threads = 1;
  o.fuse = fuse;
  o.seed = seed;
  return o;
}


bool has_step(const std::vector<std::string>& schedule, const std::string& op) {
  return std::any_of(schedule.begin(), schedule.end(),
                     [&](const std::string& s) { return s.rfind(op + " ", 0) == 0; });
}

// All fetched values of a run, as doubles.
std::vector<std::vector<double>> fetched(const gg::Program& p, const std::vector<Value>& vs) {
  std::vector<std::vector<double>> out;
  for (const Value& v : vs) out.push_back(values(p.get(v)));
  return out;
}

}  // namespace

// ---- feeding -----------------------------------------------------------------------------------

TEST_CASE("feeding a wrong shape throws a one-line invalid_argument naming the input and both shapes", "[program][feed]") {
  Mlp net(gg::f32, 20, 7, 5);
  gg::Program p(net.g, net.fetches(), options());
  const gg::Tensor y = one_hot(gg::f32, 5, 8, 1);
  SECTION("a wrong fixed dimension") {
    const gg::Tensor x(gg::f32, {19, 8});
    const std::string msg = message_of<std::invalid_argument>([&] { p.run({{net.X, x}, {net.Y, y}}); });
    CHECK_THAT(msg, Contains("'X'") && Contains("{20, dyn}") && Contains("{19, 8}"));
    CHECK(msg.find('\n') == std::string::npos);
  }
  SECTION("a batch that differs between inputs") {
    const gg::Tensor x(gg::f32, {20, 6});
    const std::string msg = message_of<std::invalid_argument>([&] { p.run({{net.X, x}, {net.Y, y}}); });
    // Whichever input is checked second is named, with its expected and fed shapes.
    CHECK_THAT(msg, (Contains("'Y'") && Contains("{5, dyn}") && Contains("{5, 8}") && Contains("batch 6")) ||
                        (Contains("'X'") && Contains("{20, dyn}") && Contains("{20, 6}") && Contains("batch 8")));
    CHECK(msg.find('\n') == std::string::npos);
  }
  SECTION("a wrong rank") {
    const gg::Tensor x(gg::f32, {20, 8, 1});
    const std::string msg = message_of<std::invalid_argument>([&] { p.run({{net.X, x}, {net.Y, y}}); });
    CHECK_THAT(msg, Contains("'X'") && Contains("{20, dyn}") && Contains("{20, 8, 1}"));
    CHECK(msg.find('\n') == std::string::npos);
  }
}

TEST_CASE("feeding the wrong dtype throws a one-line invalid_argument naming the input and both dtypes", "[program][feed]") {
  Mlp net(gg::f32, 20, 7, 5);
  gg::Program p(net.g, net.fetches(), options());
  const gg::Tensor x(gg::f64, {20, 8});
  const gg::Tensor y = one_hot(gg::f32, 5, 8, 1);
  const std::string msg = message_of<std::invalid_argument>([&] { p.run({{net.X, x}, {net.Y, y}}); });
  CHECK_THAT(msg, Contains("'X'") && Contains("float64") && Contains("float32"));
  CHECK(msg.find('\n') == std::string::npos);
}

TEST_CASE("a missing feed throws an invalid_argument naming the input", "[program][feed]") {
  Mlp net(gg::f32, 20, 7, 5);
  gg::Program p(net.g, net.fetches(), options());
  const gg::Tensor x(gg::f32, {20, 8});
  const std::string msg = message_of<std::invalid_argument>([&] { p.run({{net.X, x}}); });
  CHECK_THAT(msg, Contains("'Y'") && Contains("not fed"));
  CHECK(msg.find('\n') == std::string::npos);
}

// ---- planning ----------------------------------------------------------------------------------

TEST_CASE("changing the batch size re-plans, and results match a fresh program's", "[program][plan]") {
  Mlp net(gg::f64, 30, 9, 4);
  gg::Program p(net.g, net.fetches(), options());
  const gg::Tensor x32 = random_tensor(gg::f64, {30, 32}, 0, 1, 2), y32 = one_hot(gg::f64, 4, 32, 3);
  const gg::Tensor x17 = random_tensor(gg::f64, {30, 17}, 0, 1, 4), y17 = one_hot(gg::f64, 4, 17, 5);
  p.run({{net.X, x32}, {net.Y, y32}});
  const auto at32 = fetched(p, net.fetches());
  p.run({{net.X, x17}, {net.Y, y17}});
  const auto at17 = fetched(p, net.fetches());
  CHECK(p.get(net.grads[0]).shape == net.W1.shape());

  gg::Program fresh(net.g, net.fetches(), options());
  fresh.run({{net.X, x17}, {net.Y, y17}});
  CHECK(fetched(fresh, net.fetches()) == at17);
  // And back: the first plan is reused and still right.
  p.run({{net.X, x32}, {net.Y, y32}});
  CHECK(fetched(p, net.fetches()) == at32);
}

TEST_CASE("the planned arena of the network is smaller than its buffers' unshared total", "[program][plan]") {
  Mlp net(gg::f32, 784, 64, 10);
  gg::Program p(net.g, net.fetches(), options());
  const std::size_t planned = p.planned_bytes(64), unshared = p.unshared_bytes(64);
  INFO("planned " << planned << " bytes, unshared " << unshared << " bytes");
  CHECK(planned > 0);
  CHECK(planned < unshared);
  // The arena holds at least the largest single buffer: the {64, 64} activations (or the gradient of W1).
  CHECK(planned >= static_cast<std::size_t>(64 * 784 * 4));
}

// ---- strided feeds -----------------------------------------------------------------------------

TEST_CASE("a column slice fed to an input read only by GEMMs gives the same results as a contiguous copy",
          "[program][feed][strided]") {
  Mlp net(gg::f64, 40, 9, 4);
  const gg::Tensor big = random_tensor(gg::f64, {40, 100}, 0, 1, 6), ybig = one_hot(gg::f64, 4, 100, 7);
  const gg::Tensor xs = big.slice_trailing(10, 42), ys = ybig.slice_trailing(10, 42);  // {40, 32}, row stride 100
  REQUIRE_FALSE(xs.view().is_contiguous());
  const gg::Tensor xc = gg::Tensor::copy_of(xs), yc = gg::Tensor::copy_of(ys);
  gg::Program strided(net.g, net.fetches(), options());
  gg::Program contiguous(net.g, net.fetches(), options());
  strided.run({{net.X, xs}, {net.Y, ys}});  // Y is read by the loss kernel, which needs contiguity
  contiguous.run({{net.X, xc}, {net.Y, yc}});
  const auto a = fetched(strided, net.fetches()), b = fetched(contiguous, net.fetches());
  for (std::size_t i = 0; i < a.size(); ++i) {
    INFO("fetch " << net.fetches()[i].name());
    CHECK(rel_diff(a[i], b[i]) <= 1e-14);
  }
  // The feed itself is untouched.
  CHECK(values(xs) == values(xc));
}

TEST_CASE("a transposed view fed to an input read only by GEMMs gives the same results as a contiguous copy",
          "[program][feed][strided]") {
  Mlp net(gg::f64, 40, 9, 4);
  const gg::Tensor xt = random_tensor(gg::f64, {32, 40}, 0, 1, 8);  // examples x features
  const gg::TensorView xv = xt.view().transposed();                  // {40, 32}, strides {1, 40}
  REQUIRE_FALSE(xv.is_contiguous());
  const gg::Tensor xc = gg::Tensor::copy_of(xv), y = one_hot(gg::f64, 4, 32, 9);
  gg::Program strided(net.g, net.fetches(), options());
  gg::Program contiguous(net.g, net.fetches(), options());
  strided.run({{net.X, xv}, {net.Y, y}});
  contiguous.run({{net.X, xc}, {net.Y, y}});
  const auto a = fetched(strided, net.fetches()), b = fetched(contiguous, net.fetches());
  for (std::size_t i = 0; i < a.size(); ++i) {
    INFO("fetch " << net.fetches()[i].name());
    CHECK(rel_diff(a[i], b[i]) <= 1e-14);
  }
}

TEST_CASE("strided feeds to an input read by elementwise ops give the same results as contiguous copies",
          "[program][feed][strided]") {
  gg::Graph g(gg::f64);
  Value X = g.input("X", {4, gg::dyn});
  Value W = g.param("W", {4, 1}, gg::uniform(-1.0, 1.0));
  Value b = g.param("b", {4, 1}, gg::uniform(-1.0, 1.0));
  Value out = gg::tanh(X * W + b) + gg::exp(X);
  Value loss = gg::sum(out * out);
  const auto grads = gg::gradients(loss, {W, b, X});
  std::vector<Value> fetch = {loss, out};
  fetch.insert(fetch.end(), grads.begin(), grads.end());
  const gg::Tensor big = random_tensor(gg::f64, {4, 50}, -1, 1, 10), t = random_tensor(gg::f64, {12, 4}, -1, 1, 11);
  const gg::TensorView slice = big.view().slice_trailing(5, 17), transposed = t.view().transposed();  // both {4, 12}
  for (const gg::TensorView& view : {slice, transposed}) {
    REQUIRE_FALSE(view.is_contiguous());
    const gg::Tensor copy = gg::Tensor::copy_of(view);
    gg::Program strided(g, fetch, options());
    gg::Program contiguous(g, fetch, options());
    strided.run({{X, view}});
    contiguous.run({{X, copy}});
    CHECK(fetched(strided, fetch) == fetched(contiguous, fetch));
    // Run again with the contiguous copy in the same program: the plan handles both.
    strided.run({{X, copy}});
    CHECK(fetched(strided, fetch) == fetched(contiguous, fetch));
  }
}

// ---- parameters and initialisers ----------------------------------------------------------------

TEST_CASE("parameters can be read and written by name or by handle", "[program][params]") {
  gg::Graph g(gg::f32);
  Value x = g.input("x", {3});
  Value w = g.param("w", {3}, gg::uniform(-1.0, 1.0));
  Value y = x * w;
  gg::Program p(g, {y}, options());
  CHECK(p.param_names() == std::vector<std::string>{"w"});
  const gg::Tensor v = gg::Tensor::from<float>({3}, {0.5f, -2.0f, 4.0f});
  p.set_param("w", v);
  CHECK(p.param("w").dtype == gg::f32);
  CHECK(values(p.param("w")) == values(v));
  CHECK(values(p.param(w)) == values(v));
  const gg::Tensor xv = gg::Tensor::from<float>({3}, {1.0f, 2.0f, 3.0f});
  p.run({{x, xv}});
  CHECK(values(p.get(y)) == std::vector<double>{0.5, -4.0, 12.0});
  // By handle, from a strided view (the first column of a {3, 2} tensor).
  const gg::Tensor wide = gg::Tensor::from<float>({3, 2}, {1.0f, 9.0f, 2.0f, 9.0f, 3.0f, 9.0f});
  gg::Strides column;
  column[0] = 2;
  p.set_param(w, gg::TensorView(wide.data(), gg::f32, {3}, column));
  p.run({{x, xv}});
  CHECK(values(p.get(y)) == std::vector<double>{1.0, 4.0, 9.0});
  // The view is writable storage.
  p.param("w").set({1}, 10.0);
  p.run({{x, xv}});
  CHECK(p.get(y).at({1}) == 20.0);
  CHECK_THAT(message_of<std::invalid_argument>([&] { p.param("nope"); }), Contains("'nope'"));
  const gg::Tensor wrong(gg::f32, {4});
  CHECK_THAT(message_of<std::invalid_argument>([&] { p.set_param("w", wrong); }),
             Contains("'w'") && Contains("{3}") && Contains("{4}"));
  CHECK_THROWS_AS(p.param(x), std::invalid_argument);  // an input is not a parameter
}

TEST_CASE("set_param rejects another dtype, as run does, and says how to convert", "[program][params]") {
  gg::Graph g(gg::f32);
  Value w = g.param("w", {3});
  gg::Program p(g, {w}, options());
  const gg::Tensor v = gg::Tensor::from<double>({3}, {0.5, -2.0, 4.0});
  const std::string msg = message_of<std::invalid_argument>([&] { p.set_param("w", v); });
  CHECK_THAT(msg, Contains("'w'") && Contains("float32") && Contains("float64") && Contains("copy_of"));
  p.set_param(w, gg::Tensor::copy_of(v, gg::f32));
  CHECK(values(p.param(w)) == values(v));
}

TEST_CASE("initialisers are deterministic for a seed and differ between seeds", "[program][init]") {
  Mlp net(gg::f32, 20, 7, 5);
  gg::Program a(net.g, net.fetches(), options(true, 11));
  gg::Program b(net.g, net.fetches(), options(true, 11));
  gg::Program c(net.g, net.fetches(), options(true, 12));
  for (const std::string& name : a.param_names()) {
    INFO("param " << name);
    CHECK(values(a.param(name)) == values(b.param(name)));
    CHECK(values(a.param(name)) != values(c.param(name)));
  }
  // Re-initialising with the same seed restores the initial values.
  const auto w1 = values(a.param("W1"));
  a.set_param("W1", gg::Tensor(gg::f32, {7, 20}));
  gg::Generator rng(gg::RngKind::standard, 11);
  a.init_params(rng);
  CHECK(values(a.param("W1")) == w1);
}

TEST_CASE("He-normal weights have mean zero and standard deviation sqrt(2 / fan_in)", "[program][init]") {
  const std::int64_t fan_in = GENERATE(400, 50);
  gg::Graph g(gg::f64);
  // 200,000 draws each: the sample standard deviation is within 0.2% (one sigma) of the true one.
  Value W = g.param("W", {200000 / fan_in, fan_in}, gg::he_normal());
  Value V = g.param("V", {500, 400}, gg::he_normal(fan_in));  // explicit fan-in
  gg::Program p(g, {W, V}, options());
  for (const char* name : {"W", "V"}) {
    INFO("param " << name << ", fan_in " << fan_in);
    const auto w = values(p.param(name));
    double mean = 0, sq = 0;
    for (double e : w) mean += e;
    mean /= static_cast<double>(w.size());
    for (double e : w) sq += (e - mean) * (e - mean);
    const double sd = std::sqrt(sq / static_cast<double>(w.size())), want = std::sqrt(2.0 / static_cast<double>(fan_in));
    CHECK(std::fabs(mean) <= 4 * want / std::sqrt(static_cast<double>(w.size())));
    CHECK_THAT(sd, Catch::Matchers::WithinRel(want, 0.02));
  }
}

TEST_CASE("uniform weights lie in their range and fill it", "[program][init]") {
  gg::Graph g(gg::f64);
  Value W = g.param("W", {100, 100}, gg::uniform(-0.3, 0.7));
  gg::Program p(g, {W}, options());
  const auto w = values(p.param("W"));
  const auto [lo, hi] = std::minmax_element(w.begin(), w.end());
  CHECK(*lo >= -0.3);
  CHECK(*hi < 0.7);
  CHECK(*lo < -0.29);
  CHECK(*hi > 0.69);
}

// ---- optimizers --------------------------------------------------------------------------------

TEST_CASE("the SGD update changes each parameter by exactly -lr times the gradient fetched in the same run",
          "[program][optim]") {
  Mlp net(gg::f64, 20, 7, 5);
  const double lr = 0.1;
  const auto ups = gg::sgd(net.params, net.grads, {lr, 0.0, 0.0});
  std::vector<Value> fetch = net.fetches();
  fetch.insert(fetch.end(), ups.begin(), ups.end());
  gg::Program train(net.g, fetch, options());
  gg::Program eval(net.g, net.fetches(), options());  // same seed: same initial parameters
  const gg::Tensor x = random_tensor(gg::f64, {20, 8}, 0, 1, 20), y = one_hot(gg::f64, 5, 8, 21);
  eval.run({{net.X, x}, {net.Y, y}});
  std::vector<std::vector<double>> before;
  for (const Value& p : net.params) before.push_back(values(train.param(p.name())));
  train.run({{net.X, x}, {net.Y, y}});
  // Every reader of a parameter ran before its update: the loss and gradients are the pre-update ones.
  CHECK(train.scalar(net.loss) == eval.scalar(net.loss));
  for (std::size_t k = 0; k < net.params.size(); ++k) {
    INFO("param " << net.params[k].name());
    const auto grad = values(train.get(net.grads[k]));
    CHECK(grad == values(eval.get(net.grads[k])));
    const auto after = values(train.param(net.params[k].name()));
    bool changed = false;
    for (std::size_t i = 0; i < after.size(); ++i) {
      CHECK_THAT(after[i], Catch::Matchers::WithinULP(before[k][i] - lr * grad[i], 1));
      changed = changed || after[i] != before[k][i];
    }
    CHECK(changed);
  }
  // The next run's loss is evaluated at the updated parameters.
  gg::Program check(net.g, {net.loss}, options(true, 999));
  for (const Value& p : net.params) check.set_param(p.name(), train.param(p.name()));
  check.run({{net.X, x}, {net.Y, y}});
  train.run({{net.X, x}, {net.Y, y}});
  CHECK(train.scalar(net.loss) == check.scalar(net.loss));
  CHECK(train.scalar(net.loss) < eval.scalar(net.loss));
}

namespace {

// loss = 0.5 sum(x w^2): d loss / d w = x w, so the second step's gradient depends on the first step.
struct Quadratic {
  gg::Graph g{gg::f64};
  Value x = g.input("x", {4});
  Value w = g.param("w", {4}, gg::uniform(-1.0, 1.0));
  Value loss = gg::sum(x * w * w) * 0.5;
  Value grad = gg::gradients(loss, {w})[0];
  gg::Tensor xv = gg::Tensor::from<double>({4}, {0.5, -1.5, 2.0, 3.0});
};

}  // namespace

TEST_CASE("the momentum update matches a hand computation over two steps", "[program][optim]") {
  Quadratic q;
  const double lr = 0.05, mu = 0.9, wd = 0.01;
  const auto ups = gg::sgd({q.w}, {q.grad}, {lr, mu, wd});
  gg::Program p(q.g, {q.loss, q.grad, ups[0]}, options());
  CHECK(p.state_names() == std::vector<std::string>{"w/velocity"});
  std::vector<double> w = values(p.param("w")), v(4, 0.0);
  const auto x = values(q.xv);
  for (int step = 1; step <= 2; ++step) {
    INFO("step " << step);
    p.run({{q.x, q.xv}});
    for (std::size_t i = 0; i < 4; ++i) {
      const double g = x[i] * w[i];
      v[i] = mu * v[i] + (g + wd * w[i]);
      w[i] -= lr * v[i];
    }
    const auto got_w = values(p.param("w")), got_v = values(p.param("w/velocity"));
    for (std::size_t i = 0; i < 4; ++i) {
      CHECK_THAT(got_w[i], Catch::Matchers::WithinRel(w[i], 1e-14));
      CHECK_THAT(got_v[i], Catch::Matchers::WithinRel(v[i], 1e-14));
    }
  }
}

TEST_CASE("the Adam update matches a hand computation over two steps", "[program][optim]") {
  Quadratic q;
  gg::AdamOptions o;
  o.lr = 0.01;
  o.beta1 = 0.8;
  o.beta2 = 0.95;
  o.eps = 1e-6;
  o.weight_decay = 0.1;
  const auto ups = gg::adam({q.w}, {q.grad}, o);
  gg::Program p(q.g, {q.loss, q.grad, ups[0]}, options());
  std::vector<double> w = values(p.param("w")), m(4, 0.0), v(4, 0.0);
  const auto x = values(q.xv);
  for (int t = 1; t <= 2; ++t) {
    INFO("step " << t);
    p.run({{q.x, q.xv}});
    for (std::size_t i = 0; i < 4; ++i) {
      const double g = x[i] * w[i];
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
      const double mh = m[i] / (1 - std::pow(o.beta1, t)), vh = v[i] / (1 - std::pow(o.beta2, t));
      w[i] = w[i] * (1 - o.lr * o.weight_decay) - o.lr * mh / (std::sqrt(vh) + o.eps);
    }
    const auto got_w = values(p.param("w")), got_m = values(p.param("w/adam_m")), got_v = values(p.param("w/adam_v"));
    CHECK(p.param("w/adam_t").flat(0) == static_cast<double>(t));
    for (std::size_t i = 0; i < 4; ++i) {
      CHECK_THAT(got_w[i], Catch::Matchers::WithinRel(w[i], 1e-13));
      CHECK_THAT(got_m[i], Catch::Matchers::WithinRel(m[i], 1e-13));
      CHECK_THAT(got_v[i], Catch::Matchers::WithinRel(v[i], 1e-13));
    }
  }
}

TEST_CASE("the Nesterov momentum update matches a hand computation over two steps", "[program][optim]") {
  Quadratic q;
  const double lr = 0.05, mu = 0.9, wd = 0.01;
  const auto ups = gg::sgd({q.w}, {q.grad}, {.lr = lr, .momentum = mu, .weight_decay = wd, .nesterov = true});
  gg::Program p(q.g, {q.loss, q.grad, ups[0]}, options());
  std::vector<double> w = values(p.param("w")), v(4, 0.0);
  const auto x = values(q.xv);
  for (int step = 1; step <= 2; ++step) {
    INFO("step " << step);
    p.run({{q.x, q.xv}});
    for (std::size_t i = 0; i < 4; ++i) {
      const double d = x[i] * w[i] + wd * w[i];
      v[i] = mu * v[i] + d;
      w[i] -= lr * (d + mu * v[i]);
    }
    const auto got_w = values(p.param("w")), got_v = values(p.param("w/velocity"));
    for (std::size_t i = 0; i < 4; ++i) {
      CHECK_THAT(got_w[i], Catch::Matchers::WithinRel(w[i], 1e-14));
      CHECK_THAT(got_v[i], Catch::Matchers::WithinRel(v[i], 1e-14));
    }
  }
}

TEST_CASE("Adam with coupled L2 adds l2 p to the gradient before the moments", "[program][optim]") {
  Quadratic q;
  gg::AdamOptions o;
  o.lr = 0.01;
  o.l2 = 0.2;
  const auto ups = gg::adam({q.w}, {q.grad}, o);
  gg::Program p(q.g, {q.loss, q.grad, ups[0]}, options());
  std::vector<double> w = values(p.param("w")), m(4, 0.0), v(4, 0.0);
  const auto x = values(q.xv);
  for (int t = 1; t <= 2; ++t) {
    INFO("step " << t);
    p.run({{q.x, q.xv}});
    for (std::size_t i = 0; i < 4; ++i) {
      const double g = x[i] * w[i] + o.l2 * w[i];
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
      const double mh = m[i] / (1 - std::pow(o.beta1, t)), vh = v[i] / (1 - std::pow(o.beta2, t));
      w[i] -= o.lr * mh / (std::sqrt(vh) + o.eps);
    }
    const auto got_w = values(p.param("w"));
    for (std::size_t i = 0; i < 4; ++i) CHECK_THAT(got_w[i], Catch::Matchers::WithinRel(w[i], 1e-13));
  }
}

// ---- fusion ------------------------------------------------------------------------------------

TEST_CASE("fusion makes add_relu and one softmax-cross-entropy kernel for loss and gradient, with bitwise equal results",
          "[program][fuse]") {
  const gg::DType dt = GENERATE(gg::f32, gg::f64);
  INFO(gg::dtype_name(dt));
  Mlp net(dt, 50, 16, 6);
  gg::Program fused(net.g, net.fetches(), options(true));
  gg::Program plain(net.g, net.fetches(), options(false));
  const auto fs = fused.schedule(12), ps = plain.schedule(12);
  CHECK(has_step(fs, "add_relu"));
  CHECK_FALSE(has_step(fs, "relu"));
  CHECK_FALSE(has_step(ps, "add_relu"));
  CHECK(has_step(ps, "relu"));
  CHECK(has_step(fs, "softmax_cross_entropy_fused"));
  CHECK_FALSE(has_step(fs, "softmax_cross_entropy"));
  CHECK_FALSE(has_step(fs, "softmax_cross_entropy_grad"));
  CHECK(has_step(ps, "softmax_cross_entropy"));
  CHECK(has_step(ps, "softmax_cross_entropy_grad"));
  CHECK(fused.num_steps(12) < plain.num_steps(12));
  const gg::Tensor x = random_tensor(dt, {50, 12}, 0, 1, 30), y = one_hot(dt, 6, 12, 31);
  fused.run({{net.X, x}, {net.Y, y}});
  plain.run({{net.X, x}, {net.Y, y}});
  CHECK(fetched(fused, net.fetches()) == fetched(plain, net.fetches()));
}

namespace {
int count_steps(const std::vector<std::string>& schedule, const std::string& op) {
  return static_cast<int>(std::count_if(schedule.begin(), schedule.end(),
                                        [&](const std::string& s) { return s.rfind(op + " ", 0) == 0; }));
}
// The value of the graph's only node of op `op` (output 0).
Value only_node(gg::Graph& g, const std::string& op) {
  int id = -1;
  for (int i = 0; i < g.size(); ++i)
    if (g.node(i).op_name() == op) {
      REQUIRE(id < 0);
      id = i;
    }
  REQUIRE(id >= 0);
  return Value{&g, id, 0};
}
}  // namespace

// The ReLU mask and db1 in one pass: relu_grad_sum_to sums in sum_to's order (each row in blocks
// of 256 in T, the block sums in double), so both outputs are bitwise the unfused pair's, and
// (one thread per sum) independent of the thread count.
TEST_CASE("fusion makes the ReLU mask and the bias gradient summed from it one kernel (relu_grad_sum_to), bitwise equal",
          "[program][fuse]") {
  const gg::DType dt = GENERATE(gg::f32, gg::f64);
  const std::int64_t m = GENERATE(1, 37, 5000);  // 1: nothing left to sum (a copy); 5000: both threads work
  INFO(gg::dtype_name(dt) << ", batch " << m);
  Mlp net(dt, 20, 64, 6);
  const Value dZ1 = only_node(net.g, "relu_grad");
  for (const bool fetch_dz1 : {false, true}) {  // fetched, dZ1 cannot be computed in place of its operand
    INFO((fetch_dz1 ? "dZ1 fetched" : "dZ1 not fetched"));
    std::vector<Value> fetches = net.fetches();
    if (fetch_dz1) fetches.push_back(dZ1);
    gg::CompileOptions fo = options(true), po = options(false), f1 = options(true);
    fo.threads = po.threads = 2;
    gg::Program fused(net.g, fetches, fo), plain(net.g, fetches, po), fused1(net.g, fetches, f1);
    const auto fs = fused.schedule(m), ps = plain.schedule(m);
    CHECK(has_step(fs, "relu_grad_sum_to"));
    CHECK_FALSE(has_step(fs, "relu_grad"));
    CHECK(has_step(ps, "relu_grad"));
    CHECK_FALSE(has_step(ps, "relu_grad_sum_to"));
    CHECK(count_steps(fs, "sum_to") == count_steps(ps, "sum_to") - 1);  // db2's remains
    const gg::Tensor x = random_tensor(dt, {20, m}, -1, 1, 50), y = one_hot(dt, 6, m, 51);
    fused.run({{net.X, x}, {net.Y, y}});
    plain.run({{net.X, x}, {net.Y, y}});
    fused1.run({{net.X, x}, {net.Y, y}});
    const auto got = fetched(fused, fetches);
    CHECK(got == fetched(plain, fetches));
    CHECK(got == fetched(fused1, fetches));
    const auto db1 = values(fused.get(net.grads[1]));
    CHECK(std::count(db1.begin(), db1.end(), 0.0) < 64);  // the mask left something to sum
  }
}

TEST_CASE("a bias gradient over rows ({batch, features} -> {features}) keeps relu_grad and sum_to apart", "[program][fuse]") {
  // Column sums run one thread per 64 features: fused, the mask would lose the second thread.
  gg::Graph g(gg::f32);
  Value X = g.input("X", {gg::dyn, 12});
  Value R = g.input("R", {gg::dyn, 70});
  Value W = g.param("W", {12, 70}, gg::uniform(-1.0, 1.0));
  Value b = g.param("b", {70}, gg::uniform(-0.5, 0.5));
  Value loss = gg::sum(gg::relu(gg::matmul(X, W) + b) * R);
  const auto grads = gg::gradients(loss, {W, b});
  gg::Program fused(g, {loss, grads[0], grads[1]}, options(true));
  const auto fs = fused.schedule(30);
  CHECK(has_step(fs, "relu_grad"));
  CHECK(has_step(fs, "sum_to"));
  CHECK_FALSE(has_step(fs, "relu_grad_sum_to"));
}

TEST_CASE("a scale read only by GEMMs is folded into their alpha, with results within 1e-12", "[program][fuse]") {
  gg::Graph g(gg::f64);
  Value X = g.input("X", {5, gg::dyn});
  Value R = g.input("R", {3, gg::dyn});
  Value W = g.param("W", {3, 5}, gg::uniform(-1.0, 1.0));
  Value S = gg::scale(X, 1.0 / 255.0);              // read by the forward GEMM and by dW's GEMM
  Value Z = gg::scale(gg::matmul(W, S), 0.5);       // a GEMM read only by a scale
  Value loss = gg::sum(Z * R);
  const Value dW = gg::gradients(loss, {W})[0];    // its scale(0.5) feeds a GEMM only
  gg::Program fused(g, {loss, dW}, options(true));
  gg::Program plain(g, {loss, dW}, options(false));
  CHECK_FALSE(has_step(fused.schedule(7), "scale"));
  CHECK(has_step(plain.schedule(7), "scale"));
  const gg::Tensor x = random_tensor(gg::f64, {5, 7}, 0, 255, 32), r = random_tensor(gg::f64, {3, 7}, -1, 1, 33);
  fused.run({{X, x}, {R, r}});
  plain.run({{X, x}, {R, r}});
  CHECK_THAT(fused.scalar(loss), Catch::Matchers::WithinRel(plain.scalar(loss), 1e-12));
  CHECK(rel_diff(values(fused.get(dW)), values(plain.get(dW))) <= 1e-12);
}

TEST_CASE("a fetched scale is not folded away", "[program][fuse]") {
  gg::Graph g(gg::f64);
  Value X = g.input("X", {5, 2});
  Value W = g.param("W", {3, 5}, gg::uniform(-1.0, 1.0));
  Value S = gg::scale(X, 2.0);
  Value Z = gg::matmul(W, S);
  gg::Program p(g, {S, Z}, options(true));
  CHECK(has_step(p.schedule(0), "scale"));
  const gg::Tensor x = random_tensor(gg::f64, {5, 2}, -1, 1, 34);
  p.run({{X, x}});
  CHECK(p.get(S).at({1, 1}) == 2.0 * x.at({1, 1}));
}

// ---- shared parameters -------------------------------------------------------------------------

TEST_CASE("a program compiled with share_params_with reads and writes the other program's parameters",
          "[program][share]") {
  Mlp net(gg::f64, 20, 7, 5);
  const auto ups = gg::sgd(net.params, net.grads, {0.5, 0.0, 0.0});
  std::vector<Value> fetch = {net.loss};
  fetch.insert(fetch.end(), ups.begin(), ups.end());
  gg::Program train(net.g, fetch, options(true, 1));
  gg::CompileOptions eo = options(true, 2);  // a different seed: ignored, the storage is shared
  eo.share_params_with = &train;
  gg::Program eval(net.g, {net.loss}, eo);
  for (const std::string& name : train.param_names()) CHECK(eval.param(name).data == train.param(name).data);

  const gg::Tensor x = random_tensor(gg::f64, {20, 8}, 0, 1, 40), y = one_hot(gg::f64, 5, 8, 41);
  eval.run({{net.X, x}, {net.Y, y}});
  const double initial = eval.scalar(net.loss);
  train.run({{net.X, x}, {net.Y, y}});
  CHECK(train.scalar(net.loss) == initial);
  eval.run({{net.X, x}, {net.Y, y}});  // sees the update
  const double updated = eval.scalar(net.loss);
  CHECK(updated < initial);
  train.run({{net.X, x}, {net.Y, y}});
  CHECK(train.scalar(net.loss) == updated);
  // Writes through one program are seen by the other.
  eval.set_param("b2", gg::Tensor::from<double>({5, 1}, {1, 2, 3, 4, 5}));
  CHECK(train.param("b2").at({4, 0}) == 5.0);

  gg::Graph other(gg::f64);
  Value w = other.param("w", {2});
  gg::CompileOptions bad = options();
  bad.share_params_with = &train;
  CHECK_THROWS_AS(gg::Program(other, {w}, bad), gg::GraphError);
}

// ---- the planner reads only what an op declares --------------------------------------------------
// These ops exist only in this file: the planner must handle them from their OpDef alone.

namespace {

struct Seen {
  void* workspace = nullptr;
  std::size_t bytes = 0;
} seen;

gg::detail::Outputs same_port(const gg::Graph& g, const gg::Node& n) { return gg::detail::operand(g, n, 0); }

// y = x^2, computed through a scratch buffer the op declares.
std::size_t scratch_bytes(const gg::Node&, const Shape* in, int) { return static_cast<std::size_t>(in[0].numel()) * 8 + 100; }
void square_via_scratch(const gg::detail::KernelArgs& k) {
  seen = {k.workspace, k.workspace_bytes};
  auto* tmp = static_cast<double*>(k.workspace);
  const double* x = k.in[0].ptr<double>();
  for (std::int64_t i = 0; i < k.in[0].numel(); ++i) tmp[i] = x[i] * x[i];
  for (std::int64_t i = 0; i < k.out[0].numel(); ++i) k.out[0].ptr<double>()[i] = tmp[i];
}
const gg::detail::OpDef square_op = {.name = "test_square", .arity = 1, .flags = gg::detail::kNonDifferentiable,
                                     .kernels = {.f64 = square_via_scratch}, .infer = same_port, .workspace = scratch_bytes};

// Two outputs: the minimum and the maximum of a vector.
gg::detail::Outputs min_max_ports(const gg::Graph& g, const gg::Node& n) {
  const gg::Port& x = gg::detail::operand(g, n, 0);
  return gg::detail::Outputs(gg::Port{x.dtype, Shape{}}, gg::Port{x.dtype, Shape{}});
}
void min_max_kernel(const gg::detail::KernelArgs& k) {
  const double* x = k.in[0].ptr<double>();
  double lo = x[0], hi = x[0];
  for (std::int64_t i = 1; i < k.in[0].numel(); ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  k.out[0].ptr<double>()[0] = lo;
  k.out[1].ptr<double>()[0] = hi;
}
const gg::detail::OpDef min_max_op = {.name = "test_min_max", .arity = 1, .outputs = 2, .flags = gg::detail::kNonDifferentiable,
                                      .kernels = {.f64 = min_max_kernel}, .infer = min_max_ports};

// Two outputs of the operand's shape, the second written first: -1 everywhere (a mask, say), then
// y = 2x. Whatever buffer the second output gets must not be one the step still reads.
gg::detail::Outputs two_like_operand(const gg::Graph& g, const gg::Node& n) {
  const gg::Port& x = gg::detail::operand(g, n, 0);
  return gg::detail::Outputs(x, x);
}
void twice_and_mark_kernel(const gg::detail::KernelArgs& k) {
  for (std::int64_t i = 0; i < k.out[1].numel(); ++i) k.out[1].ptr<double>()[i] = -1;
  for (std::int64_t i = 0; i < k.out[0].numel(); ++i) k.out[0].ptr<double>()[i] = 2 * k.in[0].ptr<double>()[i];
}
const gg::detail::OpDef twice_and_mark_op = {.name = "test_twice_and_mark", .arity = 1, .outputs = 2,
                                             .flags = gg::detail::kNonDifferentiable,
                                             .kernels = {.f64 = twice_and_mark_kernel}, .infer = two_like_operand};

// Doubles its operand in place and outputs it (what an all-reduce over two identical ranks does).
void double_kernel(const gg::detail::KernelArgs& k) {
  double* x = k.in[0].ptr<double>();
  for (std::int64_t i = 0; i < k.in[0].numel(); ++i) x[i] *= 2;
}
const gg::detail::OpDef double_op = {.name = "test_double_in_place", .arity = 1, .flags = gg::detail::kNonDifferentiable,
                                     .writes = 0b1, .alias = 0, .kernels = {.f64 = double_kernel}, .infer = same_port};

}  // namespace

TEST_CASE("an op's declared workspace is planned and handed to its kernel", "[program][plan][agnostic]") {
  gg::Graph g(gg::f64);
  Value x = g.input("x", {gg::dyn});
  Value y = gg::detail::make(square_op, {gg::exp(x)}) + x;
  gg::Program p(g, {y}, options());
  const gg::Tensor xv = gg::Tensor::from<double>({3}, {1, 2, 3});
  p.run({{x, xv}});
  for (std::int64_t i = 0; i < 3; ++i) CHECK(p.get(y).at({i}) == std::exp(xv.at({i})) * std::exp(xv.at({i})) + xv.at({i}));
  CHECK(seen.workspace != nullptr);
  CHECK(seen.bytes == 3 * 8 + 100);
  CHECK(p.planned_bytes(3) >= 3 * 8 + 100);
  p.run({{x, random_tensor(gg::f64, {1000}, 0, 1, 4)}});
  CHECK(seen.bytes == 1000 * 8 + 100);
  CHECK(p.planned_bytes(1000) >= 1000 * 8 + 100 + 1000 * 8);
}

TEST_CASE("an op with two outputs has both planned, fetched and read by other ops", "[program][plan][agnostic]") {
  gg::Graph g(gg::f64);
  Value x = g.input("x", {5});
  Value lo = gg::detail::make(min_max_op, {x});
  Value hi{lo.graph, lo.id, 1};
  CHECK(hi.shape() == Shape{});
  CHECK(hi.name() == lo.node().name + ":1");
  Value range = hi - lo;
  gg::Program p(g, {lo, hi, range}, options());
  p.run({{x, gg::Tensor::from<double>({5}, {3, -1, 4, 1, 5})}});
  CHECK(p.scalar(lo) == -1.0);
  CHECK(p.scalar(hi) == 5.0);
  CHECK(p.scalar(range) == 6.0);
}

TEST_CASE("an output nobody reads still has memory of its own while its op's kernel writes it", "[program][plan][agnostic]") {
  gg::Graph g(gg::f64);
  Value x = g.param("x", {64}, gg::uniform(-1.0, 1.0));
  Value e = gg::exp(x);  // planned memory, read only by the two-output op: its step still reads it
  Value y = gg::detail::make(twice_and_mark_op, {e});
  Value total = gg::sum(y);  // y's output 1 has no reader and is not fetched
  gg::Program p(g, {total}, options());
  p.run({});
  double expected = 0;
  for (std::int64_t i = 0; i < 64; ++i) expected += 2 * std::exp(p.param(x).at({i}));
  CHECK_THAT(p.scalar(total), Catch::Matchers::WithinRel(expected, 1e-12));
}

TEST_CASE("a max_pool2d whose indices nobody reads computes the values of one whose indices are fetched",
          "[program][plan][pool]") {
  gg::Graph g(gg::f64);
  Value x = g.input("x", {gg::dyn, 3, 6, 6});
  Value pooled = gg::max_pool2d(gg::exp(x), 3, 1, 1);  // inference: only the values are read
  Value indices{pooled.graph, pooled.id, 1};
  const gg::Tensor xv = random_tensor(gg::f64, {2, 3, 6, 6}, -1, 1, 6);
  gg::Program values_only(g, {pooled}, options());
  gg::Program both(g, {pooled, indices}, options());
  values_only.run({{x, xv}});
  both.run({{x, xv}});
  CHECK(values(values_only.get(pooled)) == values(both.get(pooled)));
  // And each value is its window's maximum.
  for (std::int64_t c = 0; c < 6; ++c)
    for (std::int64_t h = 0; h < 6; ++h)
      for (std::int64_t w = 0; w < 6; ++w) {
        double m = -1;
        for (std::int64_t i = std::max<std::int64_t>(h - 1, 0); i < std::min<std::int64_t>(h + 2, 6); ++i)
          for (std::int64_t j = std::max<std::int64_t>(w - 1, 0); j < std::min<std::int64_t>(w + 2, 6); ++j)
            m = std::max(m, std::exp(xv.at({c / 3, c % 3, i, j})));
        CHECK(values_only.get(pooled).at({c / 3, c % 3, h, w}) == m);
      }
}

TEST_CASE("an op that writes an operand in place runs after every other reader of it", "[program][plan][agnostic]") {
  gg::Graph g(gg::f64);
  Value w = g.param("w", {3}, gg::constant(1.0));
  Value c = g.input("c", {3});
  Value loss = gg::sum(w * c);
  const Value grad = gg::gradients(loss, {w})[0];  // = c
  Value grad_sum = gg::sum(grad);                 // reads the gradient before it is doubled
  Value doubled = gg::detail::make(double_op, {grad});
  const auto up = gg::sgd({w}, {doubled}, {.lr = 0.5});
  for (bool fuse : {true, false}) {
    INFO("fuse " << fuse);
    gg::Program p(g, {grad_sum, up[0]}, options(fuse));
    p.run({{c, gg::Tensor::from<double>({3}, {1, 2, 3})}});
    CHECK(p.scalar(grad_sum) == 6.0);
    CHECK(values(p.param(w)) == std::vector<double>{0.0, -1.0, -2.0});  // 1 - 0.5 * 2c
  }
  // Two ops writing one value are refused at compile time.
  Value again = gg::detail::make(double_op, {grad});
  CHECK_THROWS_AS(gg::Program(g, {doubled, again}, options()), gg::GraphError);
}

TEST_CASE("a strided slice read by an op that needs contiguous memory is copied once per run", "[program][plan][agnostic]") {
  gg::Graph g(gg::f64);
  Value x = g.param("x", {4, 6}, gg::uniform(-1.0, 1.0));
  Value cols = gg::slice(gg::tanh(x), 1, 2, 5);  // {4, 3}, row stride 6: not contiguous
  Value rows = gg::slice(gg::tanh(x), 0, 1, 3);  // {2, 6}: contiguous, read in place
  Value e = gg::exp(cols);
  Value f = gg::exp(rows);
  gg::Program p(g, {e, f}, options());
  const auto sched = p.schedule(0);
  CHECK(std::count_if(sched.begin(), sched.end(), [](const std::string& s) { return s.rfind("slice ", 0) == 0; }) == 1);
  p.run({});
  for (std::int64_t i = 0; i < 4; ++i)
    for (std::int64_t j = 0; j < 3; ++j) CHECK(p.get(e).at({i, j}) == std::exp(std::tanh(p.param(x).at({i, j + 2}))));
  for (std::int64_t i = 0; i < 2; ++i)
    for (std::int64_t j = 0; j < 6; ++j) CHECK(p.get(f).at({i, j}) == std::exp(std::tanh(p.param(x).at({i + 1, j}))));
}
