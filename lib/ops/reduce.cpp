// Reductions and broadcasts, each the adjoint of the other:
//   sum (all):        y = sum x             dx = broadcast_to(g, shape(x))
//   sum (axis):       y = sum_axis x        dx = broadcast_to(reshape(g, keepdims shape), shape(x))
//   sum_to(shape):    sums broadcast dims   dx = broadcast_to(g, shape(x))
//   broadcast_to:     repeats               dx = sum_to(g, shape(x))
//   mean = sum * (1 / count), where count may include the open batch dimension (then the
//   factor is resolved when the program is planned for a batch size).
#include "kernels.hpp"

namespace gg {
namespace {

using namespace detail;

Shape keepdims_shape(const Shape& s, int axis) {
  Shape r = s;
  r.dims[axis] = 1;
  return r;
}

Shape infer_sum(const Graph& g, const Node& n) {
  const Shape& s = g.node(n.inputs[0]).shape;
  if (n.attrs.all_axes) {
    if (!n.attrs.keepdims) return Shape{};
    Shape r = s;
    for (int i = 0; i < r.rank; ++i) r.dims[i] = 1;
    return r;
  }
  const int axis = normalize_axis(g, n, n.attrs.axis, s.rank);
  if (n.attrs.keepdims) return keepdims_shape(s, axis);
  Shape r;
  for (int i = 0; i < s.rank; ++i)
    if (i != axis) r.dims[r.rank++] = s.dims[i];
  return r;
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

Shape infer_sum_to(const Graph& g, const Node& n) {
  const Shape& s = g.node(n.inputs[0]).shape;
  if (!sums_to(s, n.attrs.shape))
    fail(g, n, "cannot sum " + to_string(s) + " down to " + to_string(n.attrs.shape));
  return n.attrs.shape;
}

Shape infer_broadcast_to(const Graph& g, const Node& n) {
  const Shape& s = g.node(n.inputs[0]).shape;
  if (!sums_to(n.attrs.shape, s))
    fail(g, n, "cannot broadcast " + to_string(s) + " to " + to_string(n.attrs.shape));
  return n.attrs.shape;
}

// Sums `x` (contiguous) into `out` (shape `to`, right-aligned broadcast of x's shape). When
// the summed dimensions are one contiguous run [a, b) this is a middle-axis reduction; other
// patterns take a general index walk.
template <typename T>
void sum_into(const TensorView& x, const TensorView& out, int threads) {
  const Shape& s = x.shape;
  const Shape& to = out.shape;
  const int lead = s.rank - to.rank;
  int first = -1, last = -1;
  bool contiguous_run = true;
  for (int i = 0; i < s.rank; ++i) {
    const bool reduced = i < lead || (to.dims[i - lead] == 1 && s.dims[i] != 1);
    if (!reduced) continue;
    if (first < 0) first = i;
    else if (last != i - 1) contiguous_run = false;
    last = i;
  }
  const T* px = data<T>(x);
  T* po = data<T>(out);
  if (first < 0) {  // nothing to sum: a copy
    for (std::int64_t i = 0; i < x.numel(); ++i) po[i] = px[i];
    return;
  }
  if (contiguous_run) {
    std::int64_t outer = 1, n = 1, inner = 1;
    for (int i = 0; i < first; ++i) outer *= s.dims[i];
    for (int i = first; i <= last; ++i) n *= s.dims[i];
    for (int i = last + 1; i < s.rank; ++i) inner *= s.dims[i];
    reduce_middle<T>(px, po, outer, n, inner, threads);
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
  const Shape& s = k.in[0].shape;
  if (k.attrs->all_axes) {
    TensorView out = k.out;
    out.shape = Shape{};
    // Sum everything as (1, n, 1): the middle-axis reduction with a single output.
    reduce_middle<T>(data<T>(k.in[0]), data<T>(k.out), 1, s.numel(), 1, k.threads);
    return;
  }
  const int axis = k.attrs->axis < 0 ? k.attrs->axis + s.rank : k.attrs->axis;
  const Split3 sp = split_at(s, axis);
  reduce_middle<T>(data<T>(k.in[0]), data<T>(k.out), sp.outer, sp.n, sp.inner, k.threads);
}

template <typename T>
void sum_to_fwd(const KernelArgs& k) {
  sum_into<T>(k.in[0], k.out, k.threads);
}

template <typename T>
void broadcast_to_fwd(const KernelArgs& k) {
  const Shape& s = k.out.shape;
  const T* px = data<T>(k.in[0]);
  T* po = data<T>(k.out);
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

std::vector<Value> sum_vjp(Graph& g, const Node& n, Value, Value grad, const std::vector<bool>&) {
  const Shape s = g.node(n.inputs[0]).shape;  // a copy: reshape() below may move the graph's storage
  if (n.attrs.all_axes || n.attrs.keepdims) return {broadcast_to(grad, s)};
  const int axis = n.attrs.axis < 0 ? n.attrs.axis + s.rank : n.attrs.axis;
  return {broadcast_to(reshape(grad, keepdims_shape(s, axis)), s)};
}

std::vector<Value> sum_to_vjp(Graph& g, const Node& n, Value, Value grad, const std::vector<bool>&) {
  return {broadcast_to(grad, g.node(n.inputs[0]).shape)};
}

std::vector<Value> broadcast_to_vjp(Graph& g, const Node& n, Value, Value grad, const std::vector<bool>&) {
  return {sum_to(grad, g.node(n.inputs[0]).shape)};
}

Value sum_node(Value a, bool all, int axis, bool keepdims) {
  Attrs at;
  at.all_axes = all;
  at.axis = axis;
  at.keepdims = keepdims;
  return graph_of(a).add_node(Op::Sum, {a}, at);
}

}  // namespace

namespace detail {
extern const OpDef kSumDef = {"sum", 1, 0, 0b1, 0, infer_sum, sum_fwd<float>, sum_fwd<double>, sum_vjp};
extern const OpDef kSumToDef = {"sum_to", 1, 0, 0b1, 0, infer_sum_to, sum_to_fwd<float>, sum_to_fwd<double>, sum_to_vjp};
extern const OpDef kBroadcastToDef = {"broadcast_to", 1, 0, 0b1, 0, infer_broadcast_to, broadcast_to_fwd<float>,
                                      broadcast_to_fwd<double>, broadcast_to_vjp};

Count count_except(const Shape& shape, int axis) {
  Count c;
  for (int i = 0; i < shape.rank; ++i) {
    if (i == axis) continue;
    if (shape.dims[i] == dyn)
      ++c.dyn_count;
    else
      c.fixed *= static_cast<double>(shape.dims[i]);
  }
  return c;
}
}  // namespace detail

Value sum(Value a) { return sum_node(a, true, 0, false); }
Value sum(Value a, int axis, bool keepdims) { return sum_node(a, false, axis, keepdims); }

Value mean(Value a) {
  detail::Count c = detail::count_except(a.shape(), -1);
  return detail::scale_batch(sum(a), 1.0 / c.fixed, -c.dyn_count);
}

Value mean(Value a, int axis, bool keepdims) {
  Value s = sum(a, axis, keepdims);  // validates the axis
  const int ax = axis < 0 ? axis + a.shape().rank : axis;
  const std::int64_t d = a.shape()[ax];
  return d == dyn ? detail::scale_batch(s, 1.0, -1) : scale(s, 1.0 / static_cast<double>(d));
}

Value sum_to(Value a, const Shape& shape) {
  Attrs at;
  at.shape = shape;
  return detail::graph_of(a).add_node(Op::SumTo, {a}, at);
}

Value broadcast_to(Value a, const Shape& shape) {
  if (a.shape() == shape) return a;
  Attrs at;
  at.shape = shape;
  return detail::graph_of(a).add_node(Op::BroadcastTo, {a}, at);
}

}  // namespace gg
