// Fused softmax cross-entropy: L = -(1/M) sum_examples sum_k Y_k log softmax(Z)_k,
// classes along `axis`, M = number of examples (elements / classes).
//
// Forward from log-softmax (x - m - log sum exp(x - m)), so no probability ever underflows to
// log(0). Terms with Y_k = 0 are skipped, so an impossible class (log p = -inf) with zero target
// costs nothing instead of producing 0 * inf = NaN.
//
// VJP w.r.t. Z: (softmax(Z) sum_k Y_k - Y) g / M, one fused pass (softmax_cross_entropy_grad);
// the 1/M is applied there and nowhere else. For targets that sum to 1 along the class axis
// (one-hot, label distributions) this is the familiar (softmax(Z) - Y) g / M, bit for bit when
// the sums are exactly 1. W.r.t. Y: -log_softmax(Z) g / M.
// softmax_cross_entropy_grad(Z, Y, g) is itself differentiable (second derivatives), with
// S = softmax(Z), s = sum_k Y_k (per example), c = g/M:
//   d/dZ <V, (S s - Y) c> = S (V - <V, S>) s c     (the softmax VJP of V, scaled)
//   d/dY = (<V, S> - V) c,   d/dg = <V, S s - Y> / M
#include "fusion.hpp"
#include "kernels.hpp"
#include "op_list.hpp"
#include "softmax.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// Mean over examples of -sum_k Y_k log softmax(Z)_k, with dense targets Y of the logits' shape and
// the classes along `axis` (0 for the notebook's features x examples layout, 1 or -1 for
// batch-first). Stable: uses log-softmax.
Value softmax_cross_entropy(Value logits, Value targets, int axis);
// The same with integer class labels (int64 or uint8), shaped like the logits without their class
// axis, which is the axis the labels lack: {10, dyn} logits with {dyn} labels use axis 0, {dyn, 10}
// logits use axis 1. Where that is ambiguous ({10, 10} logits) pass dense targets and the axis.
Value softmax_cross_entropy(Value logits, Value labels);
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

// The class axis (normalised: 0 <= axis < rank).
struct SceAttrs {
  int axis = 0;
  template <typename F> void visit(F&& f) { f("axis", axis); }
};

Outputs infer(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  require_same_dtype(g, n, 0, 1);
  const Shape& z = operand(g, n, 0).shape;
  if (z != operand(g, n, 1).shape) fail(g, n, "logits and targets must have the same shape");
  if (z.rank == 0) fail(g, n, "logits must have at least one dimension");
  normalize_axis(g, n, n.attrs.as<SceAttrs>().axis, z.rank);
  return Port{t, Shape{}};
}

Outputs infer_grad(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  require_same_dtype(g, n, 0, 1);
  require_same_dtype(g, n, 0, 2);
  const Shape& z = operand(g, n, 0).shape;
  if (z != operand(g, n, 1).shape) fail(g, n, "logits and targets must have the same shape");
  if (operand(g, n, 2).shape.rank != 0) fail(g, n, "the incoming gradient must be a scalar");
  return Port{t, z};
}

// The fused kernel's outputs: the gradient (Z's shape), then the loss.
Outputs infer_fused(const Graph& g, const Node& n) {
  const Port& z = operand(g, n, 0);
  return Outputs(Port{z.dtype, z.shape}, Port{z.dtype, Shape{}});
}

std::int64_t examples(const Shape& s, int axis) { return s.numel() / std::max<std::int64_t>(1, s.dims[axis]); }

