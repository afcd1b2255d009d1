// Reverse mode as a graph transformation: what gradients() builds, what it leaves out, how it
// reports misuse, and how the resulting programs behave across dtypes and thread counts.
#include "support.hpp"

#include <gradgraph/gradgraph.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Catch::Matchers::Contains;
using gg::Shape;
using gg::Value;
using gg::test::Mlp;
using gg::test::message_of;
using gg::test::one_hot;
using gg::test::random_tensor;
using gg::test::rel_diff;
using gg::test::values;

int count_backward(const gg::Graph& g, const std::string& op) {
  int n = 0;
  for (int i = 0; i < g.size(); ++i)
    if (g.node(i).backward && g.node(i).op_name() == op) ++n;
  return n;
}


gg::CompileOptions options(int threads, bool fuse = true) {
  gg::CompileOptions o;
  o.threads = threads;
  o.fuse = fuse;
  o.seed = 5;
  return o;
}

}  // namespace

// ---- accumulation and broadcasting ------------------------------------------------------------

TEST_CASE("fan-out adds gradients: b = a + a, c = b + b gives dc/da = 4", "[autodiff]") {
  gg::Graph g(gg::f64);
  Value a = g.param("a", {}, gg::constant(1.5));
  Value b = a + a;
  Value c = b + b;
  Value da = gg::gradients(c, {a})[0];
  REQUIRE(da.shape() == Shape{});
  gg::Program p(g, {c, da});
  p.run({});
  CHECK(p.scalar(c) == 6.0);
  CHECK(p.scalar(da) == 4.0);
}

TEST_CASE("a value read by three different ops gets the sum of the three contributions", "[autodiff]") {
  gg::Graph g(gg::f64);
  Value x = g.param("x", {5}, gg::uniform(-1.5, 1.5));
  // exp(x), x * x (x read twice by one op) and tanh(x).
  Value y = gg::sum(gg::exp(x)) + gg::sum(x * x) + gg::sum(gg::tanh(x));
  Value dx = gg::gradients(y, {x})[0];
  gg::Program p(g, {dx});
  p.run({});
  const std::vector<double> xs = values(p.param("x")), got = values(p.get(dx));
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double t = std::tanh(xs[i]);
    CHECK_THAT(got[i], Catch::Matchers::WithinRel(std::exp(xs[i]) + 2 * xs[i] + (1 - t * t), 1e-14));
  }
}

TEST_CASE("a bias broadcast along the examples gets a gradient of its own shape equal to the sums over examples",
          "[autodiff][broadcast]") {
  gg::Graph g(gg::f64);
  Value X = g.input("X", {3, gg::dyn});
  Value G = g.input("G", {3, gg::dyn});
  Value col_bias = g.param("col_bias", {3, 1}, gg::uniform(-1.0, 1.0));  // features x examples
  Value row_bias = g.param("row_bias", {1}, gg::uniform(-1.0, 1.0));
  Value loss = gg::sum((X + col_bias + row_bias) * G);
  const auto grads = gg::gradients(loss, {col_bias, row_bias});
  CHECK(grads[0].shape() == Shape{3, 1});
  CHECK(grads[1].shape() == Shape{1});
  gg::Program p(g, {grads});
  const gg::Tensor x = random_tensor(gg::f64, {3, 5}, -1, 1, 1), gt = random_tensor(gg::f64, {3, 5}, -1, 1, 2);
  p.run({{X, x}, {G, gt}});
  double total = 0;
  for (std::int64_t i = 0; i < 3; ++i) {
    double row = 0;
    for (std::int64_t j = 0; j < 5; ++j) row += gt.at({i, j});
    total += row;
    CHECK_THAT(p.get(grads[0]).at({i, 0}), Catch::Matchers::WithinRel(row, 1e-14));
  }
  CHECK_THAT(p.get(grads[1]).at({0}), Catch::Matchers::WithinRel(total, 1e-14));
}

