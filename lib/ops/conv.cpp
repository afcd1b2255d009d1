// Convolution, NCHW (batch-first): conv2d and its two gradients as ops of their own.
//
//   y[n, o, i, j] = sum_{c, a, b} w[o, c, a, b] x[n, c, i s - p + a d, j s - p + b d]
// (x outside the image is 0; s stride, p padding, d dilation, per axis). With K = C KH KW and
// P = OH OW, it is one GEMM over im2col: col[(c KH + a) KW + b, n P + i OW + j] = x[n, c, ...],
// Y = W[OC, K] col[K, N P], then Y permuted to {N, OC, OH, OW}. The whole batch is one GEMM (not
// one per image) so BLIS gets a large problem to thread over, with the program's thread count like
// every other GEMM; im2col and the permutes are the op's declared workspace.
//
//   conv2d_dgrad(g, w) = dx: dcol = W^T g' (g' = g as {OC, N P}), then col2im (overlaps summed)
//   conv2d_wgrad(x, g) = dw: g' col^T
// conv2d is bilinear in (x, w) and the three ops are each other's adjoints, so the VJPs close:
//   conv2d:       dx = dgrad(g, w),    dw = wgrad(x, g)
//   conv2d_dgrad: dg = conv2d(v, w),   dw = wgrad(v, g)
//   conv2d_wgrad: dx = dgrad(g, v),    dg = conv2d(x, v)
// and second derivatives keep working. Every kernel is deterministic: im2col, col2im and the
// permutes give each output element to one thread, and BLIS is deterministic per thread count.
#include "kernels.hpp"

#include <blis.h>

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// 2-d convolution of x {N, C, H, W} with w {OC, C, KH, KW}, plus b {OC} when given; square
// stride, padding and dilation. The output is {N, OC, OH, OW}, OH = (H + 2p - d (KH - 1) - 1) / s + 1.
Value conv2d(Value x, Value w, Value b = Value{}, int stride = 1, int padding = 0, int dilation = 1);
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

// The geometry, shared by the three ops: the kernel, the input image's size (dgrad's output) and
// the steps, per axis.
struct ConvAttrs {
  std::int64_t kh = 1, kw = 1, h = 0, w = 0;
  int stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
  template <typename F> void visit(F&& f) {
    f("kh", kh), f("kw", kw), f("h", h), f("w", w), f("stride_h", stride_h), f("stride_w", stride_w), f("pad_h", pad_h),
        f("pad_w", pad_w), f("dil_h", dil_h), f("dil_w", dil_w);
  }
  std::int64_t out_h() const { return (h + 2 * pad_h - dil_h * (kh - 1) - 1) / stride_h + 1; }
  std::int64_t out_w() const { return (w + 2 * pad_w - dil_w * (kw - 1) - 1) / stride_w + 1; }
};

// ---- inference --------------------------------------------------------------------------------------

void check_static(const Graph& g, const Node& n, int i, bool batch_may_be_open) {
  const Shape& s = operand(g, n, i).shape;
  if (s.rank != 4) fail(g, n, "operand " + std::to_string(i) + " must be rank 4 (NCHW)");
  for (int d = batch_may_be_open ? 1 : 0; d < 4; ++d)
    if (s[d] == dyn) fail(g, n, "only the batch (first) dimension may be open");
}

Outputs infer_conv(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  require_same_dtype(g, n, 0, 1);
  check_static(g, n, 0, true);
  check_static(g, n, 1, false);
  const Shape& x = operand(g, n, 0).shape;
  const Shape& w = operand(g, n, 1).shape;
  const ConvAttrs& a = n.attrs.as<ConvAttrs>();
  if (w[1] != x[1])
    fail(g, n, "the weights take " + std::to_string(w[1]) + " input channels, the input has " + std::to_string(x[1]));
  if (a.kh != w[2] || a.kw != w[3] || a.h != x[2] || a.w != x[3]) fail(g, n, "attributes do not match the operands");
  if (a.out_h() < 1 || a.out_w() < 1)
    fail(g, n, "the " + std::to_string(a.kh) + "x" + std::to_string(a.kw) + " kernel does not fit the " + std::to_string(a.h) +
                   "x" + std::to_string(a.w) + " image (padding " + std::to_string(a.pad_h) + ", dilation " +
                   std::to_string(a.dil_h) + ")");
  return Port{t, Shape{x[0], w[0], a.out_h(), a.out_w()}};
}

