// Shape ops.
//   reshape:   a view of the same contiguous memory (no kernel)   dx = reshape(g, shape(x))
//   slice:     a view of [begin, end) along one axis (no kernel)   dx = unslice(g): g in place, zeros elsewhere
//   transpose: a copy with permuted axes                           dx = transpose(g, perm^-1)
// Views are declared to the planner (alias + layout function), which keeps their operand's buffer
// alive as long as the view is read, and copies a non-contiguous view into a buffer of its own
// only for a reader that needs contiguous memory.
#include "kernels.hpp"
#include "onnx.hpp"

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// The same elements with another shape (equal sizes; as many dyn dimensions): a view, no copy.
Value reshape(Value a, const Shape& shape);
// Elements [begin, end) along `axis` (negative counts from the end): a view, no copy.
Value slice(Value a, int axis, std::int64_t begin, std::int64_t end);
Value transpose(Value a);                           // rank 2: swap the two axes
Value transpose(Value a, std::vector<int> perm);    // output axis i is input axis perm[i]
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

struct ReshapeAttrs {
  Shape shape;
  template <typename F> void visit(F&& f) { f("shape", shape); }
};

// [begin, end) along axis; unslice writes g there in a tensor whose axis has extent `size`.
struct SliceAttrs {
  int axis = 0;
  std::int64_t begin = 0, end = 0, size = 0;
  template <typename F> void visit(F&& f) { f("axis", axis), f("begin", begin), f("end", end), f("size", size); }
};

// Output axis i is input axis perm[i].
struct PermAttrs {
  Shape perm;
  template <typename F> void visit(F&& f) { f("perm", perm); }
};

// Sizes agree when the static parts have equal products and both have as many open dims.
Outputs infer_reshape(const Graph& g, const Node& n) {
  const Port& x = operand(g, n, 0);
  const Shape& t = n.attrs.as<ReshapeAttrs>().shape;
  Count a = count_except(x.shape, -1), b = count_except(t, -1);
  if (a.fixed != b.fixed || a.dyn_count != b.dyn_count)
    fail(g, n, "cannot reshape " + to_string(x.shape) + " to " + to_string(t) + " (sizes differ)");
  return Port{x.dtype, t};
}

bool reshape_view(const Node&, const Layout& in, const Shape& out_shape, Layout& out) {
  if (!in.contiguous()) return false;
  out.shape = out_shape;
  out.strides = contiguous_strides(out_shape);
  out.offset = in.offset;
  return true;
}

Outputs infer_slice(const Graph& g, const Node& n) {
  const Port& x = operand(g, n, 0);
  const SliceAttrs& a = n.attrs.as<SliceAttrs>();
  if (a.axis < 0 || a.axis >= x.shape.rank) fail(g, n, "axis out of range");
  const std::int64_t d = x.shape.dims[a.axis];
  if (d == dyn) fail(g, n, "cannot slice along the open (dyn) dimension");
  if (a.begin < 0 || a.begin > a.end || a.end > d)
    fail(g, n, std::string("[").append(std::to_string(a.begin)).append(", ").append(std::to_string(a.end)).append(") is not a range of 0..").append(std::to_string(d)));
  Shape s = x.shape;
  s.dims[a.axis] = a.end - a.begin;
  return Port{x.dtype, s};
}

bool slice_view(const Node& n, const Layout& in, const Shape& out_shape, Layout& out) {
  const SliceAttrs& a = n.attrs.as<SliceAttrs>();
  out.shape = out_shape;
  out.strides = in.strides;
  out.offset = in.offset + a.begin * in.strides[a.axis];
  return true;
}

Outputs infer_unslice(const Graph& g, const Node& n) {
  const Port& x = operand(g, n, 0);
  const SliceAttrs& a = n.attrs.as<SliceAttrs>();
  Shape s = x.shape;
  s.dims[a.axis] = a.size;
  return Port{require_float(g, n, 0), s};
}

