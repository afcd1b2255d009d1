// Reductions and broadcasts, each the adjoint of the other:
//   sum(axes):        y = sum over the axes of x   dx = broadcast_to(reshape(g, keepdims shape), shape(x))
//   sum_to(shape):    sums broadcast dims away     dx = broadcast_to(g, shape(x))
//   broadcast_to:     repeats                      dx = sum_to(g, shape(x))
//   max(axes), min(axes): the largest / smallest element (NaN propagates)
//                     dx = g 1[x = y] / #{x = y}: the gradient goes to the elements equal to
//                     the result, shared equally between ties (PyTorch's amax / amin)
//   mean = sum * (1 / count), where count may include the open batch dimension (then the
//   factor is resolved when the program is planned for a batch size).
// Numerics: float32 sums are accumulated in double where the summed axes are one contiguous
// run (every single-axis and whole-tensor sum): blocks of 256 in T and block totals in double
// along rows, fully in double down columns. Other axis patterns take an index walk in T.
#include "kernels.hpp"
#include "onnx.hpp"

#include <limits>

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// Reductions: over every axis (a scalar), one axis, or several (negative axes count from the
// end); keepdims leaves the reduced axes in place with extent 1.
Value sum(Value a);
Value sum(Value a, int axis, bool keepdims = false);
Value sum(Value a, const std::vector<int>& axes, bool keepdims = false);
Value mean(Value a);
Value mean(Value a, int axis, bool keepdims = false);
Value mean(Value a, const std::vector<int>& axes, bool keepdims = false);
// Largest / smallest element over every axis, one axis or several; NaN propagates. The gradient
// goes to the elements equal to the result, shared equally between ties.
Value max(Value a);
Value max(Value a, int axis, bool keepdims = false);
Value max(Value a, const std::vector<int>& axes, bool keepdims = false);
Value min(Value a);
Value min(Value a, int axis, bool keepdims = false);
Value min(Value a, const std::vector<int>& axes, bool keepdims = false);
// Sums broadcast dimensions away so that the result has `shape` (the adjoint of broadcast_to).
Value sum_to(Value a, const Shape& shape);
Value broadcast_to(Value a, const Shape& shape);
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

// Which axes a reduction removes (or keeps with extent 1).
struct ReduceAttrs {
  AxisSet axes;
  bool keepdims = false;
  template <typename F> void visit(F&& f) { f("axes", axes), f("keepdims", keepdims); }
};

// The target shape of sum_to / broadcast_to.
struct ShapeAttrs {
  Shape shape;
  template <typename F> void visit(F&& f) { f("shape", shape); }
};

// x's shape with the reduced axes set to 1.
Shape keepdims_shape(const Shape& s, AxisSet axes) {
  Shape r = s;
  for (int i = 0; i < s.rank; ++i)
    if (axes.has(i)) r.dims[i] = 1;
  return r;
}

Shape reduced_shape(const Shape& s, AxisSet axes, bool keepdims) {
  if (keepdims) return keepdims_shape(s, axes);
  Shape r;
  for (int i = 0; i < s.rank; ++i)
    if (!axes.has(i)) r.dims[r.rank++] = s.dims[i];
  return r;
}

Outputs infer_sum(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  const ReduceAttrs& a = n.attrs.as<ReduceAttrs>();
  const Shape& s = operand(g, n, 0).shape;
  if (a.axes.bits >> s.rank) fail(g, n, "an axis is out of range for rank " + std::to_string(s.rank));
  return Port{t, reduced_shape(s, a.axes, a.keepdims)};
}

// Is `to` reachable from `from` by summing broadcast dimensions (NumPy rules, right-aligned)?
bool sums_to(const Shape& from, const Shape& to) {
  if (to.rank > from.rank) return false;
  for (int i = 0; i < to.rank; ++i) {
    std::int64_t f = from.dims[from.rank - to.rank + i], t = to.dims[i];
    if (t != f && t != 1) return false;
  }
  return true;
}

Outputs infer_sum_to(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  const Shape& s = operand(g, n, 0).shape;
  const Shape& to = n.attrs.as<ShapeAttrs>().shape;
  if (!sums_to(s, to)) fail(g, n, "cannot sum " + to_string(s) + " down to " + to_string(to));
  return Port{t, to};
}

Outputs infer_broadcast_to(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  const Shape& s = operand(g, n, 0).shape;
  const Shape& to = n.attrs.as<ShapeAttrs>().shape;
  if (!sums_to(to, s)) fail(g, n, "cannot broadcast " + to_string(s) + " to " + to_string(to));
  return Port{t, to};
}