// dgrad(g {N, OC, OH, OW}, w {OC, C, KH, KW}) -> {N, C, H, W}
Outputs infer_dgrad(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  require_same_dtype(g, n, 0, 1);
  const Shape& gs = operand(g, n, 0).shape;
  const Shape& w = operand(g, n, 1).shape;
  const ConvAttrs& a = n.attrs.as<ConvAttrs>();
  if (gs.rank != 4 || w.rank != 4 || gs[1] != w[0] || gs[2] != a.out_h() || gs[3] != a.out_w())
    fail(g, n, "the gradient does not match the convolution's output");
  return Port{t, Shape{gs[0], w[1], a.h, a.w}};
}

// wgrad(x {N, C, H, W}, g {N, OC, OH, OW}) -> {OC, C, KH, KW}
Outputs infer_wgrad(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  require_same_dtype(g, n, 0, 1);
  const Shape& x = operand(g, n, 0).shape;
  const Shape& gs = operand(g, n, 1).shape;
  const ConvAttrs& a = n.attrs.as<ConvAttrs>();
  if (x.rank != 4 || gs.rank != 4 || x[0] != gs[0] || x[2] != a.h || x[3] != a.w || gs[2] != a.out_h() || gs[3] != a.out_w())
    fail(g, n, "the input and the gradient do not match the convolution");
  return Port{t, Shape{gs[1], x[1], a.kh, a.kw}};
}

// ---- kernels ----------------------------------------------------------------------------------------

// C = A B with general strides (rows, columns) for each, on the program's threads.
template <typename T>
void gemm(dim_t m, dim_t n, dim_t k, const T* a, inc_t ars, inc_t acs, const T* b, inc_t brs, inc_t bcs, T* c,
          inc_t crs, inc_t ccs, int threads) {
  if (m == 0 || n == 0) return;
  T one = 1, zero = 0;
  rntm_t rntm = BLIS_RNTM_INITIALIZER;
  bli_rntm_set_num_threads(threads, &rntm);
  if constexpr (std::is_same_v<T, float>)
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &one, const_cast<T*>(a), ars, acs, const_cast<T*>(b), brs,
                 bcs, &zero, c, crs, ccs, nullptr, &rntm);
  else
    bli_dgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &one, const_cast<T*>(a), ars, acs, const_cast<T*>(b), brs,
                 bcs, &zero, c, crs, ccs, nullptr, &rntm);
}

// The shapes a kernel works with.
struct Geometry {
  std::int64_t n, c, oc, k, p;  // batch, input channels, output channels, C KH KW, OH OW
};

// col[(c KH + a) KW + b, n P + i OW + j] = x[n, c, i s - p + a d, j s - p + b d] (0 outside).
template <typename T>
void im2col(const T* x, T* col, const ConvAttrs& a, const Geometry& g, int threads) {
  const std::int64_t oh = a.out_h(), ow = a.out_w(), cols = g.n * g.p;
  parallel_for(g.n * g.c, threads, a.kh * a.kw * g.p, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t nc = lo; nc < hi; ++nc) {
      const std::int64_t n = nc / g.c, c = nc % g.c;
      const T* plane = x + nc * a.h * a.w;
      for (std::int64_t ka = 0; ka < a.kh; ++ka)
        for (std::int64_t kb = 0; kb < a.kw; ++kb) {
          T* row = col + ((c * a.kh + ka) * a.kw + kb) * cols + n * g.p;
          for (std::int64_t i = 0; i < oh; ++i) {
            const std::int64_t ih = i * a.stride_h - a.pad_h + ka * a.dil_h;
            T* out = row + i * ow;
            if (ih < 0 || ih >= a.h) {
              for (std::int64_t j = 0; j < ow; ++j) out[j] = T(0);
              continue;
            }
            const T* in = plane + ih * a.w;
            for (std::int64_t j = 0; j < ow; ++j) {
              const std::int64_t iw = j * a.stride_w - a.pad_w + kb * a.dil_w;
              out[j] = iw >= 0 && iw < a.w ? in[iw] : T(0);
            }
          }
        }
    }
  });
}

