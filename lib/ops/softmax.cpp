// softmax and log_softmax along one axis.
//   y = exp(x - m) / sum exp(x - m),        m = max x (starts at -inf)
//   log_softmax: y = (x - m) - log sum exp(x - m)    (never log(softmax(x)))
// VJPs, per slice along the axis, never forming the K x K Jacobian:
//   softmax:     dx = y (g - <g, y>)
//   log_softmax: dx = g - exp(y) sum(g)
#include "softmax.hpp"

#include "kernels.hpp"
#include "onnx.hpp"

#include <cmath>
#include <limits>

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// Along one axis (negative counts from the end); max-subtracted for stability.
Value softmax(Value a, int axis);
Value log_softmax(Value a, int axis);
#endif  // GG_PUBLIC_API

namespace detail {

template <typename T>
void softmax_block(const T* x, T* y, std::int64_t n, std::int64_t stride, std::int64_t w, bool log_out) {
  T mx[kSliceBlock], sum[kSliceBlock];
  exp_sums(x, log_out ? nullptr : y, n, stride, w, mx, sum);
  if (!log_out) {
    normalize_exps(y, n, stride, w, sum);
    return;
  }
#pragma omp simd
  for (std::int64_t j = 0; j < w; ++j) sum[j] = static_cast<T>(log_vec(static_cast<double>(sum[j])));
  for (std::int64_t k = 0; k < n; ++k)
    for (std::int64_t j = 0; j < w; ++j) y[k * stride + j] = static_cast<T>((x[k * stride + j] - mx[j]) - sum[j]);
}
template void softmax_block<float>(const float*, float*, std::int64_t, std::int64_t, std::int64_t, bool);
template void softmax_block<double>(const double*, double*, std::int64_t, std::int64_t, std::int64_t, bool);

namespace {

// The axis the softmax runs along (negative counts from the end).
struct AxisAttrs {
  int axis = 0;
  template <typename F> void visit(F&& f) { f("axis", axis); }
};

Outputs infer(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  const Shape& s = operand(g, n, 0).shape;
  normalize_axis(g, n, n.attrs.as<AxisAttrs>().axis, s.rank);
  return Port{t, s};
}

template <typename T, bool Log>
void fwd(const KernelArgs& k) {
  const int a = k.attrs<AxisAttrs>().axis;
  const int axis = a < 0 ? a + k.out[0].shape.rank : a;
  const T* x = data<T>(k.in[0]);
  T* y = data<T>(k.out[0]);
  const auto block = [&](const auto& in, const auto& out, Len n, Len stride, Len w) {
    softmax_block<T>(in[0], out[0], n, stride, w, Log);
  };
  for_each_block<T, 1, 1>(k.out[0].shape, axis, k.threads, {x}, {y}, block);
}

std::vector<Value> softmax_vjp(const VjpArgs& a) {
  return {a.y() * (a.dy() - sum(a.dy() * a.y(), a.attrs<AxisAttrs>().axis, true))};
}

std::vector<Value> log_softmax_vjp(const VjpArgs& a) {
  return {a.dy() - exp(a.y()) * sum(a.dy(), a.attrs<AxisAttrs>().axis, true)};
}

// ONNX: Softmax and LogSoftmax, always over the last axis of the tensor they get, where opset
// 11 (which flattens to 2-d at the axis) and opset 13 (one axis) agree, and where OpenCV's
// layer runs. A rank-2 softmax along axis 0 (classes x examples) runs on the swapped tensor
// (lib/ops/onnx.hpp), free after a product of the columns layout; another axis of a higher rank
// is moved last and back by two Transposes.
template <bool Log>
void softmax_onnx(OnnxWriter& w) {
  const char* type = Log ? "LogSoftmax" : "Softmax";
  const int r = w.in_shape(0).rank;
  const int a = w.node().attrs.as<AxisAttrs>().axis;
  const int axis = a < 0 ? a + r : a;
  if (r == 2) {
    const bool swapped = axis == 0;
    w.add(type, {w.in(0, swapped)}, {w.out(0, swapped)}, {OnnxAttr::integer("axis", 1)});
    return;
  }
  if (axis == r - 1) {
    w.add(type, {w.in(0)}, {w.out(0)}, {OnnxAttr::integer("axis", r - 1)});
    return;
  }
  std::vector<std::int64_t> perm(static_cast<std::size_t>(r));
  for (int i = 0; i < r; ++i) perm[static_cast<std::size_t>(i)] = i;
  std::swap(perm[static_cast<std::size_t>(axis)], perm[static_cast<std::size_t>(r - 1)]);  // its own inverse
  const std::string moved = w.temp("axis_last"), done = w.temp(Log ? "log_softmax" : "softmax");
  w.add("Transpose", {w.in(0)}, {moved}, {OnnxAttr::list("perm", perm)});
  w.add(type, {moved}, {done}, {OnnxAttr::integer("axis", r - 1)});
  w.add("Transpose", {done}, {w.out(0)}, {OnnxAttr::list("perm", perm)});
}

}  // namespace

GG_OP(softmax_op) = {.name = "softmax", .arity = 1, .diff_inputs = 0b1,
                     .kernels = {.f32 = fwd<float, false>, .f64 = fwd<double, false>}, .infer = infer, .vjp = softmax_vjp,
                     .onnx = softmax_onnx<false>};
GG_OP(log_softmax_op) = {.name = "log_softmax", .arity = 1, .diff_inputs = 0b1,
                         .kernels = {.f32 = fwd<float, true>, .f64 = fwd<double, true>}, .infer = infer,
                         .vjp = log_softmax_vjp, .onnx = softmax_onnx<true>};

}  // namespace detail

Value softmax(Value a, int axis) { return detail::make(detail::softmax_op, {a}, Attrs(detail::AxisAttrs{axis})); }
Value log_softmax(Value a, int axis) { return detail::make(detail::log_softmax_op, {a}, Attrs(detail::AxisAttrs{axis})); }

}  // namespace gg