TEST_CASE("a bias broadcast over a batch-first layout gets the column sums of the incoming gradient",
          "[autodiff][broadcast]") {
  gg::Graph g(gg::f64);
  Value X = g.input("X", {gg::dyn, 4});
  Value G = g.input("G", {gg::dyn, 4});
  Value b = g.param("b", {4}, gg::uniform(-1.0, 1.0));
  Value db = gg::gradients(gg::sum((X + b) * G), {b})[0];
  CHECK(db.shape() == Shape{4});
  gg::Program p(g, {db});
  const gg::Tensor x = random_tensor(gg::f64, {6, 4}, -1, 1, 3), gt = random_tensor(gg::f64, {6, 4}, -1, 1, 4);
  p.run({{X, x}, {G, gt}});
  for (std::int64_t j = 0; j < 4; ++j) {
    double col = 0;
    for (std::int64_t i = 0; i < 6; ++i) col += gt.at({i, j});
    CHECK_THAT(p.get(db).at({j}), Catch::Matchers::WithinRel(col, 1e-14));
  }
}

// ---- pruning -----------------------------------------------------------------------------------

TEST_CASE("gradients w.r.t. the parameters build nothing for the input X", "[autodiff][pruning]") {
  Mlp net(gg::f32);
  const int before = net.g.size();
  net.differentiate();
  REQUIRE(net.g.size() > before);
  for (int i = before; i < net.g.size(); ++i) {
    const gg::Node& n = net.g.node(i);
    INFO("backward node " << n.name << " " << gg::to_string(n.out().shape));
    CHECK(n.backward);
    CHECK(n.out().shape != net.X.shape());  // no {784, dyn} gradient
  }
  // dW2 = dZ2 A1^T, dA1 = W2^T dZ2, dW1 = dZ1 X^T: three GEMMs, none of them X's gradient.
  CHECK(count_backward(net.g, "matmul") == 3);
}

TEST_CASE("gradients w.r.t. one parameter build nothing for the others", "[autodiff][pruning]") {
  Mlp net(gg::f32);
  const Value dW2 = gg::gradients(net.loss, {net.W2})[0];
  CHECK(dW2.shape() == net.W2.shape());
  CHECK(count_backward(net.g, "matmul") == 1);  // dZ2 A1^T only: nothing flows into the first layer
  CHECK(count_backward(net.g, "relu_grad") == 0);
}

TEST_CASE("a branch of the loss that depends on no differentiated value adds no backward nodes",
          "[autodiff][pruning]") {
  auto backward_nodes = [](bool with_branch) {
    gg::Graph g(gg::f64);
    Value X = g.input("X", {3, 4});
    Value W = g.param("W", {3, 4}, gg::uniform(-1.0, 1.0));
    Value loss = gg::sum(gg::tanh(W) * X);
    if (with_branch) loss = loss + gg::sum(gg::exp(X) * X) + gg::mean(gg::softmax(X, 0));
    // A value computed from W that the loss does not use.
    Value unused = gg::sum(gg::sigmoid(W));
    (void)unused;
    gg::gradients(loss, {W});
    std::vector<std::string> ops;
    for (int i = 0; i < g.size(); ++i)
      if (g.node(i).backward) ops.push_back(g.node(i).op_name());
    return ops;
  };
  const auto plain = backward_nodes(false), branched = backward_nodes(true);
  CHECK(branched == plain);
  CHECK(std::find(branched.begin(), branched.end(), std::string("sigmoid")) == branched.end());
}

// ---- higher order ------------------------------------------------------------------------------

TEST_CASE("differentiating a gradient gives the second derivative of x^3", "[autodiff][second-order]") {
  gg::Graph g(gg::f64);
  Value x = g.param("x", {4}, gg::uniform(-2.0, 2.0));
  Value d1 = gg::gradients(gg::sum(gg::pow(x, 3.0)), {x})[0];
  Value d2 = gg::gradients(gg::sum(d1), {x})[0];
  gg::Program p(g, {d1, d2});
  p.run({});
  const std::vector<double> xs = values(p.param("x")), g1 = values(p.get(d1)), g2 = values(p.get(d2));
  for (std::size_t i = 0; i < xs.size(); ++i) {
    CHECK_THAT(g1[i], Catch::Matchers::WithinRel(3 * xs[i] * xs[i], 1e-14));
    CHECK_THAT(g2[i], Catch::Matchers::WithinRel(6 * xs[i], 1e-14));
  }
}

TEST_CASE("differentiating a gradient gives the second derivative of sum(tanh(x))", "[autodiff][second-order]") {
  gg::Graph g(gg::f64);
  Value x = g.param("x", {5}, gg::uniform(-2.0, 2.0));
  Value d1 = gg::gradients(gg::sum(gg::tanh(x)), {x})[0];
  Value d2 = gg::gradients(gg::sum(d1), {x})[0];
  gg::Program p(g, {d2});
  p.run({});
  const std::vector<double> xs = values(p.param("x")), got = values(p.get(d2));
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double t = std::tanh(xs[i]);
    CHECK_THAT(got[i], Catch::Matchers::WithinAbs(-2 * t * (1 - t * t), 1e-14));
  }
}

