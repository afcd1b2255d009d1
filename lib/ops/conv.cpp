// Convolution, NCHW (batch-first): conv2d and its two gradients as ops of their own.
//
//   y[n, o, i, j] = sum_{c, a, b} w[o, c, a, b] x[n, c, i s - p + a d, j s - p + b d]
// (x outside the image is 0; s stride, p padding, d dilation, per axis). With K = C KH KW and
// P = OH OW, each image is one GEMM over its im2col: col_n[(c KH + a) KW + b, i OW + j] =
// x[n, c, ...], y[n] = W[OC, K] col_n[K, P], written straight into y's NCHW slice. Images go in
// fixed chunks, each with its own col buffer (the op's declared workspace) that stays in cache
// between im2col and the GEMM; see `Chunks`.
//
//   conv2d_dgrad(g, w) = dx: per image, dcol = W^T g[n], then col2im (overlaps summed)
//   conv2d_wgrad(x, g) = dw: the sum over images of g[n] col_n^T
// conv2d is bilinear in (x, w) and the three ops are each other's adjoints, so the VJPs close:
//   conv2d:       dx = dgrad(g, w),    dw = wgrad(x, g)
//   conv2d_dgrad: dg = conv2d(v, w),   dw = wgrad(v, g)
//   conv2d_wgrad: dx = dgrad(g, v),    dg = conv2d(x, v)
// and second derivatives keep working. Every kernel gives the same bits for any thread count:
// each image's output is one thread's, and dw is summed in an order fixed by the batch size.
// conv2d_bias (conv2d + bias, then ReLU) exists only as a fusion (rule at the end of the file).
#include "fusion.hpp"
#include "kernels.hpp"
#include "micro_gemm.hpp"
#include "onnx.hpp"
#include "op_list.hpp"

