// The graph and its op registry: stable node storage, the registry generated from the op
// definitions, typed attributes, per-node dtypes, and the build-time checks that come with them.
#include "support.hpp"

#include <gradgraph/gradgraph.hpp>

#include "ops/op.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#ifndef GG_SOURCE_DIR
#error "GG_SOURCE_DIR must name the source tree"
#endif
#ifndef GG_OPS_HPP
#error "GG_OPS_HPP must name the generated <gradgraph/ops.hpp>"
#endif

namespace {

using Catch::Matchers::Contains;
using gg::Shape;
using gg::Value;
using gg::test::message_of;
using gg::test::slurp;
using gg::test::values;
namespace fs = std::filesystem;

// Every GG_OP variable defined in lib/ops/*.cpp, read from the sources.
std::vector<std::string> op_variables_in_sources() {
  std::vector<std::string> out;
  const std::regex def(R"(^GG_OP\((\w+)\))");
  for (const auto& e : fs::directory_iterator(fs::path(GG_SOURCE_DIR) / "lib" / "ops")) {
    if (e.path().extension() != ".cpp") continue;
    std::istringstream in(slurp(e.path().string()));
    for (std::string line; std::getline(in, line);) {
      std::smatch m;
      if (std::regex_search(line, m, def)) out.push_back(m[1]);
    }
  }
  return out;
}

}  // namespace

// ---- stable nodes ---------------------------------------------------------------------------------

TEST_CASE("a shape and a node bound before 100 nodes are added are still valid after", "[graph][stable]") {
  gg::Graph g(gg::f32);
  Value x = g.input("x", {3, gg::dyn});
  const Shape& s = x.shape();          // a Shape by value: the reference extends its lifetime
  const gg::Node& node = x.node();     // a reference into stable storage
  const std::string& name = node.name;
  Value y = x;
  for (int i = 0; i < 100; ++i) y = gg::tanh(y) + x;
  CHECK(g.size() > 200);
  CHECK(s == Shape{3, gg::dyn});
  CHECK(node.out().shape == Shape{3, gg::dyn});
  CHECK(name == "x");
  CHECK(&g.node(x.id) == &node);
}

// ---- the registry -----------------------------------------------------------------------------------

TEST_CASE("every op either has a gradient or is flagged non-differentiable, and op names are unique", "[graph][registry]") {
  std::set<std::string> names;
  for (const gg::detail::OpDef* d : gg::detail::all_ops()) {
    REQUIRE(d->name != nullptr);
    INFO("op '" << d->name << "'");
    CHECK(names.insert(d->name).second);
    CHECK(gg::detail::find_op(d->name) == d);
    const bool non_diff = d->flags & gg::detail::kNonDifferentiable;
    if (d->flags & gg::detail::kTrainable) {
      // The one differentiable leaf: gradients flow to it, it has no operands to pass them on to.
      CHECK(d->is_leaf());
      CHECK(d->vjp == nullptr);
      continue;
    }
    CHECK((d->vjp != nullptr) != non_diff);
    if (non_diff) CHECK(d->diff_inputs == 0u);
    if (d->vjp) CHECK(d->diff_inputs != 0u);
    CHECK(d->arity <= gg::detail::kMaxInputs);
    CHECK(d->outputs >= 1);
    CHECK(d->outputs <= gg::kMaxOutputs);
    if (d->arity >= 0) {
      CHECK((d->diff_inputs >> d->arity) == 0u);
      CHECK((d->inplace >> d->arity) == 0u);
      CHECK((d->writes >> d->arity) == 0u);
      CHECK(d->alias < d->arity);
    }
    CHECK(d->infer != nullptr);
    // Leaves have no kernel (but fill, which runs once at plan time); a view without a kernel
    // has a source; every other op has a kernel for some dtype.
    if (d->is_leaf()) {
      CHECK_FALSE(d->kernels.any());
    } else if (d->alias < 0) {
      CHECK(d->kernels.any());
    }
    if (d->flags & gg::detail::kOnce) CHECK(d->arity == 0);
  }
  CHECK(names.size() == gg::detail::all_ops().size());
}

