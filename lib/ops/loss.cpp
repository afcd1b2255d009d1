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
#include "kernels.hpp"
#include "softmax.hpp"

#include <cmath>
#include <limits>

namespace gg {
namespace {

using namespace detail;

int class_axis(const Shape& s, int axis) { return axis < 0 ? axis + s.rank : axis; }

Shape infer(const Graph& g, const Node& n) {
  const Shape& z = g.node(n.inputs[0]).shape;
  const Shape& y = g.node(n.inputs[1]).shape;
  if (z != y) fail(g, n, "logits and targets must have the same shape");
  if (z.rank == 0) fail(g, n, "logits must have at least one dimension");
  normalize_axis(g, n, n.attrs.axis, z.rank);
  return Shape{};
}

Shape infer_grad(const Graph& g, const Node& n) {
  const Shape& z = g.node(n.inputs[0]).shape;
  if (z != g.node(n.inputs[1]).shape) fail(g, n, "logits and targets must have the same shape");
  if (g.node(n.inputs[2]).shape.rank != 0) fail(g, n, "the incoming gradient must be a scalar");
  return z;
}

std::int64_t examples(const Shape& s, int axis) { return s.numel() / std::max<std::int64_t>(1, s.dims[axis]); }

// sum_k Y_k (Z_k - logsumexp(Z)) over a block of slices, from exp_sums' max and sums. Zero
// targets are skipped: an impossible class (log p = -inf) then costs nothing, not 0 * inf.
template <typename T>
double block_log_likelihood(const T* zb, const T* yb, std::int64_t n, std::int64_t stride, std::int64_t w, const T* mx,
                            const T* se) {
  double lse[kSliceBlock];
  for (std::int64_t j = 0; j < w; ++j) lse[j] = static_cast<double>(mx[j]) + std::log(static_cast<double>(se[j]));
  double acc = 0;
  for (std::int64_t c = 0; c < n; ++c)
    for (std::int64_t j = 0; j < w; ++j) {
      const T t = yb[c * stride + j];
      if (t != T(0)) acc += static_cast<double>(t) * (static_cast<double>(zb[c * stride + j]) - lse[j]);
    }
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
  const int axis = class_axis(k.in[0].shape, k.attrs->axis);
  const T* z = data<T>(k.in[0]);
  const T* y = data<T>(k.in[1]);
  Partials ll;
  for_each_slice<T>(k.in[0], axis, k.threads, [&](std::int64_t off, std::int64_t n, std::int64_t stride, std::int64_t w) {
    T mx[kSliceBlock], se[kSliceBlock];
    exp_sums<T>(z + off, nullptr, n, stride, w, mx, se);
    ll.add(block_log_likelihood(z + off, y + off, n, stride, w, mx, se));
  });
  data<T>(k.out)[0] = static_cast<T>(-ll.total() / static_cast<double>(examples(k.in[0].shape, axis)));
}

template <typename T>
void grad_fwd(const KernelArgs& k) {
  const int axis = class_axis(k.in[0].shape, k.attrs->axis);
  const T* z = data<T>(k.in[0]);
  const T* y = data<T>(k.in[1]);
  const T c = static_cast<T>(static_cast<double>(data<T>(k.in[2])[0]) / static_cast<double>(examples(k.in[0].shape, axis)));
  T* out = data<T>(k.out);
  for_each_slice<T>(k.in[0], axis, k.threads, [&](std::int64_t off, std::int64_t n, std::int64_t stride, std::int64_t w) {
    softmax_block<T>(z + off, out + off, n, stride, w, false);
    block_grad_from_softmax(out + off, y + off, n, stride, w, c);
  });
}

// softmax_cross_entropy_fused(Z, Y, g): made by the fusion pass when a program computes both
// the loss and its gradient. One traversal of each block of Z and Y computes the exponentials
// once and yields both results through the same block functions as the two separate kernels
// (so the results are bitwise those of the unfused program). The output is the gradient; the
// loss is stored in one extra element after it, which the loss_slot node views.
template <typename T>
void fused_fwd(const KernelArgs& k) {
  const int axis = class_axis(k.in[0].shape, k.attrs->axis);
  const T* z = data<T>(k.in[0]);
  const T* y = data<T>(k.in[1]);
  const double m = static_cast<double>(examples(k.in[0].shape, axis));
  const T c = static_cast<T>(static_cast<double>(data<T>(k.in[2])[0]) / m);
  T* out = data<T>(k.out);
  Partials ll;
  for_each_slice<T>(k.in[0], axis, k.threads, [&](std::int64_t off, std::int64_t n, std::int64_t stride, std::int64_t w) {
    T mx[kSliceBlock], se[kSliceBlock];
    exp_sums<T>(z + off, out + off, n, stride, w, mx, se);
    ll.add(block_log_likelihood(z + off, y + off, n, stride, w, mx, se));
    normalize_exps(out + off, n, stride, w, se);
    block_grad_from_softmax(out + off, y + off, n, stride, w, c);
  });
  out[k.out.numel()] = static_cast<T>(-ll.total() / m);
}

Shape infer_fused(const Graph& g, const Node& n) { return g.node(n.inputs[0]).shape; }
Shape infer_loss_slot(const Graph&, const Node&) { return Shape{}; }

// g / M as a node (M may depend on the batch size).
Value per_example(Graph& g, const Node& n, Value v) {
  const Shape& z = g.node(n.inputs[0]).shape;
  Count cnt = count_except(z, class_axis(z, n.attrs.axis));
  return scale_batch(v, 1.0 / cnt.fixed, -cnt.dyn_count);
}

std::vector<Value> vjp(Graph& g, const Node& n, Value, Value grad, const std::vector<bool>& w) {
  std::vector<Value> out(2);
  Value Z = in(g, n, 0), Y = in(g, n, 1);
  if (w[0]) out[0] = g.add_node(Op::SoftmaxCrossEntropyGrad, {Z, Y, grad}, n.attrs);
  if (w[1]) out[1] = log_softmax(Z, n.attrs.axis) * neg(per_example(g, n, grad));
  return out;
}

std::vector<Value> grad_vjp(Graph& g, const Node& n, Value, Value V, const std::vector<bool>& w) {
  std::vector<Value> out(3);
  Value Z = in(g, n, 0), Y = in(g, n, 1), G = in(g, n, 2);
  const int axis = n.attrs.axis;
  Value c = per_example(g, n, G);
  Value S = softmax(Z, axis);
  Value s = (w[0] || w[2]) ? sum(Y, axis, true) : Value{};
  if (w[0] || w[1]) {
    Value vs = sum(V * S, axis, true);
    if (w[0]) out[0] = (S * (V - vs)) * s * c;
    if (w[1]) out[1] = (vs - V) * c;
  }
  if (w[2]) out[2] = per_example(g, n, sum(V * (S * s - Y)));
  return out;
}

}  // namespace

namespace detail {
extern const OpDef kSceDef = {"softmax_cross_entropy", 2, 0, 0b11, 0, infer, fwd<float>, fwd<double>, vjp};
extern const OpDef kSceFusedDef = {"softmax_cross_entropy_fused", 3, kNonDifferentiable, 0, 0, infer_fused,
                                   fused_fwd<float>, fused_fwd<double>, nullptr};
// The loss written by softmax_cross_entropy_fused, one element past its gradient.
extern const OpDef kLossSlotDef = {"loss_slot", 1, kView | kNonDifferentiable, 0, 0, infer_loss_slot, nullptr, nullptr,
                                   nullptr};
extern const OpDef kSceGradDef = {"softmax_cross_entropy_grad", 3, 0, 0b111, 0, infer_grad, grad_fwd<float>,
                                  grad_fwd<double>, grad_vjp};
}  // namespace detail

Value softmax_cross_entropy(Value logits, Value targets, int axis) {
  Attrs at;
  at.axis = axis;
  return detail::graph_of(logits).add_node(Op::SoftmaxCrossEntropy, {logits, targets}, at);
}

}  // namespace gg