// dx[n, c, ...] = the sum of the col entries im2col would have taken from there (dx zeroed first).
template <typename T>
void col2im(const T* col, T* x, const ConvAttrs& a, const Geometry& g, int threads) {
  const std::int64_t oh = a.out_h(), ow = a.out_w(), cols = g.n * g.p;
  parallel_for(g.n * g.c, threads, a.kh * a.kw * g.p, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t nc = lo; nc < hi; ++nc) {
      const std::int64_t n = nc / g.c, c = nc % g.c;
      T* plane = x + nc * a.h * a.w;
      for (std::int64_t i = 0; i < a.h * a.w; ++i) plane[i] = T(0);
      for (std::int64_t ka = 0; ka < a.kh; ++ka)
        for (std::int64_t kb = 0; kb < a.kw; ++kb) {
          const T* row = col + ((c * a.kh + ka) * a.kw + kb) * cols + n * g.p;
          for (std::int64_t i = 0; i < oh; ++i) {
            const std::int64_t ih = i * a.stride_h - a.pad_h + ka * a.dil_h;
            if (ih < 0 || ih >= a.h) continue;
            T* out = plane + ih * a.w;
            const T* in = row + i * ow;
            for (std::int64_t j = 0; j < ow; ++j) {
              const std::int64_t iw = j * a.stride_w - a.pad_w + kb * a.dil_w;
              if (iw >= 0 && iw < a.w) out[iw] += in[j];
            }
          }
        }
    }
  });
}

// y[n, o, p] = t[o, n P + p] (to NCHW), or the reverse.
template <typename T>
void to_nchw(const T* t, T* y, const Geometry& g, int threads) {
  parallel_for(g.n * g.oc, threads, g.p, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t no = lo; no < hi; ++no) {
      const std::int64_t n = no / g.oc, o = no % g.oc;
      const T* src = t + o * g.n * g.p + n * g.p;
      T* dst = y + no * g.p;
      for (std::int64_t i = 0; i < g.p; ++i) dst[i] = src[i];
    }
  });
}
template <typename T>
void from_nchw(const T* y, T* t, const Geometry& g, int threads) {
  parallel_for(g.n * g.oc, threads, g.p, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t no = lo; no < hi; ++no) {
      const std::int64_t n = no / g.oc, o = no % g.oc;
      const T* src = y + no * g.p;
      T* dst = t + o * g.n * g.p + n * g.p;
      for (std::int64_t i = 0; i < g.p; ++i) dst[i] = src[i];
    }
  });
}

Geometry geometry(const ConvAttrs& a, std::int64_t n, std::int64_t c, std::int64_t oc) {
  return Geometry{n, c, oc, c * a.kh * a.kw, a.out_h() * a.out_w()};
}

// Scratch of every kernel: col {K, N P} and the {OC, N P} matrix, in the output's dtype.
std::size_t scratch_bytes(const Node& node, const Geometry& g) {
  return static_cast<std::size_t>((g.k + g.oc) * g.n * g.p) * dtype_size(node.out().dtype);
}
// conv2d(x {N, C, ..}, w {OC, ..}); dgrad(g {N, OC, ..}, w {OC, C, ..}); wgrad(x {N, C, ..}, g {N, OC, ..})
std::size_t conv_scratch(const Node& n, const Shape* in, int) {
  return scratch_bytes(n, geometry(n.attrs.as<ConvAttrs>(), in[0][0], in[0][1], in[1][0]));
}
std::size_t dgrad_scratch(const Node& n, const Shape* in, int) {
  return scratch_bytes(n, geometry(n.attrs.as<ConvAttrs>(), in[0][0], in[1][1], in[1][0]));
}
// dW {OC, K} is small and its inner dimension N P long (a first layer: 32 x 9 against 100,352):
// BLIS parallelises a GEMM over its output's rows and columns, not its inner dimension, so such a
// product runs on one core at a tenth of its speed. Below this many outputs the kernel splits the
// inner dimension into fixed chunks instead (see small_wgrad).
constexpr std::int64_t kSmallWgrad = 1024, kWgradChunk = 2048;
std::int64_t wgrad_chunks(const Geometry& g) { return (g.n * g.p + kWgradChunk - 1) / kWgradChunk; }
std::size_t wgrad_scratch(const Node& n, const Shape* in, int) {
  const Geometry g = geometry(n.attrs.as<ConvAttrs>(), in[0][0], in[0][1], in[1][1]);
  std::size_t bytes = scratch_bytes(n, g);
  if (g.oc * g.k <= kSmallWgrad) bytes = (bytes + 63) / 64 * 64 + static_cast<std::size_t>(wgrad_chunks(g) * g.oc * g.k) * sizeof(double);
  return bytes;
}