// sum_k Y_k (Z_k - logsumexp(Z)) over a block of slices, from exp_sums' max and sums. Zero
// targets are skipped: an impossible class (log p = -inf) then costs nothing, not 0 * inf.
// Accumulated per slice in double, then the slices' sums in order. The skip is a mask on the
// term's bits rather than a branch or a ?: (GCC moves the term's arithmetic under a ?: and
// then cannot if-convert it, as it may trap), so the loop over adjacent slices vectorises.
template <typename T>
double block_log_likelihood(const T* zb, const T* yb, std::int64_t n, std::int64_t stride, std::int64_t w, const T* mx,
                            const T* se) {
  double lse[kSliceBlock], ll[kSliceBlock];
#pragma omp simd
  for (std::int64_t j = 0; j < w; ++j) lse[j] = static_cast<double>(mx[j]) + log_vec(static_cast<double>(se[j]));
  for (std::int64_t j = 0; j < w; ++j) ll[j] = 0;
  for (std::int64_t c = 0; c < n; ++c) {
    const T* __restrict zr = zb + c * stride;
    const T* __restrict yr = yb + c * stride;
#pragma omp simd
    for (std::int64_t j = 0; j < w; ++j) {
      const double term = static_cast<double>(yr[j]) * (static_cast<double>(zr[j]) - lse[j]);
      const std::uint64_t keep = yr[j] != T(0) ? ~std::uint64_t{0} : 0;  // zero target: +0
      ll[j] += std::bit_cast<double>(std::bit_cast<std::uint64_t>(term) & keep);
    }
  }
  double acc = 0;
  for (std::int64_t j = 0; j < w; ++j) acc += ll[j];
  return acc;
}

// out = (S sum_k Y_k - Y) c over a block, where out holds S = softmax(Z) on entry.
template <typename T>
void block_grad_from_softmax(T* ob, const T* yb, std::int64_t n, std::int64_t stride, std::int64_t w, T c) {
  double sy[kSliceBlock];
  for (std::int64_t j = 0; j < w; ++j) sy[j] = 0;
  for (std::int64_t cc = 0; cc < n; ++cc)
    for (std::int64_t j = 0; j < w; ++j) sy[j] += static_cast<double>(yb[cc * stride + j]);
  for (std::int64_t cc = 0; cc < n; ++cc)
    for (std::int64_t j = 0; j < w; ++j) {
      const std::int64_t i = cc * stride + j;
      ob[i] = (ob[i] * static_cast<T>(sy[j]) - yb[i]) * c;
    }
}

// Per-thread partial log-likelihoods, added in thread order (deterministic per thread count).
struct Partials {
  double v[kMaxThreads] = {};
  void add(double x) { v[omp_get_thread_num()] += x; }
  double total() const {
    double t = 0;
    for (double x : v) t += x;
    return t;
  }
};

template <typename T>
void fwd(const KernelArgs& k) {
  const int axis = k.attrs<SceAttrs>().axis;
  const T* z = data<T>(k.in[0]);
  const T* y = data<T>(k.in[1]);
  Partials ll;
  const auto block = [&](const auto& in, const auto&, Len n, Len stride, Len w) {
    T mx[kSliceBlock], se[kSliceBlock];
    exp_sums<T>(in[0], nullptr, n, stride, w, mx, se);
    ll.add(block_log_likelihood(in[0], in[1], n, stride, w, mx, se));
  };
  for_each_block<T, 2, 0>(k.in[0].shape, axis, k.threads, {z, y}, {}, block);
  data<T>(k.out[0])[0] = static_cast<T>(-ll.total() / static_cast<double>(examples(k.in[0].shape, axis)));
}

template <typename T>
void grad_fwd(const KernelArgs& k) {
  const int axis = k.attrs<SceAttrs>().axis;
  const T* z = data<T>(k.in[0]);
  const T* y = data<T>(k.in[1]);
  const T c = static_cast<T>(static_cast<double>(data<T>(k.in[2])[0]) / static_cast<double>(examples(k.in[0].shape, axis)));
  T* out = data<T>(k.out[0]);
  const auto block = [&](const auto& in, const auto& o, Len n, Len stride, Len w) {
    softmax_block<T>(in[0], o[0], n, stride, w, false);
    block_grad_from_softmax(o[0], in[1], n, stride, w, c);
  };
  for_each_block<T, 2, 1>(k.in[0].shape, axis, k.threads, {z, y}, {out}, block);
}