#include <array>


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
  // conv2d_bias only: ReLU after the bias. conv2d_bias is conv2d plus a bias per output channel
  // (then ReLU when `relu`), made by the fusion rule at the end of this file from conv2d + add
  // (+ relu), so that the epilogue runs on each image's output while it is in cache instead of
  // in one more pass over the whole map.
  int relu = 0;
  template <typename F> void visit(F&& f) {
    f("kh", kh), f("kw", kw), f("h", h), f("w", w), f("stride_h", stride_h), f("stride_w", stride_w), f("pad_h", pad_h),
        f("pad_w", pad_w), f("dil_h", dil_h), f("dil_w", dil_w), f("relu", relu);
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

Outputs infer_conv_with(const Graph& g, const Node& n, const ConvAttrs& a) {
  const DType t = require_float(g, n, 0);
  require_same_dtype(g, n, 0, 1);
  check_static(g, n, 0, true);
  check_static(g, n, 1, false);
  const Shape& x = operand(g, n, 0).shape;
  const Shape& w = operand(g, n, 1).shape;
  if (w[1] != x[1])
    fail(g, n, "the weights take " + std::to_string(w[1]) + " input channels, the input has " + std::to_string(x[1]));
  if (a.kh != w[2] || a.kw != w[3] || a.h != x[2] || a.w != x[3]) fail(g, n, "attributes do not match the operands");
  if (a.out_h() < 1 || a.out_w() < 1)
    fail(g, n, "the " + std::to_string(a.kh) + "x" + std::to_string(a.kw) + " kernel does not fit the " + std::to_string(a.h) +
                   "x" + std::to_string(a.w) + " image (padding " + std::to_string(a.pad_h) + ", dilation " +
                   std::to_string(a.dil_h) + ")");
  return Port{t, Shape{x[0], w[0], a.out_h(), a.out_w()}};
}
Outputs infer_conv(const Graph& g, const Node& n) { return infer_conv_with(g, n, n.attrs.as<ConvAttrs>()); }
// conv2d_bias(x, w, b): b holds one value per output channel ({OC, 1, 1} as conv2d adds it).
Outputs infer_conv_bias(const Graph& g, const Node& n) {
  const Outputs out = infer_conv_with(g, n, n.attrs.as<ConvAttrs>());
  require_same_dtype(g, n, 0, 2);
  if (operand(g, n, 2).shape.numel() != operand(g, n, 1).shape[0]) fail(g, n, "the bias must hold one value per output channel");
  return out;
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

// The shapes a kernel works with.
struct Geometry {
  std::int64_t n, c, oc, k, p;  // batch, input channels, output channels, C KH KW, OH OW
};

// The output columns j whose input column j s - p + b d is inside the image: [lo, hi).
struct Span {
  std::int64_t lo, hi;
};
Span inside(std::int64_t out, std::int64_t in, int stride, int pad, std::int64_t offset) {
  // j s - pad + offset >= 0  and  j s - pad + offset < in
  const std::int64_t first = pad - offset;  // the smallest j s allowed
  std::int64_t lo = first <= 0 ? 0 : (first + stride - 1) / stride;
  std::int64_t hi = in - 1 + pad - offset < 0 ? 0 : (in - 1 + pad - offset) / stride + 1;
  lo = std::min(lo, out);
  hi = std::max(lo, std::min(hi, out));
  return {lo, hi};
}

// One image: col[(c KH + a) KW + b, i OW + j] = x[c, i s - p + a d, j s - p + b d] (0 outside).
// Each row of the output is zeros, a (strided) run of the input row, zeros: no test per element.
// Stride 1 with the output as wide as the input ("same" padding, the common case): an output
// position and the input position a kernel tap reads are a constant distance apart in the
// flattened image, off = (a d - p) W + (b d - p). A tap's col row is then one contiguous copy of
// the image, shifted, with two fix-ups: the rows above or below the image are zeros, and the
// columns left or right of it (which the flat copy wrapped to the neighbouring image row) too.
bool flat(const ConvAttrs& a) { return a.stride_h == 1 && a.stride_w == 1 && a.out_w() == a.w; }

// A tap's geometry in the flat case: its rows [is.lo, is.hi) and columns [js.lo, js.hi) inside
// the image, its offset, and the flat range [lo, hi) of col entries whose input is in the plane.
struct Tap {
  Span is, js;
  std::int64_t off, lo, hi;
};
Tap tap(const ConvAttrs& a, std::int64_t ka, std::int64_t kb) {
  Tap t;
  t.is = inside(a.out_h(), a.h, 1, a.pad_h, ka * a.dil_h);
  t.js = inside(a.w, a.w, 1, a.pad_w, kb * a.dil_w);
  t.off = (ka * a.dil_h - a.pad_h) * a.w + (kb * a.dil_w - a.pad_w);
  t.lo = std::max(t.is.lo * a.w, -t.off);
  t.hi = std::max(t.lo, std::min(t.is.hi * a.w, a.h * a.w - t.off));
  return t;
}
// Zeroes a tap's col entries whose input column is left or right of the image.
template <typename T>
void zero_edges(T* row, const Tap& t, std::int64_t w) {
  for (std::int64_t i = t.is.lo; i < t.is.hi; ++i) {
    for (std::int64_t j = 0; j < t.js.lo; ++j) row[i * w + j] = T(0);
    for (std::int64_t j = t.js.hi; j < w; ++j) row[i * w + j] = T(0);
  }
}

template <typename T>
void im2col(const T* x, T* col, const ConvAttrs& a, const Geometry& g) {
  const std::int64_t oh = a.out_h(), ow = a.out_w();
  if (flat(a)) {
    for (std::int64_t c = 0; c < g.c; ++c)
      for (std::int64_t ka = 0; ka < a.kh; ++ka)
        for (std::int64_t kb = 0; kb < a.kw; ++kb) {
          T* row = col + ((c * a.kh + ka) * a.kw + kb) * g.p;
          const T* in = x + c * a.h * a.w;
          const Tap t = tap(a, ka, kb);
          // Entries before lo or from hi on are rows outside the image or (the ends of the
          // plane) edge columns: zeros either way.
          for (std::int64_t i = 0; i < t.lo; ++i) row[i] = T(0);
#pragma omp simd
          for (std::int64_t i = t.lo; i < t.hi; ++i) row[i] = in[i + t.off];
          for (std::int64_t i = t.hi; i < g.p; ++i) row[i] = T(0);
          zero_edges(row, t, ow);
        }
    return;
  }
  for (std::int64_t c = 0; c < g.c; ++c) {
    const T* plane = x + c * a.h * a.w;
    for (std::int64_t ka = 0; ka < a.kh; ++ka)
      for (std::int64_t kb = 0; kb < a.kw; ++kb) {
        T* row = col + ((c * a.kh + ka) * a.kw + kb) * g.p;
        const Span js = inside(ow, a.w, a.stride_w, a.pad_w, kb * a.dil_w);
        const std::int64_t shift = kb * a.dil_w - a.pad_w;
        for (std::int64_t i = 0; i < oh; ++i) {
          const std::int64_t ih = i * a.stride_h - a.pad_h + ka * a.dil_h;
          T* out = row + i * ow;
          if (ih < 0 || ih >= a.h) {
            for (std::int64_t j = 0; j < ow; ++j) out[j] = T(0);
            continue;
          }
          const T* in = plane + ih * a.w + shift;
          for (std::int64_t j = 0; j < js.lo; ++j) out[j] = T(0);
          if (a.stride_w == 1)
            for (std::int64_t j = js.lo; j < js.hi; ++j) out[j] = in[j];
          else
            for (std::int64_t j = js.lo; j < js.hi; ++j) out[j] = in[j * a.stride_w];
          for (std::int64_t j = js.hi; j < ow; ++j) out[j] = T(0);
        }
      }
  }
}

// One image: dx[c, ...] = the sum of the col entries im2col would have taken from there.
// col is scratch: the flat case zeroes the entries of padding positions in it first, so that the
// shifted flat sums add 0 where they wrap (those entries are the gradient of padding, dropped).
template <typename T>
void col2im(T* col, T* x, const ConvAttrs& a, const Geometry& g) {
  const std::int64_t oh = a.out_h(), ow = a.out_w();
  for (std::int64_t i = 0; i < g.c * a.h * a.w; ++i) x[i] = T(0);
  if (flat(a)) {
    for (std::int64_t c = 0; c < g.c; ++c)
      for (std::int64_t ka = 0; ka < a.kh; ++ka)
        for (std::int64_t kb = 0; kb < a.kw; ++kb) {
          T* row = col + ((c * a.kh + ka) * a.kw + kb) * g.p;
          T* out = x + c * a.h * a.w;
          const Tap t = tap(a, ka, kb);
          zero_edges(row, t, ow);
#pragma omp simd
          for (std::int64_t i = t.lo; i < t.hi; ++i) out[i + t.off] += row[i];
        }
    return;
  }
  for (std::int64_t c = 0; c < g.c; ++c) {
    T* plane = x + c * a.h * a.w;
    for (std::int64_t ka = 0; ka < a.kh; ++ka)
      for (std::int64_t kb = 0; kb < a.kw; ++kb) {
        const T* row = col + ((c * a.kh + ka) * a.kw + kb) * g.p;
        const Span js = inside(ow, a.w, a.stride_w, a.pad_w, kb * a.dil_w);
        const std::int64_t shift = kb * a.dil_w - a.pad_w;
        for (std::int64_t i = 0; i < oh; ++i) {
          const std::int64_t ih = i * a.stride_h - a.pad_h + ka * a.dil_h;
          if (ih < 0 || ih >= a.h) continue;
          T* out = plane + ih * a.w + shift;
          const T* in = row + i * ow;
          if (a.stride_w == 1)
            for (std::int64_t j = js.lo; j < js.hi; ++j) out[j] += in[j];
          else
            for (std::int64_t j = js.lo; j < js.hi; ++j) out[j * a.stride_w] += in[j];
        }
      }
  }
}

Geometry geometry(const ConvAttrs& a, std::int64_t n, std::int64_t c, std::int64_t oc) {
  return Geometry{n, c, oc, c * a.kh * a.kw, a.out_h() * a.out_w()};
}

// The batch is cut into fixed chunks of consecutive images (about 8, at most 16 images each),
// which run in parallel, one thread per chunk at a time. A chunk works image by image in
// buffers of its own that stay in cache: im2col, then the image's product on BLIS's
// microkernel (micro_gemm.hpp: no BLIS call, so nothing is allocated and the weights are
// packed once per op, not once per image), written straight into the image's NCHW slice (no
// permute), then col2im or the bias and ReLU. The chunks depend only on the batch size, so
// neither does the weight gradient's summation order (images in order within a chunk, then
// the chunks in order, in double): every kernel gives the same bits for any thread count.
struct Chunks {
  std::int64_t size, count;
};
Chunks chunks(std::int64_t n) {
  const std::int64_t size = std::clamp<std::int64_t>((n + 7) / 8, 1, 16);
  return {size, (n + size - 1) / size};
}

// Runs f(chunk) for every chunk, the chunks split over the threads.
template <typename F>
void for_chunks(const Chunks& ch, std::int64_t work_per_chunk, int threads, F&& f) {
  parallel_for(ch.count, threads, work_per_chunk, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t c = lo; c < hi; ++c) f(c);
  });
}

