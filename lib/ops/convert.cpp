// Conversions between dtypes and integer indexing.
//   cast(x, dtype):            y = x converted (float -> int truncates toward zero)
//                              dx = cast(g, dtype(x)) between floats; no gradient through integers
//   one_hot(labels, K, axis):  y[.., k, ..] = 1 if labels[..] == k else 0 (float); labels outside
//                              [0, K) stop the run with an error naming the label and its index
//   gather(table, indices):    numpy.take(table, indices, axis): y = table[.., indices[j], ..]
//                              dtable = scatter_add(g, indices): rows of g added at their index
//                              (repeated indices add up); no gradient to the indices
// scatter_add is deterministic: each thread owns a range of output rows and walks the indices in
// order, so repeated indices are summed in the same order whatever the thread count.
#include "kernels.hpp"

#include <stdexcept>

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// x converted to `dtype`: the explicit way to mix float32 and float64, or to turn labels into floats.
Value cast(Value x, DType dtype);
// Integer labels (int64 or uint8) to one-hot vectors of `classes` entries along `axis` of the result
// (negative counts from the end; labels {dyn} with axis 0 give {classes, dyn}).
Value one_hot(Value labels, std::int64_t classes, int axis, DType dtype);
// Rows (slices along `axis`) of `table` picked by int64 `indices`: result shape
// table.shape[:axis] + indices.shape + table.shape[axis+1:]. With axis 0 this is an embedding lookup.
Value gather(Value table, Value indices, int axis = 0);
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

struct CastAttrs {
  DType to = DType::f32;
  template <typename F> void visit(F&& f) { f("to", to); }
};

struct OneHotAttrs {
  std::int64_t classes = 0;
  int axis = 0;  // of the result, normalised
  DType dtype = DType::f32;
  template <typename F> void visit(F&& f) { f("classes", classes), f("axis", axis), f("dtype", dtype); }
};

// axis of the table; `size` is the table's extent along it (scatter_add's output).
struct GatherAttrs {
  int axis = 0;
  std::int64_t size = 0;
  template <typename F> void visit(F&& f) { f("axis", axis), f("size", size); }
};

Outputs infer_cast(const Graph& g, const Node& n) { return Port{n.attrs.as<CastAttrs>().to, operand(g, n, 0).shape}; }

template <typename S, typename D>
void convert(const KernelArgs& k) {
  const S* x = data<S>(k.in[0]);
  D* y = data<D>(k.out[0]);
  parallel_for(k.out[0].numel(), k.threads, 1, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t i = lo; i < hi; ++i) y[i] = static_cast<D>(x[i]);
  });
}

template <typename S>
void cast_fwd(const KernelArgs& k) {
  switch (k.out[0].dtype) {
    case DType::f32: return convert<S, float>(k);
    case DType::f64: return convert<S, double>(k);
    case DType::i64: return convert<S, std::int64_t>(k);
    case DType::u8: return convert<S, std::uint8_t>(k);
  }
}

std::vector<Value> cast_vjp(const VjpArgs& a) {
  if (!is_float(a.node.out().dtype)) return {Value{}};  // no gradient through integers
  return {cast(a.dy(), a.in(0).dtype())};
}

Outputs infer_one_hot(const Graph& g, const Node& n) {
  const Port& l = operand(g, n, 0);
  const OneHotAttrs& a = n.attrs.as<OneHotAttrs>();
  if (is_float(l.dtype)) fail(g, n, "labels must be int64 or uint8");
  if (!is_float(a.dtype)) fail(g, n, "the one-hot dtype must be float32 or float64");
  if (a.classes <= 0) fail(g, n, "needs at least one class");
  if (a.axis < 0 || a.axis > l.shape.rank) fail(g, n, "axis out of range");
  Shape s;
  for (int i = 0, j = 0; i <= l.shape.rank; ++i) s.dims[s.rank++] = i == a.axis ? a.classes : l.shape.dims[j++];
  return Port{a.dtype, s};
}

