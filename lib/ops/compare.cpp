// Non-differentiable ops for metrics and masks.
//   argmax(x, axis): index (int64) of the first maximum along the axis (NumPy's tie rule)
//   equal(a, b):     1 where a == b (broadcasting; operands of one dtype, labels included), else 0,
//                    in the graph's float dtype, so that mean(equal(argmax(Z, 0), labels)) is
//                    an accuracy
//   greater(x, t):   1 where x > t, else 0, in x's dtype
#include "kernels.hpp"

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// Non-differentiable, for metrics. argmax returns int64 indices; equal returns 0/1 in the graph's
// float dtype (its operands may be int64 labels); greater returns 0/1 in x's dtype.
Value argmax(Value a, int axis, bool keepdims = false);
Value equal(Value a, Value b);
Value greater(Value a, double threshold);
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

struct ArgmaxAttrs {
  int axis = 0;  // normalised
  bool keepdims = false;
  template <typename F> void visit(F&& f) { f("axis", axis), f("keepdims", keepdims); }
};

struct EqualAttrs {
  DType out = DType::f32;  // the graph's float dtype
  template <typename F> void visit(F&& f) { f("out", out); }
};

struct ThresholdAttrs {
  double threshold = 0;
  template <typename F> void visit(F&& f) { f("threshold", threshold); }
};

Outputs infer_argmax(const Graph& g, const Node& n) {
  const Port& x = operand(g, n, 0);
  const ArgmaxAttrs& a = n.attrs.as<ArgmaxAttrs>();
  const int axis = normalize_axis(g, n, a.axis, x.shape.rank);
  Shape r;
  for (int i = 0; i < x.shape.rank; ++i) {
    if (i != axis)
      r.dims[r.rank++] = x.shape.dims[i];
    else if (a.keepdims)
      r.dims[r.rank++] = 1;
  }
  return Port{DType::i64, r};
}

template <typename T>
void argmax_fwd(const KernelArgs& k) {
  const Shape& s = k.in[0].shape;
  const Split3 sp = split_at(s, k.attrs<ArgmaxAttrs>().axis);
  const T* x = data<T>(k.in[0]);
  std::int64_t* o = data<std::int64_t>(k.out[0]);
  // Units of work: (outer index, block of 256 inner columns), so that threads split the columns
  // when there is one outer slice (argmax over classes of {classes, batch}). Column blocks keep
  // the scan over n contiguous in the inner dimension.
  const std::int64_t blocks = (sp.inner + 255) / 256;
  parallel_for(sp.outer * blocks, k.threads, sp.n * std::min<std::int64_t>(sp.inner, 256), [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t u = lo; u < hi; ++u) {
      const std::int64_t a = u / blocks;
      const T* base = x + a * sp.n * sp.inner;
      std::int64_t* ob = o + a * sp.inner;
      {
        const std::int64_t i0 = u % blocks * 256, i1 = std::min(sp.inner, i0 + 256);
        T best[256];
        std::int64_t arg[256];
        for (std::int64_t i = i0; i < i1; ++i) best[i - i0] = base[i], arg[i - i0] = 0;
        for (std::int64_t c = 1; c < sp.n; ++c)
          for (std::int64_t i = i0; i < i1; ++i) {
            const T v = base[c * sp.inner + i];
            if (v > best[i - i0]) best[i - i0] = v, arg[i - i0] = c;
          }
        for (std::int64_t i = i0; i < i1; ++i) ob[i] = arg[i - i0];
      }
    }
  });
}

Outputs infer_equal(const Graph& g, const Node& n) {
  require_same_dtype(g, n, 0, 1);
  return Port{n.attrs.as<EqualAttrs>().out, broadcast_shapes(g, n)};
}

template <typename T>
void equal_fwd(const KernelArgs& k) {
  if (k.out[0].dtype == DType::f32)
    binary_kernel<T, float>(k, [](T a, T b) { return a == b ? 1.0f : 0.0f; });
  else
    binary_kernel<T, double>(k, [](T a, T b) { return a == b ? 1.0 : 0.0; });
}

Outputs infer_greater(const Graph& g, const Node& n) { return Port{require_float(g, n, 0), operand(g, n, 0).shape}; }

template <typename T>
void greater_fwd(const KernelArgs& k) {
  const T t = static_cast<T>(k.attrs<ThresholdAttrs>().threshold);
  unary_kernel<T>(k, [t](T x) { return x > t ? T(1) : T(0); });
}

}  // namespace

GG_OP(argmax_op) = {.name = "argmax", .arity = 1, .flags = kNonDifferentiable,
                    .kernels = {.f32 = argmax_fwd<float>, .f64 = argmax_fwd<double>, .i64 = argmax_fwd<std::int64_t>,
                                .u8 = argmax_fwd<std::uint8_t>},
                    .kernel_key = 0, .infer = infer_argmax};
GG_OP(equal_op) = {.name = "equal", .arity = 2, .flags = kNonDifferentiable, .inplace = 0b11,
                   .kernels = {.f32 = equal_fwd<float>, .f64 = equal_fwd<double>, .i64 = equal_fwd<std::int64_t>,
                               .u8 = equal_fwd<std::uint8_t>},
                   .kernel_key = 0, .infer = infer_equal};
GG_OP(greater_op) = {.name = "greater", .arity = 1, .flags = kNonDifferentiable, .inplace = 0b1,
                     .kernels = {.f32 = greater_fwd<float>, .f64 = greater_fwd<double>}, .infer = infer_greater};

}  // namespace detail

Value argmax(Value a, int axis, bool keepdims) {
  const int rank = a.shape().rank;
  return detail::make(detail::argmax_op, {a}, Attrs(detail::ArgmaxAttrs{axis < 0 ? axis + rank : axis, keepdims}));
}

Value equal(Value a, Value b) {
  return detail::make(detail::equal_op, {a, b}, Attrs(detail::EqualAttrs{detail::graph_of(a).dtype()}));
}

Value greater(Value a, double threshold) {
  return detail::make(detail::greater_op, {a}, Attrs(detail::ThresholdAttrs{threshold}));
}

}  // namespace gg