// Sums `x` (contiguous) into `out`, whose shape `to` is x's with some dimensions set to 1 (or
// removed on the left, NumPy's right alignment). When the summed dimensions are one contiguous
// run (dimensions of extent 1 count as neither) this is a middle-axis reduction; when the kept
// ones are, a reduction around them; other patterns take a general index walk.
template <typename T>
void sum_into(const TensorView& x, const TensorView& out, int threads) {
  const Shape& s = x.shape;
  const Shape& to = out.shape;
  const int lead = s.rank - to.rank;
  const T* px = data<T>(x);
  T* po = data<T>(out);
  MiddleRun m;
  if (middle_run(s, to, m)) {
    if (m.copy) {  // nothing to sum
      for (std::int64_t i = 0; i < x.numel(); ++i) po[i] = px[i];
    } else {
      reduce_middle<T>(px, po, m.outer, m.n, m.inner, threads);
    }
    return;
  }
  // The kept dimensions one contiguous run between summed ones, x as (A, K, B): a bias gradient
  // over NCHW, {N, C, H, W} -> {C, 1, 1}. Each thread owns output elements k and adds its rows
  // of B in a fixed order, in double for float: deterministic, and parallel.
  int kfirst = -1, klast = -1;
  bool kept_run = true;
  for (int i = 0; i < s.rank; ++i) {
    if (s.dims[i] == 1) continue;
    const bool reduced = i < lead || to.dims[i - lead] == 1;
    if (reduced) continue;
    if (kfirst >= 0 && klast != i - 1)
      for (int j = klast + 1; j < i; ++j)
        if (s.dims[j] != 1) kept_run = false;
    if (kfirst < 0) kfirst = i;
    klast = i;
  }
  if (kept_run && kfirst >= 0) {
    std::int64_t A = 1, K = 1, B = 1;
    for (int i = 0; i < kfirst; ++i) A *= s.dims[i];
    for (int i = kfirst; i <= klast; ++i) K *= s.dims[i];
    for (int i = klast + 1; i < s.rank; ++i) B *= s.dims[i];
    parallel_for(K, threads, A * B, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t k = lo; k < hi; ++k) {
        double total = 0;
        for (std::int64_t a = 0; a < A; ++a) {
          const T* row = px + (a * K + k) * B;
          T acc = 0;  // a row of B in T (vectorised: lanes, then lanes added), rows added in double
#pragma omp simd reduction(+ : acc)
          for (std::int64_t b = 0; b < B; ++b) acc += row[b];
          total += acc;
        }
        po[k] = static_cast<T>(total);
      }
    });
    return;
  }
  const std::int64_t no = out.numel();
  for (std::int64_t i = 0; i < no; ++i) po[i] = 0;
  const Strides so = broadcast_strides(out, s);
  IndexWalker w(s);
  const std::int64_t n = x.numel();
  for (std::int64_t i = 0; i < n; ++i, w.next()) {
    std::int64_t off = 0;
    for (int d = 0; d < s.rank; ++d) off += w.idx[d] * so[d];
    po[off] += px[i];
  }
}

template <typename T>
void sum_fwd(const KernelArgs& k) {
  const ReduceAttrs& a = k.attrs<ReduceAttrs>();
  TensorView out = k.out[0];
  out.shape = keepdims_shape(k.in[0].shape, a.axes);  // the same memory, reduced axes kept as 1
  out.strides = contiguous_strides(out.shape);
  sum_into<T>(k.in[0], out, k.threads);
}

// out = max (or min) of x over the reduced axes, by an index walk over x: each element is
// compared with its output slot. NaN wins (x != x), so it propagates as in NumPy.
template <typename T, bool Max>
void extreme_fwd(const KernelArgs& k) {
  const ReduceAttrs& a = k.attrs<ReduceAttrs>();
  const TensorView& x = k.in[0];
  const Shape kept = keepdims_shape(x.shape, a.axes);
  const Strides so = broadcast_strides(TensorView(k.out[0].data, k.out[0].dtype, kept), x.shape);
  const T* px = data<T>(x);
  T* po = data<T>(k.out[0]);
  const T start = Max ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
  for (std::int64_t i = 0, n = k.out[0].numel(); i < n; ++i) po[i] = start;
  IndexWalker w(x.shape);
  for (std::int64_t i = 0, n = x.numel(); i < n; ++i, w.next()) {
    std::int64_t off = 0;
    for (int d = 0; d < x.shape.rank; ++d) off += w.idx[d] * so[d];
    const T v = px[i];
    if ((Max ? v > po[off] : v < po[off]) || v != v) po[off] = v;
  }
}