// dW {OC, K} this small with a long inner dimension (a first layer: 32 x 9 against P = 784)
// would run mostly on padding in the microkernel's 32 x 12 tiles, so the kernel takes dot
// products of g's rows with col's rows instead, which the compiler vectorises.
constexpr std::int64_t kSmallWgrad = 1024;

// The workspace, in elements of T, each buffer on a 64-byte boundary: `shared` once, then per
// chunk the (at most 4) buffers `each` lists.
struct Scratch {
  std::int64_t shared = 0, per_chunk = 0;
  std::array<std::int64_t, 4> at{};  // offsets within a chunk's part (no allocation: kernels build it)
  template <typename T> static std::int64_t round(std::int64_t n) {
    const std::int64_t per = static_cast<std::int64_t>(64 / sizeof(T));
    return (n + per - 1) / per * per;
  }
  template <typename T> static Scratch make(std::int64_t shared, std::initializer_list<std::int64_t> each) {
    Scratch s;
    s.shared = round<T>(shared);
    std::size_t i = 0;
    for (std::int64_t e : each) s.at[i++] = s.per_chunk, s.per_chunk += round<T>(e);
    return s;
  }
  template <typename T> T* chunk(void* base, std::int64_t c, int i) const {
    return static_cast<T*>(base) + shared + c * per_chunk + at[static_cast<std::size_t>(i)];
  }
  std::int64_t elements(std::int64_t chunks) const { return shared + chunks * per_chunk; }
};