TEST_CASE("gradients of gradients give the Hessian-vector product of softmax cross-entropy",
          "[autodiff][second-order]") {
  const std::int64_t K = 5, M = 4;
  gg::Graph g(gg::f64);
  Value Z = g.param("Z", {K, M}, gg::uniform(-2.0, 2.0));
  const gg::Tensor y = one_hot(gg::f64, K, M, 7), v = random_tensor(gg::f64, {K, M}, -1, 1, 8);
  Value Y = g.constant(y, "Y");
  Value V = g.constant(v, "V");
  Value L = gg::softmax_cross_entropy(Z, Y, 0);
  Value dZ = gg::gradients(L, {Z})[0];
  Value Hv = gg::gradients(gg::sum(dZ * V), {Z})[0];
  gg::Program p(g, {Hv});
  p.run({});
  // Per example j: H_j = (diag(s) - s s^T) / M, so H_j v = s (v - <v, s>) / M.
  const gg::TensorView z = p.param("Z");
  for (std::int64_t j = 0; j < M; ++j) {
    double mx = -INFINITY, den = 0, vs = 0;
    std::vector<double> s(static_cast<std::size_t>(K));
    for (std::int64_t k = 0; k < K; ++k) mx = std::max(mx, z.at({k, j}));
    for (std::int64_t k = 0; k < K; ++k) den += std::exp(z.at({k, j}) - mx);
    for (std::int64_t k = 0; k < K; ++k) {
      s[static_cast<std::size_t>(k)] = std::exp(z.at({k, j}) - mx) / den;
      vs += v.at({k, j}) * s[static_cast<std::size_t>(k)];
    }
    for (std::int64_t k = 0; k < K; ++k) {
      const double want = s[static_cast<std::size_t>(k)] * (v.at({k, j}) - vs) / static_cast<double>(M);
      CHECK_THAT(p.get(Hv).at({k, j}), Catch::Matchers::WithinAbs(want, 1e-15));
    }
  }
}

// ---- what gradients() returns and refuses ------------------------------------------------------

TEST_CASE("the gradient w.r.t. a value the loss does not depend on is zeros of that value's shape", "[autodiff]") {
  gg::Graph g(gg::f64);
  Value X = g.input("X", {3, gg::dyn});
  Value W = g.param("W", {2, 3}, gg::uniform(-1.0, 1.0));
  Value U = g.param("U", {4, 2}, gg::uniform(-1.0, 1.0));
  Value loss = gg::sum(W * W);
  Value later = g.param("later", {2}, gg::uniform(-1.0, 1.0));  // created after the loss
  const auto grads = gg::gradients(loss, {U, X, later});
  CHECK(grads[0].shape() == U.shape());
  CHECK(grads[1].shape() == X.shape());
  CHECK(grads[2].shape() == later.shape());
  gg::Program p(g, {grads});
  const gg::Tensor x = random_tensor(gg::f64, {3, 7}, -1, 1, 9);
  p.run({{X, x}});
  for (const Value& gv : grads) {
    const gg::TensorView t = p.get(gv);
    INFO("gradient " << gv.name() << " " << gg::to_string(t.shape));
    for (double e : values(t)) CHECK(e == 0.0);
  }
  CHECK(p.get(grads[1]).shape == Shape{3, 7});
}

TEST_CASE("gradients of a non-scalar without a seed is a GraphError naming the value and its shape", "[autodiff][errors]") {
  gg::Graph g(gg::f64);
  Value W = g.param("W", {2, 3}, gg::uniform(-1.0, 1.0));
  Value y = gg::tanh(W).named("activations");
  CHECK_THAT(message_of<gg::GraphError>([&] { gg::gradients(y, {W}); }),
             Contains("'activations'") && Contains("{2, 3}") && Contains("seed"));
}