template <typename T>
void sum_to_fwd(const KernelArgs& k) {
  sum_into<T>(k.in[0], k.out[0], k.threads);
}

template <typename T>
void broadcast_to_fwd(const KernelArgs& k) {
  const Shape& s = k.out[0].shape;
  const T* px = data<T>(k.in[0]);
  T* po = data<T>(k.out[0]);
  if (s.rank == 0) {
    po[0] = px[0];
    return;
  }
  const Strides sx = broadcast_strides(k.in[0], s);
  const int last = s.rank - 1;
  const std::int64_t L = s.dims[last], rows = L ? s.numel() / L : 0, il = sx[last];
  parallel_for(rows, k.threads, L, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t r = lo; r < hi; ++r) {
      std::int64_t off = 0, rem = r;
      for (int d = last - 1; d >= 0; --d) {
        off += (rem % s.dims[d]) * sx[d];
        rem /= s.dims[d];
      }
      T* ro = po + r * L;
      if (il == 0)
        for (std::int64_t j = 0; j < L; ++j) ro[j] = px[off];
      else
        for (std::int64_t j = 0; j < L; ++j) ro[j] = px[off + j * il];
    }
  });
}

std::vector<Value> sum_vjp(const VjpArgs& v) {
  const ReduceAttrs& a = v.attrs<ReduceAttrs>();
  const Shape s = v.in_shape(0);
  if (a.keepdims) return {broadcast_to(v.dy(), s)};
  return {broadcast_to(reshape(v.dy(), keepdims_shape(s, a.axes)), s)};
}

// g and y back over x's shape; the mask 1[x = y] (a constant for the gradient: `equal` is not
// differentiable) counts the ties per output element.
std::vector<Value> extreme_vjp(const VjpArgs& v) {
  const ReduceAttrs& a = v.attrs<ReduceAttrs>();
  const Shape s = v.in_shape(0), kept = keepdims_shape(s, a.axes);
  std::vector<int> axes;
  for (int i = 0; i < s.rank; ++i)
    if (a.axes.has(i)) axes.push_back(i);
  Value x = v.in(0);
  Value y = broadcast_to(reshape(v.y(), kept), s);
  Value g = broadcast_to(reshape(v.dy(), kept), s);
  Value mask = cast(equal(x, y), x.dtype());
  Value ties = broadcast_to(sum(mask, axes, true), s);
  return {g * mask / ties};
}

std::vector<Value> sum_to_vjp(const VjpArgs& v) { return {broadcast_to(v.dy(), v.in_shape(0))}; }
std::vector<Value> broadcast_to_vjp(const VjpArgs& v) { return {sum_to(v.dy(), v.in_shape(0))}; }

// ONNX: ReduceSum with its axes as an attribute (opset 11), keepdims as ours. mean is sum then
// scale, so a mean over fixed axes (global_avg_pool) exports as ReduceSum and Mul.
void sum_onnx(OnnxWriter& w) {
  const ReduceAttrs& a = w.node().attrs.as<ReduceAttrs>();
  std::vector<std::int64_t> axes;
  for (int i = 0; i < w.in_shape(0).rank; ++i)
    if (a.axes.has(i)) axes.push_back(i);
  w.add("ReduceSum", {w.in(0)}, {w.out(0)}, {OnnxAttr::list("axes", axes), OnnxAttr::integer("keepdims", a.keepdims ? 1 : 0)});
}

}  // namespace

GG_OP(sum_op) = {.name = "sum", .arity = 1, .diff_inputs = 0b1,
                 .kernels = {.f32 = sum_fwd<float>, .f64 = sum_fwd<double>}, .infer = infer_sum, .vjp = sum_vjp,
                 .onnx = sum_onnx};
GG_OP(max_op) = {.name = "max", .arity = 1, .diff_inputs = 0b1,
                 .kernels = {.f32 = extreme_fwd<float, true>, .f64 = extreme_fwd<double, true>}, .infer = infer_sum,
                 .vjp = extreme_vjp};
GG_OP(min_op) = {.name = "min", .arity = 1, .diff_inputs = 0b1,
                 .kernels = {.f32 = extreme_fwd<float, false>, .f64 = extreme_fwd<double, false>}, .infer = infer_sum,
                 .vjp = extreme_vjp};