TEST_CASE("the registry holds exactly the ops defined with GG_OP in lib/ops", "[graph][registry]") {
  const std::vector<std::string> vars = op_variables_in_sources();
  CHECK(vars.size() == gg::detail::all_ops().size());
  CHECK(vars.size() >= 40);
}

TEST_CASE("every op is documented in docs/ops.md", "[graph][registry][docs]") {
  const std::string doc = slurp(std::string(GG_SOURCE_DIR) + "/docs/ops.md");
  REQUIRE_FALSE(doc.empty());
  for (const gg::detail::OpDef* d : gg::detail::all_ops()) {
    INFO("op '" << d->name << "'");
    CHECK_THAT(doc, Contains(std::string("`").append(d->name).append("`")));
  }
}

TEST_CASE("ops made only by passes have no public constructor", "[graph][registry]") {
  const std::string header = slurp(GG_OPS_HPP);
  REQUIRE_THAT(header, Contains("Value matmul("));
  int internal = 0;
  for (const gg::detail::OpDef* d : gg::detail::all_ops()) {
    if (!(d->flags & gg::detail::kInternal)) continue;
    ++internal;
    INFO("internal op '" << d->name << "'");
    CHECK_THAT(header, !Contains(std::string(" ").append(d->name).append("(")));
  }
  CHECK(internal >= 8);  // relu_grad, add_relu, the loss's grad and fused kernels, three updates, unslice, scatter_add
}

TEST_CASE("the compiler, planner and executor name no op", "[graph][registry]") {
  const std::vector<std::string> vars = op_variables_in_sources();
  for (const char* file : {"compile.cpp", "fuse.cpp", "plan.cpp", "execute.cpp", "program.cpp", "param_store.cpp"}) {
    const std::string src = slurp(std::string(GG_SOURCE_DIR) + "/lib/program/" + file);
    REQUIRE_FALSE(src.empty());
    INFO(file);
    for (const std::string& v : vars) CHECK_THAT(src, !Contains(v));
    CHECK_THAT(src, !Contains("Op::"));
  }
}

TEST_CASE("the ONNX exporter names no op: each op writes itself from its family file", "[graph][registry][onnx]") {
  const std::string src = slurp(std::string(GG_SOURCE_DIR) + "/lib/io/onnx.cpp");
  REQUIRE_FALSE(src.empty());
  for (const std::string& v : op_variables_in_sources()) CHECK_THAT(src, !Contains(v));
}

TEST_CASE("docs/interop.md lists exactly the ops that have an ONNX equivalent", "[graph][registry][docs][onnx]") {
  // Rows of its table start with the op's name in backquotes: "| `matmul` | `MatMul` ...".
  std::set<std::string> listed;
  std::istringstream doc(slurp(std::string(GG_SOURCE_DIR) + "/docs/interop.md"));
  const std::regex row(R"(^\| `(\w+)` \|)");
  for (std::string line; std::getline(doc, line);) {
    std::smatch m;
    if (std::regex_search(line, m, row)) listed.insert(m[1]);
  }
  REQUIRE(listed.size() >= 20);
  for (const gg::detail::OpDef* d : gg::detail::all_ops()) {
    INFO("op '" << d->name << "'");
    CHECK((d->onnx != nullptr) == (listed.count(d->name) == 1));
  }
}

// ---- typed attributes ------------------------------------------------------------------------------