// conv2d: shared W^T packed as B {K, OC}; per chunk col {K, P} and col^T packed as A {P, K}.
template <typename T>
Scratch conv_layout(const Geometry& g) {
  const Micro<T>& u = Micro<T>::get();
  return Scratch::make<T>(u.packed_b(g.k, g.oc), {g.k * g.p, u.packed_a(g.p, g.k)});
}
// dgrad: shared W packed as B {OC, K}; per chunk g[n]^T packed as A {P, OC} and dcol {K, P}.
template <typename T>
Scratch dgrad_layout(const Geometry& g) {
  const Micro<T>& u = Micro<T>::get();
  return Scratch::make<T>(u.packed_b(g.oc, g.k), {u.packed_a(g.p, g.oc), g.k * g.p});
}
// wgrad: per chunk col {K, P}, col packed as A {K, P}, g[n]^T packed as B {P, OC}, and the
// chunk's partial dW {OC, K}.
template <typename T>
Scratch wgrad_layout(const Geometry& g) {
  const Micro<T>& u = Micro<T>::get();
  return Scratch::make<T>(0, {g.k * g.p, u.packed_a(g.k, g.p), u.packed_b(g.p, g.oc), g.oc * g.k});
}

template <typename Layout>
std::size_t scratch_bytes(const Node& n, const Geometry& g, Layout layout_f32, Layout layout_f64) {
  const bool f32 = n.out().dtype == DType::f32;
  const Scratch s = f32 ? layout_f32(g) : layout_f64(g);
  return static_cast<std::size_t>(s.elements(chunks(g.n).count)) * (f32 ? sizeof(float) : sizeof(double));
}
std::size_t conv_scratch(const Node& n, const Shape* in, int) {
  return scratch_bytes(n, geometry(n.attrs.as<ConvAttrs>(), in[0][0], in[0][1], in[1][0]), conv_layout<float>,
                       conv_layout<double>);
}
std::size_t dgrad_scratch(const Node& n, const Shape* in, int) {
  return scratch_bytes(n, geometry(n.attrs.as<ConvAttrs>(), in[0][0], in[1][1], in[1][0]), dgrad_layout<float>,
                       dgrad_layout<double>);
}
std::size_t wgrad_scratch(const Node& n, const Shape* in, int) {
  return scratch_bytes(n, geometry(n.attrs.as<ConvAttrs>(), in[0][0], in[0][1], in[1][1]), wgrad_layout<float>,
                       wgrad_layout<double>);
}