// softmax_cross_entropy_fused(Z, Y, g): made by the fusion pass when a program computes both
// the loss and its gradient. One traversal of each block of Z and Y computes the exponentials
// once and yields both results through the same block functions as the two separate kernels
// (so the results are bitwise those of the unfused program). The output is the gradient; the
// loss is its second output.
template <typename T>
void fused_fwd(const KernelArgs& k) {
  const int axis = k.attrs<SceAttrs>().axis;
  const T* z = data<T>(k.in[0]);
  const T* y = data<T>(k.in[1]);
  const double m = static_cast<double>(examples(k.in[0].shape, axis));
  const T c = static_cast<T>(static_cast<double>(data<T>(k.in[2])[0]) / m);
  T* out = data<T>(k.out[0]);
  Partials ll;
  const auto block = [&](const auto& in, const auto& o, Len n, Len stride, Len w) {
    T mx[kSliceBlock], se[kSliceBlock];
    exp_sums<T>(in[0], o[0], n, stride, w, mx, se);
    ll.add(block_log_likelihood(in[0], in[1], n, stride, w, mx, se));
    normalize_exps(o[0], n, stride, w, se);
    block_grad_from_softmax(o[0], in[1], n, stride, w, c);
  };
  for_each_block<T, 2, 1>(k.in[0].shape, axis, k.threads, {z, y}, {out}, block);
  data<T>(k.out[1])[0] = static_cast<T>(-ll.total() / m);
}

// g / M as a node (M may depend on the batch size).
Value per_example(const VjpArgs& a, Value v) {
  const Shape z = a.in_shape(0);
  Count cnt = count_except(z, a.attrs<SceAttrs>().axis);
  return scale_batch(v, 1.0 / cnt.fixed, -cnt.dyn_count);
}

Value sce_grad(Value z, Value y, Value g, int axis);

std::vector<Value> vjp(const VjpArgs& a) {
  std::vector<Value> out(2);
  Value Z = a.in(0), Y = a.in(1);
  const int axis = a.attrs<SceAttrs>().axis;
  if (a.wanted[0]) out[0] = sce_grad(Z, Y, a.dy(), axis);
  if (a.wanted[1]) out[1] = log_softmax(Z, axis) * neg(per_example(a, a.dy()));
  return out;
}

std::vector<Value> grad_vjp(const VjpArgs& a) {
  std::vector<Value> out(3);
  Value Z = a.in(0), Y = a.in(1), G = a.in(2), V = a.dy();
  const int axis = a.attrs<SceAttrs>().axis;
  Value c = per_example(a, G);
  Value S = softmax(Z, axis);
  Value s = (a.wanted[0] || a.wanted[2]) ? sum(Y, axis, true) : Value{};
  if (a.wanted[0] || a.wanted[1]) {
    Value vs = sum(V * S, axis, true);
    if (a.wanted[0]) out[0] = (S * (V - vs)) * s * c;
    if (a.wanted[1]) out[1] = (vs - V) * c;
  }
  if (a.wanted[2]) out[2] = per_example(a, sum(V * (S * s - Y)));
  return out;
}

}  // namespace

GG_OP(softmax_cross_entropy_op) = {.name = "softmax_cross_entropy", .arity = 2, .diff_inputs = 0b11,
                                   .kernels = {.f32 = fwd<float>, .f64 = fwd<double>}, .infer = infer, .vjp = vjp};
GG_OP(softmax_cross_entropy_grad_op) = {.name = "softmax_cross_entropy_grad", .arity = 3, .flags = kInternal,
                                        .diff_inputs = 0b111,
                                        .kernels = {.f32 = grad_fwd<float>, .f64 = grad_fwd<double>},
                                        .infer = infer_grad, .vjp = grad_vjp};