TEST_CASE("gradients of a non-scalar with a seed of its shape is the vector-Jacobian product", "[autodiff]") {
  gg::Graph g(gg::f64);
  Value W = g.param("W", {2, 3}, gg::uniform(-1.0, 1.0));
  Value y = W * W;
  const gg::Tensor s = random_tensor(gg::f64, {2, 3}, -1, 1, 10);
  Value seed = g.constant(s, "seed");
  Value dW = gg::gradients(y, {W}, seed)[0];
  gg::Program p(g, {dW});
  p.run({});
  const std::vector<double> w = values(p.param("W")), got = values(p.get(dW)), sv = values(s);
  for (std::size_t i = 0; i < w.size(); ++i) CHECK_THAT(got[i], Catch::Matchers::WithinRel(2 * w[i] * sv[i], 1e-15));
  Value wrong = g.constant(random_tensor(gg::f64, {3, 2}, -1, 1, 11), "wrong_seed");
  CHECK_THAT(message_of<gg::GraphError>([&] { gg::gradients(y, {W}, wrong); }),
             Contains("'wrong_seed'") && Contains("{3, 2}"));
}

TEST_CASE("a matmul with mismatched inner dimensions fails at build time naming the op, both operands and shapes",
          "[autodiff][errors]") {
  gg::Graph g(gg::f32);
  Value W1 = g.param("W1", {64, 784});
  Value X = g.input("X", {10, gg::dyn});
  const int before = g.size();
  CHECK_THAT(message_of<gg::GraphError>([&] { gg::matmul(W1, X); }),
             Contains("matmul") && Contains("'W1'") && Contains("{64, 784}") && Contains("'X'") &&
                           Contains("{10, dyn}"));
  CHECK(g.size() == before);  // nothing was added
}

TEST_CASE("an add of unbroadcastable shapes fails at build time naming the op, both operands and shapes",
          "[autodiff][errors]") {
  gg::Graph g(gg::f32);
  Value Z1 = g.input("Z1", {64, gg::dyn});
  Value b1 = g.param("b1", {32, 1});
  CHECK_THAT(message_of<gg::GraphError>([&] { gg::add(Z1, b1); }),
             Contains("add") && Contains("'Z1'") && Contains("{64, dyn}") && Contains("'b1'") &&
                           Contains("{32, 1}"));
}

// ---- numerics across dtypes, runs and threads ---------------------------------------------------

TEST_CASE("float32 loss and gradients agree with float64 for the same network, parameters and data",
          "[autodiff][numerics]") {
  const std::int64_t m = 32;
  Mlp n64(gg::f64), n32(gg::f32);
  n64.differentiate();
  n32.differentiate();
  gg::Program p64(n64.g, n64.fetches(), options(1));
  gg::Program p32(n32.g, n32.fetches(), options(1));
  for (const std::string& name : p64.param_names()) p32.set_param(name, gg::Tensor::copy_of(p64.param(name), gg::f32));
  const gg::Tensor x64 = random_tensor(gg::f64, {784, m}, 0, 1, 12), y64 = one_hot(gg::f64, 10, m, 13);
  const gg::Tensor x32 = gg::Tensor::copy_of(x64, gg::f32), y32 = gg::Tensor::copy_of(y64, gg::f32);
  p64.run({{n64.X, x64}, {n64.Y, y64}});
  p32.run({{n32.X, x32}, {n32.Y, y32}});
  CHECK_THAT(p32.scalar(n32.loss), Catch::Matchers::WithinRel(p64.scalar(n64.loss), 1e-5));
  for (std::size_t i = 0; i < n64.grads.size(); ++i) {
    INFO("gradient of " << n64.params[i].name());
    CHECK(rel_diff(values(p32.get(n32.grads[i])), values(p64.get(n64.grads[i]))) <= 1e-5);
  }
}

TEST_CASE("a program run twice, and two programs compiled alike, give bitwise identical results", "[autodiff][numerics]") {
  const int threads = GENERATE(1, 2);
  INFO("threads " << threads);
  const std::int64_t m = 1024;  // large enough for the kernels' parallel paths
  Mlp net(gg::f32);
  net.differentiate();
  gg::Program a(net.g, net.fetches(), options(threads));
  gg::Program b(net.g, net.fetches(), options(threads));
  const gg::Tensor x = random_tensor(gg::f32, {784, m}, 0, 1, 14), y = one_hot(gg::f32, 10, m, 15);
  a.run({{net.X, x}, {net.Y, y}});
  std::vector<std::vector<double>> first;
  for (const Value& v : net.fetches()) first.push_back(values(a.get(v)));
  a.run({{net.X, x}, {net.Y, y}});
  b.run({{net.X, x}, {net.Y, y}});
  for (std::size_t i = 0; i < first.size(); ++i) {
    INFO("fetch " << net.fetches()[i].name());
    CHECK(values(a.get(net.fetches()[i])) == first[i]);
    CHECK(values(b.get(net.fetches()[i])) == first[i]);
  }
}

