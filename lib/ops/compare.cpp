// Non-differentiable ops for metrics; results are 0/1 or indices in the graph's float dtype.
//   argmax(x, axis): index of the first maximum along the axis (NumPy's tie rule)
//   equal(a, b):     1 where a == b (broadcasting), else 0
//   greater(x, t):   1 where x > t, else 0
#include "kernels.hpp"

namespace gg {
namespace {

using namespace detail;

Shape infer_argmax(const Graph& g, const Node& n) {
  const Shape& s = g.node(n.inputs[0]).shape;
  const int axis = normalize_axis(g, n, n.attrs.axis, s.rank);
  Shape r;
  for (int i = 0; i < s.rank; ++i) {
    if (i != axis)
      r.dims[r.rank++] = s.dims[i];
    else if (n.attrs.keepdims)
      r.dims[r.rank++] = 1;
  }
  return r;
}

template <typename T>
void argmax_fwd(const KernelArgs& k) {
  const Shape& s = k.in[0].shape;
  const int axis = k.attrs->axis < 0 ? k.attrs->axis + s.rank : k.attrs->axis;
  const Split3 sp = split_at(s, axis);
  const T* x = data<T>(k.in[0]);
  T* o = data<T>(k.out);
  parallel_for(sp.outer, k.threads, sp.n * sp.inner, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t a = lo; a < hi; ++a) {
      const T* base = x + a * sp.n * sp.inner;
      T* ob = o + a * sp.inner;
      // Column blocks keep the scan over n contiguous in the inner dimension.
      for (std::int64_t i0 = 0; i0 < sp.inner; i0 += 256) {
        const std::int64_t i1 = std::min(sp.inner, i0 + 256);
        T best[256];
        std::int64_t arg[256];
        for (std::int64_t i = i0; i < i1; ++i) best[i - i0] = base[i], arg[i - i0] = 0;
        for (std::int64_t c = 1; c < sp.n; ++c)
          for (std::int64_t i = i0; i < i1; ++i) {
            const T v = base[c * sp.inner + i];
            if (v > best[i - i0]) best[i - i0] = v, arg[i - i0] = c;
          }
        for (std::int64_t i = i0; i < i1; ++i) ob[i] = static_cast<T>(arg[i - i0]);
      }
    }
  });
}

Shape infer_equal(const Graph& g, const Node& n) { return broadcast_shapes(g, n); }

template <typename T>
void equal_fwd(const KernelArgs& k) {
  binary_kernel<T>(k, [](T a, T b) { return a == b ? T(1) : T(0); });
}

Shape infer_greater(const Graph& g, const Node& n) { return g.node(n.inputs[0]).shape; }

template <typename T>
void greater_fwd(const KernelArgs& k) {
  const T t = static_cast<T>(k.attrs->scalar);
  unary_kernel<T>(k, [t](T x) { return x > t ? T(1) : T(0); });
}

}  // namespace

namespace detail {
extern const OpDef kArgmaxDef = {"argmax", 1, kNonDifferentiable, 0, 0, infer_argmax, argmax_fwd<float>,
                                 argmax_fwd<double>, nullptr};
extern const OpDef kEqualDef = {"equal", 2, kNonDifferentiable, 0, 0b11, infer_equal, equal_fwd<float>,
                                equal_fwd<double>, nullptr};
extern const OpDef kGreaterDef = {"greater", 1, kNonDifferentiable, 0, 0b1, infer_greater, greater_fwd<float>,
                                  greater_fwd<double>, nullptr};
}  // namespace detail

Value argmax(Value a, int axis, bool keepdims) {
  Attrs at;
  at.axis = axis;
  at.keepdims = keepdims;
  return detail::graph_of(a).add_node(Op::Argmax, {a}, at);
}

Value equal(Value a, Value b) { return detail::graph_of(a).add_node(Op::Equal, {a, b}); }

Value greater(Value a, double threshold) {
  Attrs at;
  at.scalar = threshold;
  return detail::graph_of(a).add_node(Op::Greater, {a}, at);
}

}  // namespace gg