GG_OP(softmax_cross_entropy_fused_op) = {.name = "softmax_cross_entropy_fused", .arity = 3, .outputs = 2,
                                         .flags = kInternal | kNonDifferentiable,
                                         .kernels = {.f32 = fused_fwd<float>, .f64 = fused_fwd<double>},
                                         .infer = infer_fused};

namespace {

Value sce_grad(Value z, Value y, Value g, int axis) {
  return make(softmax_cross_entropy_grad_op, {z, y, g}, Attrs(SceAttrs{axis}));
}

// softmax_cross_entropy(Z, Y) and softmax_cross_entropy_grad(Z, Y, fill) of the same Z, Y and axis
// -> softmax_cross_entropy_fused(Z, Y, fill), whose outputs are the gradient and the loss. Only
// with the plain seed (a fill) as incoming gradient, so the loss can never be an ancestor of the
// fused kernel.
bool fuse_loss(Rewriter& r, int i) {
  IrNode& gr = r.at(i);
  if (gr.node.op != &softmax_cross_entropy_grad_op) return false;
  if (r.op(gr.node.inputs[2].node) != &fill_op) return false;
  for (int j = 0; j < r.size(); ++j) {
    IrNode& loss = r.at(j);
    if (loss.dead || loss.node.op != &softmax_cross_entropy_op) continue;
    if (!(loss.node.inputs[0] == gr.node.inputs[0]) || !(loss.node.inputs[1] == gr.node.inputs[1]) ||
        loss.node.attrs.as<SceAttrs>().axis != gr.node.attrs.as<SceAttrs>().axis)
      continue;
    gr.node.op = &softmax_cross_entropy_fused_op;
    gr.node.num_outputs = 2;
    gr.node.outputs[1] = loss.node.outputs[0];
    gr.node.fused = true;
    r.replace(j, {Operand{i, 1}});
    return true;
  }
  return false;
}

}  // namespace

GG_FUSION(softmax_cross_entropy_fused_rule) = {"softmax_cross_entropy_fused", 1, fuse_loss};

}  // namespace detail

Value softmax_cross_entropy(Value logits, Value targets, int axis) {
  const Shape z = logits.shape();
  const int ax = axis < 0 ? axis + z.rank : axis;
  if (!is_float(targets.dtype()))
    throw GraphError("softmax_cross_entropy: targets " + detail::describe(detail::graph_of(targets), targets.operand()) +
                     " are integer labels: call softmax_cross_entropy(logits, labels) without an axis");
  return detail::make(detail::softmax_cross_entropy_op, {logits, targets}, Attrs(detail::SceAttrs{ax}));
}

Value softmax_cross_entropy(Value logits, Value labels) {
  Graph& g = detail::graph_of(logits);
  const Shape z = logits.shape(), l = labels.shape();
  auto where = [&] { return detail::describe(g, logits.operand()) + " and " + detail::describe(g, labels.operand()); };
  if (is_float(labels.dtype()))
    throw GraphError("softmax_cross_entropy: dense targets need the class axis: softmax_cross_entropy(logits, targets, "
                     "axis) (" + where() + ")");
  int axis = -1, matches = 0;
  if (l.rank == z.rank - 1)
    for (int a = 0; a < z.rank; ++a) {
      Shape without;
      for (int i = 0; i < z.rank; ++i)
        if (i != a) without.dims[without.rank++] = z.dims[i];
      if (without == l) axis = a, ++matches;
    }
  if (matches == 0)
    throw GraphError("softmax_cross_entropy: the labels must have the logits' shape without the class axis (" + where() + ")");
  if (matches > 1)
    throw GraphError("softmax_cross_entropy: the class axis is ambiguous for " + where() +
                     ": pass one-hot targets and the axis (gg::one_hot)");
  if (z.dims[axis] == dyn)
    throw GraphError("softmax_cross_entropy: the class axis of " + where() + " is the open (dyn) dimension");
  return softmax_cross_entropy(logits, one_hot(labels, z.dims[axis], axis, logits.dtype()), axis);
}

}  // namespace gg
