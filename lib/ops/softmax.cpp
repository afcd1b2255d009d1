// softmax and log_softmax along one axis.
//   y = exp(x - m) / sum exp(x - m),        m = max x (starts at -inf)
//   log_softmax: y = (x - m) - log sum exp(x - m)    (never log(softmax(x)))
// VJPs, per slice along the axis, never forming the K x K Jacobian:
//   softmax:     dx = y (g - <g, y>)
//   log_softmax: dx = g - exp(y) sum(g)
#include "softmax.hpp"

#include "kernels.hpp"

#include <cmath>
#include <limits>

namespace gg {
namespace detail {

template <typename T>
void softmax_block(const T* x, T* y, std::int64_t n, std::int64_t stride, std::int64_t w, bool log_out) {
  T mx[kSliceBlock], sum[kSliceBlock];
  exp_sums(x, log_out ? nullptr : y, n, stride, w, mx, sum);
  if (!log_out) {
    normalize_exps(y, n, stride, w, sum);
    return;
  }
  for (std::int64_t j = 0; j < w; ++j) sum[j] = std::log(sum[j]);
  for (std::int64_t k = 0; k < n; ++k)
    for (std::int64_t j = 0; j < w; ++j) y[k * stride + j] = static_cast<T>((x[k * stride + j] - mx[j]) - sum[j]);
}
template void softmax_block<float>(const float*, float*, std::int64_t, std::int64_t, std::int64_t, bool);
template void softmax_block<double>(const double*, double*, std::int64_t, std::int64_t, std::int64_t, bool);

}  // namespace detail

namespace {
using namespace detail;

Shape infer(const Graph& g, const Node& n) {
  const Shape& s = g.node(n.inputs[0]).shape;
  normalize_axis(g, n, n.attrs.axis, s.rank);
  return s;
}

template <typename T, bool Log>
void fwd(const KernelArgs& k) {
  const int axis = k.attrs->axis < 0 ? k.attrs->axis + k.out.shape.rank : k.attrs->axis;
  const T* x = data<T>(k.in[0]);
  T* y = data<T>(k.out);
  for_each_slice<T>(k.out, axis, k.threads, [&](std::int64_t off, std::int64_t n, std::int64_t stride, std::int64_t w) {
    softmax_block<T>(x + off, y + off, n, stride, w, Log);
  });
}

std::vector<Value> softmax_vjp(Graph&, const Node& n, Value y, Value g, const std::vector<bool>&) {
  return {y * (g - sum(g * y, n.attrs.axis, true))};
}

std::vector<Value> log_softmax_vjp(Graph&, const Node& n, Value y, Value g, const std::vector<bool>&) {
  return {g - exp(y) * sum(g, n.attrs.axis, true)};
}

}  // namespace

namespace detail {
extern const OpDef kSoftmaxDef = {"softmax", 1, 0, 0b1, 0, infer, fwd<float, false>, fwd<double, false>, softmax_vjp};
extern const OpDef kLogSoftmaxDef = {"log_softmax", 1, 0, 0b1, 0, infer, fwd<float, true>, fwd<double, true>,
                                     log_softmax_vjp};
}  // namespace detail

Value softmax(Value a, int axis) {
  Attrs at;
  at.axis = axis;
  return detail::graph_of(a).add_node(Op::Softmax, {a}, at);
}

Value log_softmax(Value a, int axis) {
  Attrs at;
  at.axis = axis;
  return detail::graph_of(a).add_node(Op::LogSoftmax, {a}, at);
}

}  // namespace gg