TEST_CASE("attributes print every field by name, in errors, descriptions and DOT labels", "[graph][attrs]") {
  gg::Graph g(gg::f32);
  Value a = g.input("a", {3, 4});
  Value b = g.input("b", {5, 4});
  Value c = gg::matmul(a, b, false, true).named("c");
  CHECK(c.node().attrs.to_string() == "trans_a=false, trans_b=true, alpha=1, batch_power=0");
  CHECK(gg::sum(c, {0, 1}, true).node().attrs.to_string() == "axes={0, 1}, keepdims=true");
  CHECK(gg::slice(c, 1, 1, 4).node().attrs.to_string() == "axis=1, begin=1, end=4, size=5");
  CHECK(gg::scale(c, 0.1).node().attrs.to_string() == "factor=0.1, batch_power=0");  // shortest exact text
  CHECK(gg::cast(c, gg::f64).node().attrs.to_string() == "to=float64");
  const std::string msg = message_of<gg::GraphError>([&] { gg::softmax(c, 2); });
  CHECK_THAT(msg, Contains("softmax") && Contains("'c' float32 {3, 5}") && Contains("[axis=2]"));
  CHECK_THAT(gg::describe(g), Contains("c = matmul(a, b) [trans_a=false, trans_b=true, alpha=1, batch_power=0] -> float32 {3, 5}"));
  std::ostringstream dot;
  gg::write_dot(g, dot);
  CHECK_THAT(dot.str(), Contains("trans_b=true"));
}

TEST_CASE("an attribute read as another op's type is refused", "[graph][attrs]") {
  gg::Graph g(gg::f32);
  Value x = g.input("x", {2});
  Value y = gg::softmax(x, 0);
  CHECK_THROWS_AS(y.node().attrs.as<gg::detail::ScaleAttrs>(), std::logic_error);
}

TEST_CASE("set_learning_rate sets every lr attribute without naming an op", "[graph][attrs]") {
  gg::Graph g(gg::f64);
  Value w = g.param("w", {2}, gg::constant(1.0));
  Value v = g.param("v", {2}, gg::constant(1.0));
  Value loss = gg::sum(w * v);
  const auto grads = gg::gradients(loss, {w, v});
  auto ups = gg::sgd({w}, {grads[0]}, {.lr = 0.5});
  const auto more = gg::adam({v}, {grads[1]}, {.lr = 0.5});
  ups.insert(ups.end(), more.begin(), more.end());
  gg::Program p(g, {ups});
  CHECK(p.set_learning_rate(0.25) == 2);
  p.run({});
  // d loss / d w = v = 1: one SGD step with lr 0.25.
  CHECK(p.param(w).at({0}) == 0.75);
}

// ---- dtypes -------------------------------------------------------------------------------------------

TEST_CASE("argmax returns int64, and equal compares int64 labels into the graph's float dtype", "[graph][dtype]") {
  gg::Graph g(gg::f64);
  Value z = g.input("z", {3, gg::dyn});
  Value labels = g.input("labels", {gg::dyn}, gg::i64);
  Value am = gg::argmax(z, 0);
  CHECK(am.dtype() == gg::i64);
  Value acc = gg::mean(gg::equal(am, labels));
  CHECK(acc.dtype() == gg::f64);
  gg::Program p(g, {am, acc});
  const gg::Tensor zv = gg::Tensor::from<double>({3, 4}, {0, 5, 1, 2, 9, 0, 1, 2, 1, 1, 7, 3});
  const gg::Tensor lv = gg::Tensor::from<std::int64_t>({4}, {1, 0, 2, 0});
  p.run({{z, zv}, {labels, lv}});
  CHECK(values(p.get(am)) == std::vector<double>{1, 0, 2, 2});
  CHECK(p.scalar(acc) == 0.75);
}