// y[n] = W col[n], as y[n]^T {P, OC} (column-stored, ldc P: y[n]'s NCHW slice) = col^T W^T; then
// y[n] + b (per row) and ReLU when asked: the add and add_relu kernels' arithmetic, so fusing
// changes no bit.
template <typename T>
void conv_run(const KernelArgs& k, const ConvAttrs& a, const T* bias, bool relu) {
  const Geometry g = geometry(a, k.in[0].shape[0], k.in[0].shape[1], k.in[1].shape[0]);
  if (g.n == 0) return;
  const T* x = data<T>(k.in[0]);
  const T* w = data<T>(k.in[1]);
  T* y = data<T>(k.out[0]);
  const Scratch s = conv_layout<T>(g);
  T* wt = static_cast<T*>(k.workspace);
  pack_b(w, std::int64_t{1}, g.k, g.k, g.oc, wt);  // B(tap, o) = W[o, tap]
  const Chunks ch = chunks(g.n);
  for_chunks(ch, ch.size * g.oc * g.k * g.p, k.threads, [&](std::int64_t c) {
    T* col = s.chunk<T>(k.workspace, c, 0);
    T* packed = s.chunk<T>(k.workspace, c, 1);
    for (std::int64_t n = c * ch.size; n < std::min(g.n, (c + 1) * ch.size); ++n) {
      im2col(x + n * g.c * a.h * a.w, col, a, g);
      pack_a(col, std::int64_t{1}, g.p, g.p, g.k, packed);  // A(p, tap) = col[tap, p]
      T* yn = y + n * g.oc * g.p;
      micro_gemm(g.p, g.oc, g.k, packed, wt, T(0), yn, g.p);
      if (bias == nullptr) continue;
      for (std::int64_t o = 0; o < g.oc; ++o) {
        T* row = yn + o * g.p;
        const T b = bias[o];
        if (relu) {
#pragma omp simd
          for (std::int64_t i = 0; i < g.p; ++i) {
            const T v = row[i] + b;
            row[i] = v > T(0) ? v : T(0);
          }
        } else {
#pragma omp simd
          for (std::int64_t i = 0; i < g.p; ++i) row[i] += b;
        }
      }
    }
  });
}

template <typename T>
void conv_fwd(const KernelArgs& k) {
  conv_run<T>(k, k.attrs<ConvAttrs>(), nullptr, false);
}

template <typename T>
void conv_bias_fwd(const KernelArgs& k) {
  const ConvAttrs& a = k.attrs<ConvAttrs>();
  conv_run<T>(k, a, data<T>(k.in[2]), a.relu != 0);
}

// dcol = W^T g[n], as dcol^T {P, K} (column-stored, ldc P: dcol {K, P} row-major) = g[n]^T W;
// then col2im into dx[n].
template <typename T>
void dgrad_fwd(const KernelArgs& k) {
  const ConvAttrs& a = k.attrs<ConvAttrs>();
  const Geometry g = geometry(a, k.in[0].shape[0], k.in[1].shape[1], k.in[1].shape[0]);
  if (g.n == 0) return;
  const T* gy = data<T>(k.in[0]);
  const T* w = data<T>(k.in[1]);
  T* dx = data<T>(k.out[0]);
  const Scratch s = dgrad_layout<T>(g);
  T* wp = static_cast<T*>(k.workspace);
  pack_b(w, g.k, std::int64_t{1}, g.oc, g.k, wp);  // B(o, tap) = W[o, tap]
  const Chunks ch = chunks(g.n);
  for_chunks(ch, ch.size * g.oc * g.k * g.p, k.threads, [&](std::int64_t c) {
    T* packed = s.chunk<T>(k.workspace, c, 0);
    T* col = s.chunk<T>(k.workspace, c, 1);
    for (std::int64_t n = c * ch.size; n < std::min(g.n, (c + 1) * ch.size); ++n) {
      pack_a(gy + n * g.oc * g.p, std::int64_t{1}, g.p, g.p, g.oc, packed);  // A(p, o) = g[n, o, p]
      micro_gemm(g.p, g.k, g.oc, packed, wp, T(0), col, g.p);
      col2im(col, dx + n * g.c * a.h * a.w, a, g);
    }
  });
}