template <typename T>
void conv_fwd(const KernelArgs& k) {
  const ConvAttrs& a = k.attrs<ConvAttrs>();
  const Geometry g = geometry(a, k.in[0].shape[0], k.in[0].shape[1], k.in[1].shape[0]);
  if (g.n == 0) return;
  T* col = static_cast<T*>(k.workspace);
  T* t = col + g.k * g.n * g.p;
  im2col(data<T>(k.in[0]), col, a, g, k.threads);
  gemm<T>(g.oc, g.n * g.p, g.k, data<T>(k.in[1]), g.k, 1, col, g.n * g.p, 1, t, g.n * g.p, 1, k.threads);
  to_nchw(t, data<T>(k.out[0]), g, k.threads);
}

template <typename T>
void dgrad_fwd(const KernelArgs& k) {
  const ConvAttrs& a = k.attrs<ConvAttrs>();
  const Geometry g = geometry(a, k.in[0].shape[0], k.in[1].shape[1], k.in[1].shape[0]);
  if (g.n == 0) return;
  T* col = static_cast<T*>(k.workspace);
  T* t = col + g.k * g.n * g.p;
  from_nchw(data<T>(k.in[0]), t, g, k.threads);
  // dcol {K, N P} = W^T {K, OC} (W is {OC, K} row-major: rows stride 1, columns stride K) g'.
  gemm<T>(g.k, g.n * g.p, g.oc, data<T>(k.in[1]), 1, g.k, t, g.n * g.p, 1, col, g.n * g.p, 1, k.threads);
  col2im(col, data<T>(k.out[0]), a, g, k.threads);
}

// dW = g' col^T for a small dW: each fixed chunk of the inner dimension gives a partial dW (dot
// products in T that the compiler vectorises), and the partials are added in chunk order in
// double. The chunks do not depend on the thread count, so neither does the result.
template <typename T>
void small_wgrad(const T* t, const T* col, T* dw, double* partial, const Geometry& g, int threads) {
  const std::int64_t L = g.n * g.p, chunks = (L + kWgradChunk - 1) / kWgradChunk;
  parallel_for(chunks, threads, kWgradChunk * g.oc * g.k, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t c = lo; c < hi; ++c) {
      const std::int64_t j0 = c * kWgradChunk, j1 = std::min(L, j0 + kWgradChunk);
      double* part = partial + c * g.oc * g.k;
      for (std::int64_t o = 0; o < g.oc; ++o) {
        const T* a = t + o * L;
        for (std::int64_t r = 0; r < g.k; ++r) {
          const T* b = col + r * L;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (std::int64_t j = j0; j < j1; ++j) acc += a[j] * b[j];
          part[o * g.k + r] = static_cast<double>(acc);
        }
      }
    }
  });
  parallel_for(g.oc * g.k, threads, chunks, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t i = lo; i < hi; ++i) {
      double sum = 0;
      for (std::int64_t c = 0; c < chunks; ++c) sum += partial[c * g.oc * g.k + i];
      dw[i] = static_cast<T>(sum);
    }
  });
}

template <typename T>
void wgrad_fwd(const KernelArgs& k) {
  const ConvAttrs& a = k.attrs<ConvAttrs>();
  const Geometry g = geometry(a, k.in[0].shape[0], k.in[0].shape[1], k.in[1].shape[1]);
  T* dw = data<T>(k.out[0]);
  if (g.n == 0) {
    for (std::int64_t i = 0; i < g.oc * g.k; ++i) dw[i] = T(0);
    return;
  }
  T* col = static_cast<T*>(k.workspace);
  T* t = col + g.k * g.n * g.p;
  im2col(data<T>(k.in[0]), col, a, g, k.threads);
  from_nchw(data<T>(k.in[1]), t, g, k.threads);
  if (g.oc * g.k <= kSmallWgrad) {
    // The partials after col and g' in the workspace, at the next 64-byte boundary (the workspace
    // itself is 64-byte aligned, like every arena buffer).
    const std::size_t at = (static_cast<std::size_t>((g.k + g.oc) * g.n * g.p) * sizeof(T) + 63) / 64 * 64;
    small_wgrad(t, col, dw, reinterpret_cast<double*>(static_cast<std::byte*>(k.workspace) + at), g, k.threads);
    return;
  }
  // dW {OC, K} = g' {OC, N P} col^T (col is {K, N P}: as {N P, K}, rows stride 1, columns N P).
  gemm<T>(g.oc, g.k, g.n * g.p, t, g.n * g.p, 1, col, 1, g.n * g.p, dw, g.k, 1, k.threads);
}