TEST_CASE("argmax over a long axis split into column blocks and threads picks the first maximum of every column",
          "[graph][dtype]") {
  // {10, 70001} over axis 0: one outer slice of 274 column blocks (the last partial); over axis 1
  // of {2, 10, 5000}: 2 outer slices. Few distinct values, so that ties are common.
  for (int threads : {1, 2, 3}) {
    gg::Graph g(gg::f32);
    Value a = g.input("a", {10, gg::dyn}), b = g.input("b", {2, 10, 5000});
    Value ma = gg::argmax(a, 0), mb = gg::argmax(b, 1);
    gg::Program p(g, {ma, mb}, {.threads = threads});
    gg::Tensor av(gg::f32, {10, 70001}), bv(gg::f32, {2, 10, 5000});
    for (std::int64_t i = 0; i < av.numel(); ++i) av.ptr<float>()[i] = static_cast<float>((i * 7919) % 13 % 4);
    for (std::int64_t i = 0; i < bv.numel(); ++i) bv.ptr<float>()[i] = static_cast<float>((i * 104729) % 11 % 3);
    p.run({{a, av}, {b, bv}});
    const gg::Tensor ra = gg::Tensor::copy_of(p.get(ma)), rb = gg::Tensor::copy_of(p.get(mb));
    int wrong = 0;
    for (std::int64_t j = 0; j < 70001; ++j) {
      std::int64_t best = 0;
      for (std::int64_t c = 1; c < 10; ++c)
        if (av.ptr<float>()[c * 70001 + j] > av.ptr<float>()[best * 70001 + j]) best = c;
      wrong += ra.ptr<std::int64_t>()[j] != best;
    }
    for (std::int64_t o = 0; o < 2; ++o)
      for (std::int64_t j = 0; j < 5000; ++j) {
        std::int64_t best = 0;
        for (std::int64_t c = 1; c < 10; ++c)
          if (bv.ptr<float>()[(o * 10 + c) * 5000 + j] > bv.ptr<float>()[(o * 10 + best) * 5000 + j]) best = c;
        wrong += rb.ptr<std::int64_t>()[o * 5000 + j] != best;
      }
    CHECK(wrong == 0);
  }
}

TEST_CASE("feeds are checked against each input's own dtype", "[graph][dtype]") {
  gg::Graph g(gg::f32);
  Value z = g.input("z", {3, gg::dyn});
  Value labels = g.input("labels", {gg::dyn}, gg::i64);
  Value acc = gg::mean(gg::equal(gg::argmax(z, 0), labels));
  gg::Program p(g, {acc});
  const gg::Tensor zv(gg::f32, {3, 2});
  const gg::Tensor wrong(gg::f32, {2});
  const std::string msg = message_of<std::invalid_argument>([&] { p.run({{z, zv}, {labels, wrong}}); });
  CHECK_THAT(msg, Contains("'labels'") && Contains("int64") && Contains("float32"));
  p.run({{z, zv}, {labels, gg::Tensor(gg::i64, {2})}});
  CHECK(p.scalar(acc) == 1.0);  // all-zero logits: argmax 0 everywhere, labels 0
}

TEST_CASE("float32 and float64 do not mix without an explicit cast, and cast differentiates", "[graph][dtype]") {
  gg::Graph g(gg::f32);
  Value a = g.param("a", {3}, gg::uniform(-1.0, 1.0));
  Value b = g.param("b", {3}, gg::uniform(-1.0, 1.0), gg::f64);
  const std::string msg = message_of<gg::GraphError>([&] { a + b; });
  CHECK_THAT(msg, Contains("add") && Contains("float32") && Contains("float64") && Contains("gg::cast"));
  Value s = gg::sum(gg::cast(a, gg::f64) * b);
  CHECK(s.dtype() == gg::f64);
  const auto grads = gg::gradients(s, {a, b});
  CHECK(grads[0].dtype() == gg::f32);
  CHECK(grads[1].dtype() == gg::f64);
  gg::Program p(g, {grads});
  p.run({});
  for (std::int64_t i = 0; i < 3; ++i) {
    CHECK(p.get(grads[0]).at({i}) == static_cast<float>(p.param(b).at({i})));
    CHECK(p.get(grads[1]).at({i}) == p.param(a).at({i}));
  }
}

TEST_CASE("integer tensors are not differentiable and arithmetic on them is rejected at build time", "[graph][dtype]") {
  gg::Graph g(gg::f32);
  Value labels = g.input("labels", {4}, gg::i64);
  CHECK_THAT(message_of<gg::GraphError>([&] { gg::relu(labels); }), Contains("'labels' int64 {4}") && Contains("float"));
  CHECK_THAT(message_of<gg::GraphError>([&] { g.param("w", {2}, gg::zeros(), gg::i64); }), Contains("float"));
  Value w = g.param("w", {4}, gg::uniform(-1.0, 1.0));
  CHECK_THAT(message_of<gg::GraphError>([&] { gg::gradients(gg::sum(w), {labels}); }), Contains("integer"));
  // A float value computed from integers gets no gradient path through them.
  Value loss = gg::sum(gg::cast(labels, gg::f32) * w);
  const Value dw = gg::gradients(loss, {w})[0];
  gg::Program p(g, {dw});
  p.run({{labels, gg::Tensor::from<std::int64_t>({4}, {1, 2, 3, 4})}});
  CHECK(values(p.get(dw)) == std::vector<double>{1, 2, 3, 4});
}