// dW = sum over images of g[n] col[n]^T, as dW^T {K, OC} (column-stored, ldc K: dW {OC, K}
// row-major) = col g[n]^T, accumulated per chunk, then the chunks added in order in double.
template <typename T>
void wgrad_fwd(const KernelArgs& k) {
  const ConvAttrs& a = k.attrs<ConvAttrs>();
  const Geometry g = geometry(a, k.in[0].shape[0], k.in[0].shape[1], k.in[1].shape[1]);
  const T* x = data<T>(k.in[0]);
  const T* gy = data<T>(k.in[1]);
  T* dw = data<T>(k.out[0]);
  const Scratch s = wgrad_layout<T>(g);
  const Chunks ch = chunks(g.n);
  const bool small = g.oc * g.k <= kSmallWgrad;
  for_chunks(ch, ch.size * g.oc * g.k * g.p, k.threads, [&](std::int64_t c) {
    T* col = s.chunk<T>(k.workspace, c, 0);
    T* pa = s.chunk<T>(k.workspace, c, 1);
    T* pb = s.chunk<T>(k.workspace, c, 2);
    T* part = s.chunk<T>(k.workspace, c, 3);
    for (std::int64_t n = c * ch.size; n < std::min(g.n, (c + 1) * ch.size); ++n) {
      const bool first = n == c * ch.size;
      im2col(x + n * g.c * a.h * a.w, col, a, g);
      const T* t = gy + n * g.oc * g.p;
      if (small) {
        for (std::int64_t o = 0; o < g.oc; ++o)
          for (std::int64_t r = 0; r < g.k; ++r) {
            const T* u = t + o * g.p;
            const T* v = col + r * g.p;
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (std::int64_t j = 0; j < g.p; ++j) dot += u[j] * v[j];
            part[o * g.k + r] = first ? dot : part[o * g.k + r] + dot;
          }
        continue;
      }
      pack_a(col, g.p, std::int64_t{1}, g.k, g.p, pa);  // A(tap, p) = col[tap, p]
      pack_b(t, std::int64_t{1}, g.p, g.p, g.oc, pb);    // B(p, o) = g[n, o, p]
      micro_gemm(g.k, g.oc, g.p, pa, pb, first ? T(0) : T(1), part, g.k);
    }
  });
  parallel_for(g.oc * g.k, k.threads, ch.count, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t i = lo; i < hi; ++i) {
      double sum = 0;
      for (std::int64_t c = 0; c < ch.count; ++c) sum += static_cast<double>(s.chunk<T>(k.workspace, c, 3)[i]);
      dw[i] = static_cast<T>(sum);
    }
  });
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