template <typename L, typename T>
void one_hot_into(const KernelArgs& k) {
  const OneHotAttrs& a = k.attrs<OneHotAttrs>();
  const L* lab = data<L>(k.in[0]);
  T* y = data<T>(k.out[0]);
  const Split3 s = split_at(k.out[0].shape, a.axis);  // (outer, classes, inner); labels are (outer, inner)
  for (std::int64_t i = 0, n = k.out[0].numel(); i < n; ++i) y[i] = T(0);
  for (std::int64_t o = 0; o < s.outer; ++o)
    for (std::int64_t i = 0; i < s.inner; ++i) {
      const std::int64_t idx = o * s.inner + i, c = static_cast<std::int64_t>(lab[idx]);
      if (c < 0 || c >= a.classes)
        throw std::out_of_range("one_hot: label " + std::to_string(c) + " at index " + std::to_string(idx) +
                                " is outside [0, " + std::to_string(a.classes) + ")");
      y[(o * a.classes + c) * s.inner + i] = T(1);
    }
}

template <typename T>
void one_hot_fwd(const KernelArgs& k) {
  if (k.in[0].dtype == DType::i64)
    one_hot_into<std::int64_t, T>(k);
  else
    one_hot_into<std::uint8_t, T>(k);
}

Outputs infer_gather(const Graph& g, const Node& n) {
  const Port& t = operand(g, n, 0);
  const Port& idx = operand(g, n, 1);
  const GatherAttrs& a = n.attrs.as<GatherAttrs>();
  require_float(g, n, 0);
  if (idx.dtype != DType::i64) fail(g, n, "indices must be int64");
  if (a.axis < 0 || a.axis >= t.shape.rank) fail(g, n, "axis out of range");
  if (t.shape.dims[a.axis] == dyn) fail(g, n, "cannot gather along the open (dyn) dimension");
  if (t.shape.rank - 1 + idx.shape.rank > kMaxRank) fail(g, n, "the result would exceed rank " + std::to_string(kMaxRank));
  Shape s;
  for (int i = 0; i < a.axis; ++i) s.dims[s.rank++] = t.shape.dims[i];
  for (int i = 0; i < idx.shape.rank; ++i) s.dims[s.rank++] = idx.shape.dims[i];
  for (int i = a.axis + 1; i < t.shape.rank; ++i) s.dims[s.rank++] = t.shape.dims[i];
  return Port{t.dtype, s};
}

// The table as (outer, size, inner) around the axis; the indices flattened to count entries.
void check_indices(const std::int64_t* idx, std::int64_t count, std::int64_t size, const char* op) {
  for (std::int64_t j = 0; j < count; ++j)
    if (idx[j] < 0 || idx[j] >= size)
      throw std::out_of_range(std::string(op) + ": index " + std::to_string(idx[j]) + " at position " + std::to_string(j) +
                              " is outside [0, " + std::to_string(size) + ")");
}

template <typename T>
void gather_fwd(const KernelArgs& k) {
  const GatherAttrs& a = k.attrs<GatherAttrs>();
  const Split3 t = split_at(k.in[0].shape, a.axis);
  const std::int64_t count = k.in[1].numel();
  const std::int64_t* idx = data<std::int64_t>(k.in[1]);
  check_indices(idx, count, t.n, "gather");
  const T* table = data<T>(k.in[0]);
  T* y = data<T>(k.out[0]);
  parallel_for(t.outer * count, k.threads, t.inner, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t r = lo; r < hi; ++r) {
      const std::int64_t o = r / count, j = r % count;
      const T* src = table + (o * t.n + idx[j]) * t.inner;
      T* dst = y + r * t.inner;
      for (std::int64_t i = 0; i < t.inner; ++i) dst[i] = src[i];
    }
  });
}

Outputs infer_scatter_add(const Graph& g, const Node& n) {
  const Port& grad = operand(g, n, 0);
  const Port& idx = operand(g, n, 1);
  const GatherAttrs& a = n.attrs.as<GatherAttrs>();
  Shape s;
  for (int i = 0; i < a.axis; ++i) s.dims[s.rank++] = grad.shape.dims[i];
  s.dims[s.rank++] = a.size;
  for (int i = a.axis + idx.shape.rank; i < grad.shape.rank; ++i) s.dims[s.rank++] = grad.shape.dims[i];
  return Port{require_float(g, n, 0), s};
}