TEST_CASE("each buffer is sized by its own dtype", "[graph][dtype]") {
  gg::Graph g(gg::f64);
  Value pixels = g.input("pixels", {1000}, gg::u8);
  Value x = gg::cast(pixels, gg::f64) * (1.0 / 255.0);
  gg::Program p(g, {x});
  gg::Tensor raw(gg::u8, {1000});
  for (std::int64_t i = 0; i < 1000; ++i) raw.set({i}, static_cast<double>(i % 256));
  p.run({{pixels, raw}});
  CHECK(p.get(x).at({255}) == 1.0);
  CHECK(p.get(x).dtype == gg::f64);
  // The cast's float64 output (8000 bytes), and the fetched scale in place over it: one buffer.
  CHECK(p.planned_bytes(0) >= 8000);
  CHECK(p.planned_bytes(0) < 2 * 8000);
}

TEST_CASE("states may be integer tensors, initialised with zeros or a constant", "[graph][dtype]") {
  gg::Graph g(gg::f32);
  Value counter = g.state("counter", {}, gg::constant(7), gg::i64);
  gg::Program p(g, {counter});
  CHECK(p.param(counter).dtype == gg::i64);
  CHECK(p.param("counter").at({}) == 7);
  CHECK_THROWS_AS(g.state("noise", {2}, gg::normal(0, 1), gg::u8), gg::GraphError);
}

// ---- shapes and tensors from plain data ---------------------------------------------------------------

TEST_CASE("shapes and tensors are made from std::vector and raw buffers", "[graph][tensor]") {
  const std::vector<std::int64_t> dims = {2, 3};
  CHECK(Shape(dims) == Shape{2, 3});
  const std::int64_t raw[] = {4, gg::dyn};
  CHECK(Shape(std::span<const std::int64_t>(raw)) == Shape{4, gg::dyn});
  CHECK_THROWS_AS(Shape(std::vector<std::int64_t>(7, 1)), std::invalid_argument);
  const std::vector<float> data = {1, 2, 3, 4, 5, 6};
  const gg::Tensor t = gg::Tensor::from(Shape{2, 3}, data);
  CHECK(t.dtype() == gg::f32);
  CHECK(t.at({1, 2}) == 6.0f);
  const gg::TensorView v(data.data(), Shape{3, 2});  // a view of the caller's memory, dtype from the pointer
  CHECK(v.dtype == gg::f32);
  CHECK(v.at({2, 1}) == 6.0f);
  CHECK_THROWS_AS(gg::Tensor::from(Shape{4}, data), std::invalid_argument);
  CHECK_THROWS_AS(Shape({std::int64_t{1} << 40, std::int64_t{1} << 40}).numel(), std::overflow_error);
}

// ---- softmax cross-entropy's class axis -------------------------------------------------------------