template <typename T>
void unslice_fwd(const KernelArgs& k) {
  const SliceAttrs& a = k.attrs<SliceAttrs>();
  const Split3 in = split_at(k.in[0].shape, a.axis);
  const T* g = data<T>(k.in[0]);
  T* o = data<T>(k.out[0]);
  for (std::int64_t i = 0, n = k.out[0].numel(); i < n; ++i) o[i] = T(0);
  for (std::int64_t outer = 0; outer < in.outer; ++outer)
    for (std::int64_t j = 0; j < in.n; ++j) {
      const T* src = g + (outer * in.n + j) * in.inner;
      T* dst = o + (outer * a.size + a.begin + j) * in.inner;
      for (std::int64_t i = 0; i < in.inner; ++i) dst[i] = src[i];
    }
}

Outputs infer_transpose(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  const Shape& s = operand(g, n, 0).shape;
  const Shape& perm = n.attrs.as<PermAttrs>().perm;
  if (perm.rank != s.rank) fail(g, n, "perm " + to_string(perm) + " does not have one entry per axis of " + to_string(s));
  Shape r = s;
  bool seen[kMaxRank] = {};
  for (int i = 0; i < s.rank; ++i) {
    const std::int64_t p = perm.dims[i];
    if (p < 0 || p >= s.rank || seen[p]) fail(g, n, "perm " + to_string(perm) + " is not a permutation of the axes of " + to_string(s));
    seen[p] = true;
    r.dims[i] = s.dims[p];
  }
  return Port{t, r};
}

template <typename T>
void transpose_fwd(const KernelArgs& k) {
  const TensorView& x = k.in[0];
  const Shape& s = k.out[0].shape;
  const Shape& perm = k.attrs<PermAttrs>().perm;
  Strides src;  // stride in x of each output axis
  for (int i = 0; i < s.rank; ++i) src.s[i] = x.strides[static_cast<int>(perm.dims[i])];
  const T* px = data<T>(x);
  T* po = data<T>(k.out[0]);
  if (s.rank == 0) {
    po[0] = px[0];
    return;
  }
  const int last = s.rank - 1;
  const std::int64_t L = s.dims[last], rows = L ? s.numel() / L : 0;
  parallel_for(rows, k.threads, L, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t r = lo; r < hi; ++r) {
      std::int64_t off = 0, rem = r;
      for (int d = last - 1; d >= 0; --d) {
        off += (rem % s.dims[d]) * src[d];
        rem /= s.dims[d];
      }
      for (std::int64_t j = 0; j < L; ++j) po[r * L + j] = px[off + j * src[last]];
    }
  });
}

Value unslice(Value g, SliceAttrs a);

std::vector<Value> reshape_vjp(const VjpArgs& a) { return {reshape(a.dy(), a.in_shape(0))}; }
std::vector<Value> slice_vjp(const VjpArgs& a) { return {unslice(a.dy(), a.attrs<SliceAttrs>())}; }
std::vector<Value> unslice_vjp(const VjpArgs& a) {
  const SliceAttrs& s = a.attrs<SliceAttrs>();
  return {slice(a.dy(), s.axis, s.begin, s.end)};
}
std::vector<Value> transpose_vjp(const VjpArgs& a) {
  const Shape& perm = a.attrs<PermAttrs>().perm;
  std::vector<int> inv(static_cast<std::size_t>(perm.rank));
  for (int i = 0; i < perm.rank; ++i) inv[static_cast<std::size_t>(perm.dims[i])] = i;
  return {transpose(a.dy(), inv)};
}