GG_OP(sum_to_op) = {.name = "sum_to", .arity = 1, .diff_inputs = 0b1,
                    .kernels = {.f32 = sum_to_fwd<float>, .f64 = sum_to_fwd<double>}, .infer = infer_sum_to,
                    .vjp = sum_to_vjp};
GG_OP(broadcast_to_op) = {.name = "broadcast_to", .arity = 1, .diff_inputs = 0b1,
                          .kernels = {.f32 = broadcast_to_fwd<float>, .f64 = broadcast_to_fwd<double>},
                          .infer = infer_broadcast_to, .vjp = broadcast_to_vjp};

namespace {

// The axes as a set; throws GraphError naming the operand for an axis out of range or repeated.
AxisSet axis_set(Value a, const char* op, const std::vector<int>& axes) {
  const Shape s = a.shape();
  AxisSet set;
  for (int axis : axes) {
    const int ax = axis < 0 ? axis + s.rank : axis;
    if (ax < 0 || ax >= s.rank || set.has(ax))
      throw GraphError(std::string(op) + ": axis " + std::to_string(axis) + (ax >= 0 && ax < s.rank ? " is repeated" : " is out of range") +
                       " for " + describe(*a.graph, a.operand()));
    set.add(ax);
  }
  return set;
}

AxisSet all_axes(Value a) {
  AxisSet set;
  for (int i = 0; i < a.shape().rank; ++i) set.add(i);
  return set;
}

Value sum_node(Value a, AxisSet axes, bool keepdims) { return make(sum_op, {a}, Attrs(ReduceAttrs{axes, keepdims})); }

Value mean_node(Value a, AxisSet axes, bool keepdims) {
  const Shape s = a.shape();
  Count c;
  for (int i = 0; i < s.rank; ++i)
    if (axes.has(i)) {
      if (s.dims[i] == dyn)
        ++c.dyn_count;
      else
        c.fixed *= static_cast<double>(s.dims[i]);
    }
  Value total = sum_node(a, axes, keepdims);
  return c.dyn_count ? scale_batch(total, 1.0 / c.fixed, -c.dyn_count) : scale(total, 1.0 / c.fixed);
}

}  // namespace
}  // namespace detail

Value sum(Value a) { return detail::sum_node(a, detail::all_axes(a), false); }
Value sum(Value a, int axis, bool keepdims) { return detail::sum_node(a, detail::axis_set(a, "sum", {axis}), keepdims); }
Value sum(Value a, const std::vector<int>& axes, bool keepdims) {
  return detail::sum_node(a, detail::axis_set(a, "sum", axes), keepdims);
}

Value mean(Value a) { return detail::mean_node(a, detail::all_axes(a), false); }
Value mean(Value a, int axis, bool keepdims) { return detail::mean_node(a, detail::axis_set(a, "mean", {axis}), keepdims); }
Value mean(Value a, const std::vector<int>& axes, bool keepdims) {
  return detail::mean_node(a, detail::axis_set(a, "mean", axes), keepdims);
}

Value max(Value a) { return detail::make(detail::max_op, {a}, Attrs(detail::ReduceAttrs{detail::all_axes(a), false})); }
Value max(Value a, int axis, bool keepdims) {
  return detail::make(detail::max_op, {a}, Attrs(detail::ReduceAttrs{detail::axis_set(a, "max", {axis}), keepdims}));
}
Value max(Value a, const std::vector<int>& axes, bool keepdims) {
  return detail::make(detail::max_op, {a}, Attrs(detail::ReduceAttrs{detail::axis_set(a, "max", axes), keepdims}));
}

Value min(Value a) { return detail::make(detail::min_op, {a}, Attrs(detail::ReduceAttrs{detail::all_axes(a), false})); }
Value min(Value a, int axis, bool keepdims) {
  return detail::make(detail::min_op, {a}, Attrs(detail::ReduceAttrs{detail::axis_set(a, "min", {axis}), keepdims}));
}
Value min(Value a, const std::vector<int>& axes, bool keepdims) {
  return detail::make(detail::min_op, {a}, Attrs(detail::ReduceAttrs{detail::axis_set(a, "min", axes), keepdims}));
}

Value sum_to(Value a, const Shape& shape) { return detail::make(detail::sum_to_op, {a}, Attrs(detail::ShapeAttrs{shape})); }

Value broadcast_to(Value a, const Shape& shape) {
  if (a.shape() == shape) return a;
  return detail::make(detail::broadcast_to_op, {a}, Attrs(detail::ShapeAttrs{shape}));
}

}  // namespace gg