Value dgrad(Value g, Value w, const ConvAttrs& a);
Value wgrad(Value x, Value g, const ConvAttrs& a);
Value conv(Value x, Value w, const ConvAttrs& a);

std::vector<Value> conv_vjp(const VjpArgs& v) {
  const ConvAttrs& a = v.attrs<ConvAttrs>();
  std::vector<Value> out(2);
  if (v.wanted[0]) out[0] = dgrad(v.dy(), v.in(1), a);
  if (v.wanted[1]) out[1] = wgrad(v.in(0), v.dy(), a);
  return out;
}

std::vector<Value> dgrad_vjp(const VjpArgs& v) {
  const ConvAttrs& a = v.attrs<ConvAttrs>();
  std::vector<Value> out(2);
  if (v.wanted[0]) out[0] = conv(v.dy(), v.in(1), a);
  if (v.wanted[1]) out[1] = wgrad(v.dy(), v.in(0), a);
  return out;
}

std::vector<Value> wgrad_vjp(const VjpArgs& v) {
  const ConvAttrs& a = v.attrs<ConvAttrs>();
  std::vector<Value> out(2);
  if (v.wanted[0]) out[0] = dgrad(v.in(1), v.dy(), a);
  if (v.wanted[1]) out[1] = conv(v.in(0), v.dy(), a);
  return out;
}

}  // namespace

GG_OP(conv2d_op) = {.name = "conv2d", .arity = 2, .diff_inputs = 0b11,
                    .kernels = {.f32 = conv_fwd<float>, .f64 = conv_fwd<double>}, .infer = infer_conv,
                    .workspace = conv_scratch, .vjp = conv_vjp};
GG_OP(conv2d_dgrad_op) = {.name = "conv2d_dgrad", .arity = 2, .flags = kInternal, .diff_inputs = 0b11,
                          .kernels = {.f32 = dgrad_fwd<float>, .f64 = dgrad_fwd<double>}, .infer = infer_dgrad,
                          .workspace = dgrad_scratch, .vjp = dgrad_vjp};
GG_OP(conv2d_wgrad_op) = {.name = "conv2d_wgrad", .arity = 2, .flags = kInternal, .diff_inputs = 0b11,
                          .kernels = {.f32 = wgrad_fwd<float>, .f64 = wgrad_fwd<double>}, .infer = infer_wgrad,
                          .workspace = wgrad_scratch, .vjp = wgrad_vjp};

namespace {
Value dgrad(Value g, Value w, const ConvAttrs& a) { return make(conv2d_dgrad_op, {g, w}, Attrs(a)); }
Value wgrad(Value x, Value g, const ConvAttrs& a) { return make(conv2d_wgrad_op, {x, g}, Attrs(a)); }
Value conv(Value x, Value w, const ConvAttrs& a) { return make(conv2d_op, {x, w}, Attrs(a)); }
}  // namespace

}  // namespace detail

Value conv2d(Value x, Value w, Value b, int stride, int padding, int dilation) {
  const Shape xs = x.shape(), ws = w.shape();
  Graph& g = detail::graph_of(x);
  auto where = [&] { return detail::describe(g, x.operand()) + " and " + detail::describe(g, w.operand()); };
  if (xs.rank != 4 || ws.rank != 4) throw GraphError("conv2d: input and weights must be rank 4 (NCHW, OIHW): " + where());
  if (stride < 1 || padding < 0 || dilation < 1)
    throw GraphError("conv2d: stride and dilation must be at least 1 and padding at least 0 (got stride " +
                     std::to_string(stride) + ", padding " + std::to_string(padding) + ", dilation " + std::to_string(dilation) +
                     ") for " + where());
  detail::ConvAttrs a;
  a.kh = ws[2], a.kw = ws[3], a.h = xs[2], a.w = xs[3];
  a.stride_h = a.stride_w = stride;
  a.pad_h = a.pad_w = padding;
  a.dil_h = a.dil_w = dilation;
  Value y = detail::conv(x, w, a);
  if (!b.valid()) return y;
  if (b.shape() != Shape{ws[0]})
    throw GraphError("conv2d: the bias " + detail::describe(g, b.operand()) + " must be {" + std::to_string(ws[0]) +
                     "}, one per output channel");
  return y + reshape(b, {ws[0], 1, 1});
}

}  // namespace gg