// As for conv2d(x, w) + b, then relu when fused with it: g' = relu_grad(g, y) (or g),
// dx = dgrad(g', w), dw = wgrad(x, g'), db = g' summed to b's shape.
std::vector<Value> conv_bias_vjp(const VjpArgs& v) {
  ConvAttrs a = v.attrs<ConvAttrs>();
  const Value g = a.relu ? make(relu_grad_op, {v.dy(), v.y()}) : v.dy();
  a.relu = 0;
  std::vector<Value> out(3);
  if (v.wanted[0]) out[0] = dgrad(g, v.in(1), a);
  if (v.wanted[1]) out[1] = wgrad(v.in(0), g, a);
  if (v.wanted[2]) out[2] = unbroadcast(g, v.in_shape(2));
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

// ONNX: Conv, with the same geometry attributes (pads: top, left, bottom, right). conv2d has
// no bias: the layer's bias is an add of its own (conv2d(x, w, b) = conv2d(x, w) + b {OC, 1, 1}),
// written as an Add. The fused conv2d_bias exists only inside programs, never in a graph.
void conv_onnx(OnnxWriter& w) {
  const ConvAttrs& a = w.node().attrs.as<ConvAttrs>();
  w.add("Conv", {w.in(0), w.in(1)}, {w.out(0)},
        {OnnxAttr::list("kernel_shape", {a.kh, a.kw}), OnnxAttr::list("strides", {a.stride_h, a.stride_w}),
         OnnxAttr::list("pads", {a.pad_h, a.pad_w, a.pad_h, a.pad_w}), OnnxAttr::list("dilations", {a.dil_h, a.dil_w}),
         OnnxAttr::integer("group", 1)});
}

}  // namespace

GG_OP(conv2d_op) = {.name = "conv2d", .arity = 2, .diff_inputs = 0b11,
                    .kernels = {.f32 = conv_fwd<float>, .f64 = conv_fwd<double>}, .infer = infer_conv,
                    .workspace = conv_scratch, .vjp = conv_vjp, .onnx = conv_onnx};
GG_OP(conv2d_bias_op) = {.name = "conv2d_bias", .arity = 3, .flags = kInternal, .diff_inputs = 0b111,
                         .kernels = {.f32 = conv_bias_fwd<float>, .f64 = conv_bias_fwd<double>}, .infer = infer_conv_bias,
                         .workspace = conv_scratch, .vjp = conv_bias_vjp};
GG_OP(conv2d_dgrad_op) = {.name = "conv2d_dgrad", .arity = 2, .flags = kInternal, .diff_inputs = 0b11,
                          .kernels = {.f32 = dgrad_fwd<float>, .f64 = dgrad_fwd<double>}, .infer = infer_dgrad,
                          .workspace = dgrad_scratch, .vjp = dgrad_vjp};
GG_OP(conv2d_wgrad_op) = {.name = "conv2d_wgrad", .arity = 2, .flags = kInternal, .diff_inputs = 0b11,
                          .kernels = {.f32 = wgrad_fwd<float>, .f64 = wgrad_fwd<double>}, .infer = infer_wgrad,
                          .workspace = wgrad_scratch, .vjp = wgrad_vjp};

namespace {

// add(conv2d(x, w), b) -> conv2d_bias(x, w, b), and add_relu(conv2d(x, w), b) (made in phase 0)
// -> conv2d_bias(x, w, b) with ReLU, when b is one value per output channel (the bias conv2d
// adds), the add does not broadcast the convolution's output, and nobody else reads or fetches
// that output. The add node becomes the fused one (it keeps its name and readers).
bool fuse_conv_bias(Rewriter& r, int i) {
  IrNode& e = r.at(i);
  const bool relu = e.node.op == &add_relu_op;
  if (!relu && e.node.op != &add_op) return false;
  for (int side = 0; side < 2; ++side) {
    const int c = e.node.inputs[side].node;
    if (r.op(c) != &conv2d_op || r.fetched(c) || r.readers(c).size() != 1) continue;
    const Node& conv = r.at(c).node;
    const Operand bias = e.node.inputs[1 - side];
    const Port& b = r.at(bias.node).node.out(bias.port);
    const Shape& y = conv.out().shape;
    const bool per_channel = (b.shape == Shape{y[1], 1, 1}) || (b.shape == Shape{1, y[1], 1, 1});
    if (!per_channel || b.dtype != conv.out().dtype || e.node.out().shape != y) continue;
    e.node.op = &conv2d_bias_op;
    ConvAttrs a = conv.attrs.as<ConvAttrs>();
    a.relu = relu ? 1 : 0;
    e.node.attrs = Attrs(a);
    e.node.inputs = {conv.inputs[0], conv.inputs[1], bias};
    e.node.fused = true;
    r.kill(c);
    return true;
  }
  return false;
}

}  // namespace

GG_FUSION(conv2d_bias_rule) = {"conv2d_bias", 1, fuse_conv_bias};

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