TEST_CASE("one and two threads give the same results within rounding", "[autodiff][numerics]") {
  const std::int64_t m = 1024;
  Mlp net(gg::f32);
  net.differentiate();
  gg::Program one(net.g, net.fetches(), options(1));
  gg::Program two(net.g, net.fetches(), options(2));
  CHECK(one.threads() == 1);
  CHECK(two.threads() == 2);
  const gg::Tensor x = random_tensor(gg::f32, {784, m}, 0, 1, 16), y = one_hot(gg::f32, 10, m, 17);
  one.run({{net.X, x}, {net.Y, y}});
  two.run({{net.X, x}, {net.Y, y}});
  for (const Value& v : net.fetches()) {
    INFO("fetch " << v.name());
    CHECK(rel_diff(values(two.get(v)), values(one.get(v))) <= 1e-5);
  }
}

TEST_CASE("pooling and its gradients give the same bits for one and two threads", "[autodiff][numerics][pool]") {
  gg::Graph g(gg::f32);
  Value x = g.input("x", {gg::dyn, 16, 32, 32});
  // Overlapping windows: the gradients add several windows' shares into one cell.
  Value hi = gg::max_pool2d(x, 3, 1, 1);
  Value mean = gg::avg_pool2d(x, 3, 2, 1);
  Value R = g.input("R", hi.shape());
  Value loss = gg::sum(hi * R) + gg::sum(gg::flatten(mean) * gg::flatten(mean));
  const std::vector<Value> fetches = {hi, Value{hi.graph, hi.id, 1}, mean, gg::gradients(loss, {x})[0]};
  // 8 x 16 planes of 32 x 32: enough work for the kernels' parallel paths.
  const gg::Tensor xv = random_tensor(gg::f32, {8, 16, 32, 32}, -1, 1, 18);
  const gg::Tensor rv = random_tensor(gg::f32, {8, 16, 32, 32}, -1, 1, 19);
  gg::Program one(g, fetches, options(1));
  gg::Program two(g, fetches, options(2));
  one.run({{x, xv}, {R, rv}});
  two.run({{x, xv}, {R, rv}});
  for (const Value& v : fetches) {
    INFO("fetch " << v.name());
    CHECK(values(two.get(v)) == values(one.get(v)));
  }
}

// ---- inspection --------------------------------------------------------------------------------

TEST_CASE("write_dot shows every node's name and shape and colours backward nodes apart", "[autodiff][dot]") {
  Mlp net(gg::f32, 6, 5, 3);
  const int forward = net.g.size();
  net.differentiate();
  std::ostringstream os;
  gg::write_dot(net.g, os);
  const std::string dot = os.str();
  CHECK(dot.rfind("digraph", 0) == 0);
  // One line per vertex: "<id>[label=...]".
  std::vector<std::string> lines;
  {
    std::istringstream is(dot);
    for (std::string line; std::getline(is, line);) lines.push_back(line);
  }
  for (int i = 0; i < net.g.size(); ++i) {
    const gg::Node& n = net.g.node(i);
    const std::string head = std::to_string(i) + "[";
    auto it = std::find_if(lines.begin(), lines.end(), [&](const std::string& l) { return l.rfind(head, 0) == 0; });
    INFO("node " << i << " " << n.name);
    REQUIRE(it != lines.end());
    CHECK_THAT(*it, Contains(n.name) && Contains(gg::to_string(n.out().shape)) && Contains(gg::dtype_name(n.out().dtype)));
    const std::string op = n.op_name();
    const bool leaf = op == "input" || op == "param" || op == "constant";
    if (!leaf) CHECK_THAT(*it, Contains(op));
    if (n.backward && !leaf) CHECK_THAT(*it, Contains("lightcoral"));
    if (!n.backward && !leaf) CHECK_THAT(*it, Contains("lightblue"));
    if (op == "param") CHECK_THAT(*it, Contains("gold"));
    CHECK(n.backward == (i >= forward));
  }
  // Every operand edge is drawn.
  for (int i = 0; i < net.g.size(); ++i)
    for (const gg::Operand& o : net.g.node(i).inputs)
      CHECK_THAT(dot, Contains(std::to_string(o.node) + "->" + std::to_string(i) + " "));
}
