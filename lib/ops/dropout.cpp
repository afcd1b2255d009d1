// Dropout: in training, y = x m / (1 - p) with m[i] ~ Bernoulli(1 - p), a fresh mask every run;
// in evaluation (CompileOptions::training = false), y = x.
//
// The op has two outputs, y and the scaled mask s = m / (1 - p) in x's dtype, so that the VJP,
// dx = g s, uses the very mask the forward pass drew. The mask comes from a counter-based hash of
// (the program's seed, the layer's seed, a step counter, the element's place): any thread can
// draw any element, so the kernel is parallel and deterministic, and the step counter is an int64
// state the op advances each training run (a declared write), saved in checkpoints: a resumed run
// draws the masks the uninterrupted one would have. An element's place is its example's index in
// the global batch (KernelArgs::examples_before added: a data-parallel rank fed a shard draws
// what one process fed the whole batch would, and not the other ranks' masks again) times the
// values per example, plus its place within the example.
#include "kernels.hpp"
#include "onnx.hpp"

#include <regex>

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// Drops each element with probability p in training and scales the rest by 1 / (1 - p) (inverted
// dropout); the identity in evaluation programs. 0 <= p < 1. Makes a state "dropout<k>/step".
Value dropout(Value x, double p);
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

struct DropoutAttrs {
  double p = 0;
  std::int64_t layer = 0;       // separates the masks of the graph's dropout layers
  std::int64_t batch_axis = -1;  // x's open (batch) dimension; -1: none, an element's place is its index
  template <typename F> void visit(F&& f) { f("p", p), f("layer", layer), f("batch_axis", batch_axis); }
};

std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

Outputs infer(const Graph& g, const Node& n) {
  const Port& x = operand(g, n, 0);
  const DType t = require_float(g, n, 0);
  const Port& c = operand(g, n, 1);
  if (c.dtype != DType::i64 || c.shape.rank != 0) fail(g, n, "the step counter must be an int64 scalar state");
  const double p = n.attrs.as<DropoutAttrs>().p;
  if (!(p >= 0.0 && p < 1.0)) fail(g, n, "p must be in [0, 1)");
  return Outputs(Port{t, x.shape}, Port{t, x.shape});
}

template <typename T>
void fwd(const KernelArgs& k) {
  const DropoutAttrs& a = k.attrs<DropoutAttrs>();
  const T* x = data<T>(k.in[0]);
  T* y = data<T>(k.out[0]);
  T* s = data<T>(k.out[1]);
  const std::int64_t n = k.out[0].numel();
  if (!k.training || a.p == 0.0) {
    parallel_for(n, k.threads, 1, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) y[i] = x[i], s[i] = T(1);
    });
    return;
  }
  std::int64_t& step = *data<std::int64_t>(k.in[1]);
  const std::uint64_t key = splitmix64(k.seed ^ splitmix64(static_cast<std::uint64_t>(a.layer) ^
                                                           splitmix64(static_cast<std::uint64_t>(step))));
  ++step;
  // keep with probability 1 - p: a 53-bit uniform below 1 - p.
  const std::uint64_t threshold = static_cast<std::uint64_t>((1.0 - a.p) * 9007199254740992.0);
  const T scale = static_cast<T>(1.0 / (1.0 - a.p));
  // Element i = (o batch + b) inner + r: example b, place o inner + r within it (of outer inner).
  const Shape& shape = k.out[0].shape;
  std::int64_t outer = 1, batch = 1, inner = n;
  if (a.batch_axis >= 0 && a.batch_axis < shape.rank) {
    inner = 1;
    for (int d = 0; d < shape.rank; ++d)
      (d < a.batch_axis ? outer : d > a.batch_axis ? inner : batch) *= shape[d];
  }
  const std::int64_t before = a.batch_axis >= 0 ? k.examples_before : 0;
  auto place = [&](std::int64_t i) {
    if (outer == 1) return i + before * inner;  // the batch first: no division
    const std::int64_t r = i % inner, ob = i / inner, b = ob % batch, o = ob / batch;
    return (before + b) * outer * inner + o * inner + r;
  };
  parallel_for(n, k.threads, 4, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t i = lo; i < hi; ++i) {
      const bool keep = (splitmix64(key + static_cast<std::uint64_t>(place(i))) >> 11) < threshold;
      s[i] = keep ? scale : T(0);
      y[i] = x[i] * s[i];
    }
  });
}

std::vector<Value> vjp(const VjpArgs& v) {
  std::vector<Value> out(2);
  if (v.wanted[0]) out[0] = v.dy() * v.out[1];  // the same mask; no gradient through the mask itself
  return out;
}

// ONNX: the identity, as in evaluation: the exported graph is the inference graph, so no node
// at all (output 0 is x's tensor). The scaled mask (output 1) is refused if read.
void dropout_onnx(OnnxWriter& w) {
  if (w.needed(1)) w.refuse("is read for its mask (output 1), which an inference graph does not have");
  w.same_as(0, 0);
}

}  // namespace

GG_OP(dropout_op) = {.name = "dropout", .arity = 2, .outputs = 2, .diff_inputs = 0b01, .inplace = 0b01, .writes = 0b10,
                     .kernels = {.f32 = fwd<float>, .f64 = fwd<double>}, .kernel_key = 0, .infer = infer, .vjp = vjp,
                     .onnx = dropout_onnx};

}  // namespace detail

Value dropout(Value x, double p) {
  Graph& g = detail::graph_of(x);
  static const std::regex counter("dropout([0-9]+)/step");
  std::int64_t k = 1;
  for (const Value& s : g.states())
    if (std::regex_match(s.name(), counter)) ++k;
  Value step = g.state("dropout" + std::to_string(k) + "/step", Shape{}, zeros(), DType::i64);
  std::int64_t batch_axis = -1;
  for (int d = 0; d < x.shape().rank; ++d)
    if (x.shape()[d] == dyn) batch_axis = d;
  return detail::make(detail::dropout_op, {x, step}, Attrs(detail::DropoutAttrs{p, k, batch_axis}));
}

}  // namespace gg