TEST_CASE("softmax_cross_entropy with integer labels infers the class axis in both layouts", "[graph][loss]") {
  for (const bool batch_first : {false, true}) {
    INFO((batch_first ? "batch-first" : "features x examples"));
    gg::Graph g(gg::f64);
    const Shape zs = batch_first ? Shape{gg::dyn, 4} : Shape{4, gg::dyn};
    Value z = g.input("z", zs);
    Value labels = g.input("labels", {gg::dyn}, gg::i64);
    Value dense = g.input("dense", zs);
    Value sparse_loss = gg::softmax_cross_entropy(z, labels);
    Value dense_loss = gg::softmax_cross_entropy(z, dense, batch_first ? 1 : 0);
    gg::Program p(g, {sparse_loss, dense_loss});
    const gg::Tensor zv = gg::test::random_tensor(gg::f64, batch_first ? Shape{5, 4} : Shape{4, 5}, -2, 2, 3);
    const gg::Tensor lv = gg::Tensor::from<std::int64_t>({5}, {0, 3, 1, 1, 2});
    gg::Tensor dv(gg::f64, batch_first ? Shape{5, 4} : Shape{4, 5});
    for (std::int64_t j = 0; j < 5; ++j) dv.set(batch_first ? std::initializer_list<std::int64_t>{j, static_cast<std::int64_t>(lv.at({j}))} : std::initializer_list<std::int64_t>{static_cast<std::int64_t>(lv.at({j})), j}, 1.0);
    p.run({{z, zv}, {labels, lv}, {dense, dv}});
    CHECK(p.scalar(sparse_loss) == p.scalar(dense_loss));
  }
}

TEST_CASE("softmax_cross_entropy rejects dense targets without an axis and ambiguous label shapes", "[graph][loss]") {
  gg::Graph g(gg::f32);
  Value z = g.input("z", {gg::dyn, 10});
  Value y = g.input("y", {gg::dyn, 10});
  CHECK_THAT(message_of<gg::GraphError>([&] { gg::softmax_cross_entropy(z, y); }), Contains("axis"));
  Value square = g.input("square", {10, 10});
  Value l10 = g.input("l10", {10}, gg::i64);
  CHECK_THAT(message_of<gg::GraphError>([&] { gg::softmax_cross_entropy(square, l10); }), Contains("ambiguous"));
  Value wrong = g.input("wrong", {7}, gg::i64);
  CHECK_THAT(message_of<gg::GraphError>([&] { gg::softmax_cross_entropy(z, wrong); }), Contains("without the class axis"));
}

TEST_CASE("one_hot stops the run with the offending label and its index", "[graph][dtype]") {
  gg::Graph g(gg::f32);
  Value labels = g.input("labels", {gg::dyn}, gg::i64);
  Value y = gg::one_hot(labels, 3, 0, gg::f32);
  CHECK(y.shape() == Shape{3, gg::dyn});
  gg::Program p(g, {y});
  p.run({{labels, gg::Tensor::from<std::int64_t>({2}, {2, 0})}});
  CHECK(values(p.get(y)) == std::vector<double>{0, 1, 0, 0, 1, 0});
  const std::string msg =
      message_of<std::out_of_range>([&] { p.run({{labels, gg::Tensor::from<std::int64_t>({3}, {0, 5, 1})}}); });
  CHECK_THAT(msg, Contains("label 5") && Contains("index 1"));
}

// ---- pooling shapes and their build-time errors ----------------------------------------------------

TEST_CASE("pooling shapes keep an open batch, and global_avg_pool and flatten give {N, C} and {N, C*H*W}",
          "[graph][pool]") {
  gg::Graph g(gg::f64);
  Value x = g.input("x", {gg::dyn, 3, 7, 6});
  // OH = (H + 2 padding - kernel) / stride + 1, floored: PyTorch's ceil_mode = false.
  CHECK(gg::max_pool2d(x, 2).shape() == Shape{gg::dyn, 3, 3, 3});
  CHECK(gg::max_pool2d(x, 3, 2, 1).shape() == Shape{gg::dyn, 3, 4, 3});
  CHECK(gg::avg_pool2d(x, 3, 1, 1).shape() == Shape{gg::dyn, 3, 7, 6});
  CHECK(gg::avg_pool2d(x, 5, 2).shape() == Shape{gg::dyn, 3, 2, 1});
  Value pooled = gg::max_pool2d(x, 2);
  CHECK(gg::detail::outputs_of(pooled).size() == 2);
  CHECK(Value{pooled.graph, pooled.id, 1}.dtype() == gg::i64);
  CHECK(pooled.node().attrs.to_string() ==
        "kernel_h=2, kernel_w=2, stride_h=2, stride_w=2, pad_h=0, pad_w=0, height=7, width=6");
  Value gap = gg::global_avg_pool(x);
  Value flat = gg::flatten(x);
  CHECK(gap.shape() == Shape{gg::dyn, 3});
  CHECK(flat.shape() == Shape{gg::dyn, 126});
  CHECK(flat.op_name() == std::string("reshape"));  // a view: no copy
  CHECK(gg::flatten(gap) == gap);                   // rank 2 as it is
  CHECK(gg::flatten(g.input("v", {gg::dyn, 2, 5})).shape() == Shape{gg::dyn, 10});
  gg::Program p(g, {gap, flat});
  const gg::Tensor xv = gg::test::random_tensor(gg::f64, {2, 3, 7, 6}, -1, 1, 21);
  p.run({{x, xv}});
  for (std::int64_t n = 0; n < 2; ++n)
    for (std::int64_t c = 0; c < 3; ++c) {
      double total = 0;
      for (std::int64_t h = 0; h < 7; ++h)
        for (std::int64_t w = 0; w < 6; ++w) {
          total += xv.at({n, c, h, w});
          CHECK(p.get(flat).at({n, (c * 7 + h) * 6 + w}) == xv.at({n, c, h, w}));
        }
      CHECK_THAT(p.get(gap).at({n, c}), Catch::Matchers::WithinRel(total / 42, 1e-12));
    }
}