template <typename T>
void scatter_add_fwd(const KernelArgs& k) {
  const GatherAttrs& a = k.attrs<GatherAttrs>();
  const Split3 t = split_at(k.out[0].shape, a.axis);
  const std::int64_t count = k.in[1].numel();
  const std::int64_t* idx = data<std::int64_t>(k.in[1]);
  check_indices(idx, count, t.n, "scatter_add");
  const T* g = data<T>(k.in[0]);
  T* y = data<T>(k.out[0]);
  // Each thread owns output rows [lo, hi) of (outer * size) and adds the gradient rows that land
  // there in index order.
  parallel_for(t.outer * t.n, k.threads, count, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t r = lo; r < hi; ++r)
      for (std::int64_t i = 0; i < t.inner; ++i) y[r * t.inner + i] = T(0);
    for (std::int64_t o = lo / t.n; o <= (hi - 1) / t.n && o < t.outer; ++o)
      for (std::int64_t j = 0; j < count; ++j) {
        const std::int64_t r = o * t.n + idx[j];
        if (r < lo || r >= hi) continue;
        const T* src = g + (o * count + j) * t.inner;
        T* dst = y + r * t.inner;
        for (std::int64_t i = 0; i < t.inner; ++i) dst[i] += src[i];
      }
  });
}

Value scatter_add(Value g, Value indices, GatherAttrs a);

std::vector<Value> gather_vjp(const VjpArgs& a) {
  std::vector<Value> out(2);
  if (a.wanted[0]) out[0] = scatter_add(a.dy(), a.in(1), a.attrs<GatherAttrs>());
  return out;
}

std::vector<Value> scatter_add_vjp(const VjpArgs& a) {
  std::vector<Value> out(2);
  if (a.wanted[0]) out[0] = gather(a.dy(), a.in(1), a.attrs<GatherAttrs>().axis);
  return out;
}

}  // namespace

GG_OP(cast_op) = {.name = "cast", .arity = 1, .diff_inputs = 0b1,
                  .kernels = {.f32 = cast_fwd<float>, .f64 = cast_fwd<double>, .i64 = cast_fwd<std::int64_t>,
                              .u8 = cast_fwd<std::uint8_t>},
                  .kernel_key = 0, .infer = infer_cast, .vjp = cast_vjp};
GG_OP(one_hot_op) = {.name = "one_hot", .arity = 1, .flags = kNonDifferentiable,
                     .kernels = {.f32 = one_hot_fwd<float>, .f64 = one_hot_fwd<double>}, .infer = infer_one_hot};
GG_OP(gather_op) = {.name = "gather", .arity = 2, .diff_inputs = 0b01,
                    .kernels = {.f32 = gather_fwd<float>, .f64 = gather_fwd<double>}, .infer = infer_gather,
                    .vjp = gather_vjp};
GG_OP(scatter_add_op) = {.name = "scatter_add", .arity = 2, .flags = kInternal, .diff_inputs = 0b01,
                         .kernels = {.f32 = scatter_add_fwd<float>, .f64 = scatter_add_fwd<double>},
                         .infer = infer_scatter_add, .vjp = scatter_add_vjp};

namespace {
Value scatter_add(Value g, Value indices, GatherAttrs a) { return make(scatter_add_op, {g, indices}, Attrs(a)); }
}  // namespace

}  // namespace detail

Value cast(Value x, DType dtype) {
  if (x.dtype() == dtype) return x;
  return detail::make(detail::cast_op, {x}, Attrs(detail::CastAttrs{dtype}));
}

Value one_hot(Value labels, std::int64_t classes, int axis, DType dtype) {
  const int rank = labels.shape().rank + 1;
  return detail::make(detail::one_hot_op, {labels}, Attrs(detail::OneHotAttrs{classes, axis < 0 ? axis + rank : axis, dtype}));
}

Value gather(Value table, Value indices, int axis) {
  const Shape s = table.shape();
  const int ax = axis < 0 ? axis + s.rank : axis;
  return detail::make(detail::gather_op, {table, indices},
                      Attrs(detail::GatherAttrs{ax, ax >= 0 && ax < s.rank ? s.dims[ax] : 0}));
}

}  // namespace gg