// ONNX: a reshape of a constant (a conv bias {OC} to {OC, 1, 1}) is stored reshaped. Joining
// every axis after the first is Flatten (axis 1), the form runtimes know from CNN exports;
// other reshapes are Reshape with -1 for the open dimension (one at most).
void reshape_onnx(OnnxWriter& w) {
  const Shape to = w.node().out().shape, from = w.in_shape(0);
  if (w.is_constant(0)) return w.constant_out(0, reshaped_copy(w.constant(0), to));
  if (to.rank == 2 && from.rank >= 2 && to[0] == from[0] && to[1] != dyn) {
    w.add("Flatten", {w.in(0)}, {w.out(0)}, {OnnxAttr::integer("axis", 1)});
    return;
  }
  std::vector<std::int64_t> dims;
  int open = 0;
  for (int d = 0; d < to.rank; ++d) open += to[d] == dyn, dims.push_back(to[d] == dyn ? -1 : to[d]);
  if (open > 1) w.refuse("has " + std::to_string(open) + " open dimensions, which ONNX's Reshape cannot infer");
  const Shape ds{static_cast<std::int64_t>(dims.size())};
  w.add("Reshape", {w.in(0), w.initializer(Tensor::from<std::int64_t>(ds, dims), "shape")}, {w.out(0)});
}

// ONNX: Transpose; swapping the two axes of a rank-2 value costs nothing (the writer holds it
// swapped, lib/ops/onnx.hpp).
void transpose_onnx(OnnxWriter& w) {
  const Shape& perm = w.node().attrs.as<PermAttrs>().perm;
  if (perm.rank == 2 && perm[0] == 1) return w.swapped_of(0, 0);
  w.add("Transpose", {w.in(0)}, {w.out(0)}, {OnnxAttr::list("perm", std::vector<std::int64_t>(perm.dims, perm.dims + perm.rank))});
}

}  // namespace

GG_OP(reshape_op) = {.name = "reshape", .arity = 1, .diff_inputs = 0b1, .alias = 0, .view = reshape_view,
                     .infer = infer_reshape, .vjp = reshape_vjp, .onnx = reshape_onnx};
GG_OP(slice_op) = {.name = "slice", .arity = 1, .flags = kStrided, .diff_inputs = 0b1, .alias = 0, .view = slice_view,
                   .infer = infer_slice, .vjp = slice_vjp};
GG_OP(unslice_op) = {.name = "unslice", .arity = 1, .flags = kInternal, .diff_inputs = 0b1,
                     .kernels = {.f32 = unslice_fwd<float>, .f64 = unslice_fwd<double>}, .infer = infer_unslice,
                     .vjp = unslice_vjp};
GG_OP(transpose_op) = {.name = "transpose", .arity = 1, .flags = kStrided, .diff_inputs = 0b1,
                       .kernels = {.f32 = transpose_fwd<float>, .f64 = transpose_fwd<double>}, .infer = infer_transpose,
                       .vjp = transpose_vjp, .onnx = transpose_onnx};

namespace {
Value unslice(Value g, SliceAttrs a) { return make(unslice_op, {g}, Attrs(a)); }
}  // namespace

}  // namespace detail

Value reshape(Value a, const Shape& shape) {
  if (a.shape() == shape) return a;
  return detail::make(detail::reshape_op, {a}, Attrs(detail::ReshapeAttrs{shape}));
}

Value slice(Value a, int axis, std::int64_t begin, std::int64_t end) {
  const Shape s = a.shape();
  const int ax = axis < 0 ? axis + s.rank : axis;
  return detail::make(detail::slice_op, {a},
                      Attrs(detail::SliceAttrs{ax, begin, end, ax >= 0 && ax < s.rank ? s.dims[ax] : 0}));
}

Value transpose(Value a) { return transpose(a, {1, 0}); }

Value transpose(Value a, std::vector<int> perm) {
  const Shape s = a.shape();
  if (static_cast<int>(perm.size()) != s.rank)
    throw GraphError("transpose: perm has " + std::to_string(perm.size()) + " axes but '" + a.name() + "' has shape " +
                     to_string(s));
  std::vector<std::int64_t> p(perm.begin(), perm.end());
  for (std::int64_t x : p)
    if (x < 0 || x >= s.rank) throw GraphError("transpose: perm entry " + std::to_string(x) + " is not an axis of '" + a.name() + "' " + to_string(s));
  return detail::make(detail::transpose_op, {a}, Attrs(detail::PermAttrs{Shape(std::span<const std::int64_t>(p))}));
}

}  // namespace gg