TEST_CASE("pooling shape errors name the op, the operand with its shape, the rule and the attributes", "[graph][pool]") {
  gg::Graph g(gg::f32);
  Value x = g.input("x", {gg::dyn, 2, 4, 4});
  auto error = [](auto&& f) { return message_of<gg::GraphError>(f); };
  CHECK_THAT(error([&] { gg::max_pool2d(x, 5); }),
             Contains("max_pool2d: pooling window 5 does not fit the 4x4 map (padding 0)") &&
                 Contains("'x' float32 {dyn, 2, 4, 4}") && Contains("kernel_h=5"));
  // Padding makes room: 5 fits the padded 8x8 map... but only up to half the window.
  CHECK(gg::avg_pool2d(x, 5, 1, 2).shape() == Shape{gg::dyn, 2, 4, 4});
  CHECK_THAT(error([&] { gg::avg_pool2d(x, 3, 1, 2); }),
             Contains("avg_pool2d: padding 2 is more than half the pooling window 3") && Contains("pad_h=2"));
  CHECK_THAT(error([&] { gg::max_pool2d(x, 0); }),
             Contains("max_pool2d: the pooling window must be at least 1, got 0") && Contains("'x' float32 {dyn, 2, 4, 4}"));
  CHECK_THAT(error([&] { gg::max_pool2d(x, 2, -1); }), Contains("the stride must be at least 1, got -1"));
  CHECK_THAT(error([&] { gg::avg_pool2d(x, 2, 1, -1); }), Contains("the padding must not be negative, got -1"));
  Value rank3 = g.input("rank3", {2, 4, 4});
  CHECK_THAT(error([&] { gg::max_pool2d(rank3, 2); }),
             Contains("max_pool2d: expects an NCHW tensor of rank 4, got rank 3") && Contains("'rank3' float32 {2, 4, 4}"));
  Value open = g.input("open", {2, 3, gg::dyn, 4});
  CHECK_THAT(error([&] { gg::avg_pool2d(open, 2); }), Contains("must be static") && Contains("'open'"));
  Value labels = g.input("labels", {1, 1, 4, 4}, gg::i64);
  CHECK_THAT(error([&] { gg::max_pool2d(labels, 2); }),
             Contains("max_pool2d") && Contains("'labels' int64 {1, 1, 4, 4}") && Contains("must be float32 or float64"));
  CHECK_THAT(error([&] { gg::global_avg_pool(rank3); }),
             Contains("global_avg_pool") && Contains("'rank3' float32 {2, 4, 4}"));
  CHECK_THAT(error([&] { gg::flatten(g.input("vec", {gg::dyn})); }), Contains("flatten") && Contains("'vec' float32 {dyn}"));
  CHECK_THAT(error([&] { gg::flatten(open); }), Contains("flatten: only dimension 0 may be dyn"));
}
