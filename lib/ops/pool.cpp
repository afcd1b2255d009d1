// 2-d pooling over NCHW maps (x is {N, C, H, W}: N may be dyn, C, H, W static). A window of
// kh x kw cells moves by (sh, sw) over the map padded by (ph, pw) on each side; output cell
// (oh, ow) covers rows oh*sh - ph .. oh*sh - ph + kh - 1 and the matching columns, and
//   OH = (H + 2 ph - kh) / sh + 1,  OW = (W + 2 pw - kw) / sw + 1   (floor: PyTorch, ceil_mode=False).
// Padding is at most half the window, so every window holds at least one cell of the map.
//
//   max_pool2d(x):              y = max over the window's cells of the map (padding never wins:
//                               it acts as -inf); a NaN in the window wins; ties go to the first
//                               maximum in row-major window order (PyTorch's CPU rule).
//                               Two outputs: y, and i = the int64 flat index h*W + w of the
//                               maximum within its (n, c) plane.
//                               dx = max_unpool2d(g, i); no gradient to (or through) i
//   max_unpool2d(g, i):         dx[n, c, i[n, c, oh, ow]] += g[n, c, oh, ow]: zeros of x's shape
//                               with g added at the indices (overlapping windows add up)
//                               dg = max_pool2d_gather(v, i)
//   max_pool2d_gather(v, i):    y[n, c, oh, ow] = v[n, c, i[n, c, oh, ow]]   (i's shape)
//                               dv = max_unpool2d(g, i)
//   avg_pool2d(x):              y = (sum of the window's cells of the map) / (kh kw): padding
//                               counts as zeros in the mean (count_include_pad = true)
//                               dx = avg_pool2d_backward(g)
//   avg_pool2d_backward(g):     dx[n, c, h, w] = sum over the windows holding (h, w) of g / (kh kw)
//                               dg = avg_pool2d(v)   (the two are adjoint)
//   global_avg_pool(x) = mean(x, {2, 3}) -> {N, C};  flatten(x) = reshape(x, {N, C*H*W}): no ops
//   of their own.
// The unpooling and gathering pairs and the average pair are each other's VJPs, so gradients of
// gradients work. Every kernel gives each thread whole (n, c) planes, and within a plane walks the
// windows in row-major order: overlapping windows add up in the same order for any thread count.
#include "fusion.hpp"
#include "kernels.hpp"
#include "onnx.hpp"
#include "op_list.hpp"

#include <limits>
#include <stdexcept>

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// Pooling over NCHW maps x {N, C, H, W} (N may be dyn) with square kernel x kernel windows moved
// by `stride` (0: the kernel, non-overlapping windows) over the map padded by `padding` cells on
// each side (at most kernel / 2). The output is {N, C, OH, OW} with
// OH = (H + 2 padding - kernel) / stride + 1 (floor), OW likewise: PyTorch's defaults.
//
// max_pool2d: the largest cell of each window (padding never wins; a NaN wins; ties go to the first
// maximum in row-major order). The node has a second output, the int64 flat index h * W + w of
// each maximum within its (n, c) plane: Value{y.graph, y.id, 1}. The gradient goes to the maxima.
Value max_pool2d(Value x, int kernel, int stride = 0, int padding = 0);
// avg_pool2d: the mean of each window, padding counted as zeros (the divisor is always
// kernel * kernel: PyTorch's count_include_pad = true).
Value avg_pool2d(Value x, int kernel, int stride = 0, int padding = 0);
// mean over the spatial axes {2, 3} of an NCHW tensor: {N, C}.
Value global_avg_pool(Value x);
// {N, d1, d2, ...} to {N, d1 * d2 * ...}: a view (no copy) keeping dimension 0 (which may be dyn);
// the others must be static. Rank 2 is returned as it is.
Value flatten(Value x);
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

// One pooling window and the map it moves over; every pooling op of this file holds it. The
// public constructors make square windows (kernel_h = kernel_w, ...). height and width are x's
// spatial extents: the output extent of the adjoints (max_unpool2d, avg_pool2d_backward), as
// SliceAttrs::size is unslice's.
struct PoolAttrs {
  int kernel_h = 1, kernel_w = 1;
  int stride_h = 1, stride_w = 1;
  int pad_h = 0, pad_w = 0;
  std::int64_t height = 0, width = 0;
  template <typename F> void visit(F&& f) {
    f("kernel_h", kernel_h), f("kernel_w", kernel_w), f("stride_h", stride_h), f("stride_w", stride_w);
    f("pad_h", pad_h), f("pad_w", pad_w), f("height", height), f("width", width);
  }
};

// "3" for a square window, "3x2" otherwise (for error messages).
std::string pair_text(std::int64_t h, std::int64_t w) {
  return h == w ? std::to_string(h) : std::to_string(h) + "x" + std::to_string(w);
}

std::int64_t pooled_extent(std::int64_t size, int kernel, int stride, int pad) { return (size + 2 * pad - kernel) / stride + 1; }

// x's shape must be {N, C, H, W} with C, H, W static, and the window must fit the padded map.
// Returns the pooled shape {N, C, OH, OW}. Each rule has a message of its own.
Shape check_pool(const Graph& g, const Node& n, int i) {
  const Shape& s = operand(g, n, i).shape;
  const PoolAttrs& a = n.attrs.as<PoolAttrs>();
  if (s.rank != 4) fail(g, n, "expects an NCHW tensor of rank 4, got rank " + std::to_string(s.rank));
  if (s.dims[1] == dyn || s.dims[2] == dyn || s.dims[3] == dyn)
    fail(g, n, "channels, height and width must be static (only the batch dimension may be dyn)");
  if (a.kernel_h < 1 || a.kernel_w < 1) fail(g, n, "the pooling window must be at least 1, got " + pair_text(a.kernel_h, a.kernel_w));
  if (a.stride_h < 1 || a.stride_w < 1) fail(g, n, "the stride must be at least 1, got " + pair_text(a.stride_h, a.stride_w));
  if (a.pad_h < 0 || a.pad_w < 0) fail(g, n, "the padding must not be negative, got " + pair_text(a.pad_h, a.pad_w));
  // A wider padding would make windows of padding only (and PyTorch refuses it).
  if (a.pad_h > a.kernel_h / 2 || a.pad_w > a.kernel_w / 2)
    fail(g, n, "padding " + pair_text(a.pad_h, a.pad_w) + " is more than half the pooling window " +
                   pair_text(a.kernel_h, a.kernel_w));
  if (s.dims[2] + 2 * a.pad_h < a.kernel_h || s.dims[3] + 2 * a.pad_w < a.kernel_w)
    fail(g, n, "pooling window " + pair_text(a.kernel_h, a.kernel_w) + " does not fit the " +
                   std::to_string(s.dims[2]) + "x" + std::to_string(s.dims[3]) + " map (padding " +
                   pair_text(a.pad_h, a.pad_w) + ")");
  return Shape{s.dims[0], s.dims[1], pooled_extent(s.dims[2], a.kernel_h, a.stride_h, a.pad_h),
               pooled_extent(s.dims[3], a.kernel_w, a.stride_w, a.pad_w)};
}

Outputs infer_max_pool(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  const Shape y = check_pool(g, n, 0);
  return Outputs(Port{t, y}, Port{DType::i64, y});
}

Outputs infer_avg_pool(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  return Port{t, check_pool(g, n, 0)};
}

// The map the adjoints write: {N, C, height, width}, N and C from their pooled operand, which
// must have the shape pooling that map gives.
Shape unpooled_shape(const Graph& g, const Node& n, const Shape& pooled) {
  const PoolAttrs& a = n.attrs.as<PoolAttrs>();
  // The forward op checked the window; these attributes are its, but guard the division anyway.
  if (a.stride_h < 1 || a.stride_w < 1) fail(g, n, "the stride must be at least 1, got " + pair_text(a.stride_h, a.stride_w));
  const Shape x{pooled.rank == 4 ? pooled.dims[0] : 0, pooled.rank == 4 ? pooled.dims[1] : 0, a.height, a.width};
  if (pooled.rank != 4 || pooled_extent(a.height, a.kernel_h, a.stride_h, a.pad_h) != pooled.dims[2] ||
      pooled_extent(a.width, a.kernel_w, a.stride_w, a.pad_w) != pooled.dims[3])
    fail(g, n, to_string(pooled) + " is not the pooled shape of " + to_string(x));
  return x;
}

// max_unpool2d(g, i): g and the int64 indices of one pooled shape.
Outputs infer_unpool(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  const Port& idx = operand(g, n, 1);
  if (idx.dtype != DType::i64) fail(g, n, "the indices must be int64");
  if (idx.shape != operand(g, n, 0).shape) fail(g, n, "the gradient and the indices must have the same shape");
  return Port{t, unpooled_shape(g, n, idx.shape)};
}

// max_pool2d_gather(v, i): v of the unpooled shape, indices pooled from it.
Outputs infer_gather(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  const Port& idx = operand(g, n, 1);
  if (idx.dtype != DType::i64) fail(g, n, "the indices must be int64");
  if (unpooled_shape(g, n, idx.shape) != operand(g, n, 0).shape) fail(g, n, "the indices were not pooled from this map");
  return Port{t, idx.shape};
}

Outputs infer_avg_backward(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  return Port{t, unpooled_shape(g, n, operand(g, n, 0).shape)};
}

// The window of output cell (oh, ow) clipped to the map: rows [h0, h1), columns [w0, w1). Never
// empty: padding is at most half the window and the output extent is floored.
struct Window {
  std::int64_t h0, h1, w0, w1;
};
Window window(const PoolAttrs& a, std::int64_t H, std::int64_t W, std::int64_t oh, std::int64_t ow) {
  const std::int64_t hs = oh * a.stride_h - a.pad_h, ws = ow * a.stride_w - a.pad_w;
  return {std::max<std::int64_t>(hs, 0), std::min<std::int64_t>(hs + a.kernel_h, H), std::max<std::int64_t>(ws, 0),
          std::min<std::int64_t>(ws + a.kernel_w, W)};
}

// The (n, c) planes of a map {N, C, H, W} and of its pooled {N, C, OH, OW}.
struct Planes {
  std::int64_t count, H, W, OH, OW;
};
Planes planes(const Shape& map, const Shape& pooled) {
  return {map.dims[0] * map.dims[1], map.dims[2], map.dims[3], pooled.dims[2], pooled.dims[3]};
}

// Output cell j of a row of 2x2 windows at stride 2 (rows r0 and r1 of the map, `at` the flat
// index of r0[0]): the same comparisons in the same order as the general loop below, but
// branch-free (selects), so that the compiler vectorises them. Starting from v0 is starting below
// every value at the window's first cell.
template <typename T>
inline void max_pool_cell_2x2(const T* r0, const T* r1, T* y, std::int64_t* idx, std::int64_t w, std::int64_t at,
                              std::int64_t j) {
  const T v0 = r0[2 * j], v1 = r0[2 * j + 1], v2 = r1[2 * j], v3 = r1[2 * j + 1];
  T best = v0;
  std::int64_t off = 0;
  bool take = v1 > best || v1 != v1;
  best = take ? v1 : best, off = take ? 1 : off;
  take = v2 > best || v2 != v2;
  best = take ? v2 : best, off = take ? w : off;
  take = v3 > best || v3 != v3;
  best = take ? v3 : best, off = take ? w + 1 : off;
  y[j] = best;
  idx[j] = at + 2 * j + off;
}
template <typename T, int B>
inline void max_pool_block_2x2(const T* __restrict r0, const T* __restrict r1, T* __restrict y,
                               std::int64_t* __restrict idx, std::int64_t w, std::int64_t at, std::int64_t j0) {
#pragma omp simd
  for (int j = 0; j < B; ++j) max_pool_cell_2x2(r0, r1, y, idx, w, at, j0 + j);
}
// A row in fixed blocks of 8 (or 4) cells, the last block moved back to end at the row's end
// (recomputing a few cells): rows are short (14 and 7 cells in the reference CNN), and a
// vectorised loop's scalar remainder would be most of the work, with a mispredicted branch per
// comparison on random maps. 4x to 12x faster than the plain loop there.
template <typename T>
void max_pool_row_2x2(const T* r0, const T* r1, T* y, std::int64_t* idx, std::int64_t ow, std::int64_t w, std::int64_t at) {
  if (ow >= 8) {
    std::int64_t j = 0;
    for (; j + 8 <= ow; j += 8) max_pool_block_2x2<T, 8>(r0, r1, y, idx, w, at, j);
    if (j < ow) max_pool_block_2x2<T, 8>(r0, r1, y, idx, w, at, ow - 8);
  } else if (ow >= 4) {
    max_pool_block_2x2<T, 4>(r0, r1, y, idx, w, at, 0);
    max_pool_block_2x2<T, 4>(r0, r1, y, idx, w, at, ow - 4);
  } else {
    for (std::int64_t j = 0; j < ow; ++j) max_pool_cell_2x2(r0, r1, y, idx, w, at, j);
  }
}

template <typename T>
void max_pool_fwd(const KernelArgs& k) {
  const PoolAttrs& a = k.attrs<PoolAttrs>();
  const Planes p = planes(k.in[0].shape, k.out[0].shape);
  const T* x = data<T>(k.in[0]);
  T* y = data<T>(k.out[0]);
  std::int64_t* idx = data<std::int64_t>(k.out[1]);
  // 2x2 windows at stride 2 without padding, the common case: see max_pool_row_2x2.
  const bool two_by_two = a.kernel_h == 2 && a.kernel_w == 2 && a.stride_h == 2 && a.stride_w == 2 && a.pad_h == 0 &&
                          a.pad_w == 0;
  parallel_for(p.count, k.threads, p.OH * p.OW * a.kernel_h * a.kernel_w, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t c = lo; c < hi; ++c) {
      const T* xp = x + c * p.H * p.W;
      T* yp = y + c * p.OH * p.OW;
      std::int64_t* ip = idx + c * p.OH * p.OW;
      if (two_by_two) {
        for (std::int64_t oh = 0; oh < p.OH; ++oh) {
          const T* r0 = xp + 2 * oh * p.W;
          const T* r1 = r0 + p.W;
          max_pool_row_2x2(r0, r1, yp + oh * p.OW, ip + oh * p.OW, p.OW, p.W, 2 * oh * p.W);
        }
        continue;
      }
      for (std::int64_t oh = 0; oh < p.OH; ++oh)
        for (std::int64_t ow = 0; ow < p.OW; ++ow) {
          const Window w = window(a, p.H, p.W, oh, ow);
          // PyTorch's loop: start below every value at the window's first cell (so a window of
          // -inf still names a cell of the map); a strictly greater value keeps the first of tied
          // maxima; every NaN takes over, so the value is NaN and the index the last NaN's.
          T best = -std::numeric_limits<T>::infinity();
          std::int64_t at = w.h0 * p.W + w.w0;
          for (std::int64_t h = w.h0; h < w.h1; ++h)
            for (std::int64_t j = w.w0; j < w.w1; ++j) {
              const T v = xp[h * p.W + j];
              if (v > best || v != v) best = v, at = h * p.W + j;
            }
          yp[oh * p.OW + ow] = best;
          ip[oh * p.OW + ow] = at;
        }
    }
  });
}

// Indices come from max_pool2d, but a wrong one would write outside the map: checked once, before
// the threads start (an exception cannot leave a parallel region).
void check_indices(const TensorView& idx, std::int64_t plane, const char* op) {
  const std::int64_t* i = data<std::int64_t>(idx);
  for (std::int64_t j = 0, n = idx.numel(); j < n; ++j)
    if (i[j] < 0 || i[j] >= plane)
      throw std::out_of_range(std::string(op) + ": index " + std::to_string(i[j]) + " at position " + std::to_string(j) +
                              " is outside the plane [0, " + std::to_string(plane) + ")");
}

template <typename T>
void max_unpool_fwd(const KernelArgs& k) {
  const Planes p = planes(k.out[0].shape, k.in[0].shape);
  check_indices(k.in[1], p.H * p.W, "max_unpool2d");
  const T* g = data<T>(k.in[0]);
  const std::int64_t* idx = data<std::int64_t>(k.in[1]);
  T* dx = data<T>(k.out[0]);
  const std::int64_t n = p.OH * p.OW;
  parallel_for(p.count, k.threads, p.H * p.W + n, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t c = lo; c < hi; ++c) {
      T* dp = dx + c * p.H * p.W;
      for (std::int64_t j = 0; j < p.H * p.W; ++j) dp[j] = T(0);
      // A cell that is the maximum of several overlapping windows collects all their gradients.
      for (std::int64_t j = 0; j < n; ++j) dp[idx[c * n + j]] += g[c * n + j];
    }
  });
}

template <typename T>
void gather_fwd(const KernelArgs& k) {
  const Planes p = planes(k.in[0].shape, k.out[0].shape);
  check_indices(k.in[1], p.H * p.W, "max_pool2d_gather");
  const T* v = data<T>(k.in[0]);
  const std::int64_t* idx = data<std::int64_t>(k.in[1]);
  T* y = data<T>(k.out[0]);
  const std::int64_t n = p.OH * p.OW;
  parallel_for(p.count, k.threads, n, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t c = lo; c < hi; ++c)
      for (std::int64_t j = 0; j < n; ++j) y[c * n + j] = v[c * p.H * p.W + idx[c * n + j]];
  });
}

template <typename T>
void avg_pool_fwd(const KernelArgs& k) {
  const PoolAttrs& a = k.attrs<PoolAttrs>();
  const Planes p = planes(k.in[0].shape, k.out[0].shape);
  const T* x = data<T>(k.in[0]);
  T* y = data<T>(k.out[0]);
  // Padding cells count as zeros: the divisor is the whole window, clipped or not.
  const T divisor = static_cast<T>(a.kernel_h * a.kernel_w);
  parallel_for(p.count, k.threads, p.OH * p.OW * a.kernel_h * a.kernel_w, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t c = lo; c < hi; ++c) {
      const T* xp = x + c * p.H * p.W;
      T* yp = y + c * p.OH * p.OW;
      for (std::int64_t oh = 0; oh < p.OH; ++oh)
        for (std::int64_t ow = 0; ow < p.OW; ++ow) {
          const Window w = window(a, p.H, p.W, oh, ow);
          T sum = 0;
          for (std::int64_t h = w.h0; h < w.h1; ++h)
            for (std::int64_t j = w.w0; j < w.w1; ++j) sum += xp[h * p.W + j];
          yp[oh * p.OW + ow] = sum / divisor;
        }
    }
  });
}

template <typename T>
void avg_pool_backward_fwd(const KernelArgs& k) {
  const PoolAttrs& a = k.attrs<PoolAttrs>();
  const Planes p = planes(k.out[0].shape, k.in[0].shape);
  const T* g = data<T>(k.in[0]);
  T* dx = data<T>(k.out[0]);
  const T divisor = static_cast<T>(a.kernel_h * a.kernel_w);
  parallel_for(p.count, k.threads, p.H * p.W + p.OH * p.OW * a.kernel_h * a.kernel_w, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t c = lo; c < hi; ++c) {
      T* dp = dx + c * p.H * p.W;
      const T* gp = g + c * p.OH * p.OW;
      for (std::int64_t j = 0; j < p.H * p.W; ++j) dp[j] = T(0);
      // Each window spreads its share over its cells of the map (the padding's share is dropped:
      // it was a zero, not a value of x); overlapping windows add up in window order.
      for (std::int64_t oh = 0; oh < p.OH; ++oh)
        for (std::int64_t ow = 0; ow < p.OW; ++ow) {
          const Window w = window(a, p.H, p.W, oh, ow);
          const T share = gp[oh * p.OW + ow] / divisor;
          for (std::int64_t h = w.h0; h < w.h1; ++h)
            for (std::int64_t j = w.w0; j < w.w1; ++j) dp[h * p.W + j] += share;
        }
    }
  });
}

Value max_unpool(Value g, Value indices, const PoolAttrs& a);
Value max_gather(Value v, Value indices, const PoolAttrs& a);
Value avg_pool(Value x, const PoolAttrs& a);
Value avg_pool_backward(Value g, const PoolAttrs& a);

// The adjoints' attributes: the forward node's window, over its operand's map.
PoolAttrs over_operand(const VjpArgs& v) {
  PoolAttrs a = v.attrs<PoolAttrs>();
  const Shape s = v.in_shape(0);
  a.height = s.dims[2], a.width = s.dims[3];
  return a;
}

// Only output 0 carries a gradient: output 1 holds int64 indices, which gradients() never
// differentiates (nothing float flows from them).
std::vector<Value> max_pool_vjp(const VjpArgs& v) {
  if (!v.dy().valid()) return {Value{}};
  return {max_unpool(v.dy(), v.out[1], over_operand(v))};
}

std::vector<Value> max_unpool_vjp(const VjpArgs& v) {
  std::vector<Value> out(2);
  if (v.wanted[0]) out[0] = max_gather(v.dy(), v.in(1), v.attrs<PoolAttrs>());
  return out;
}

std::vector<Value> max_gather_vjp(const VjpArgs& v) {
  std::vector<Value> out(2);
  if (v.wanted[0]) out[0] = max_unpool(v.dy(), v.in(1), v.attrs<PoolAttrs>());
  return out;
}

std::vector<Value> avg_pool_vjp(const VjpArgs& v) { return {avg_pool_backward(v.dy(), over_operand(v))}; }
std::vector<Value> avg_pool_backward_vjp(const VjpArgs& v) { return {avg_pool(v.dy(), v.attrs<PoolAttrs>())}; }

// ONNX: MaxPool and AveragePool (count_include_pad = 1), floor mode, the same windows. MaxPool's
// optional indices count over the whole tensor, not per plane, so output 1 is refused (an
// inference graph never reads it: only the gradient does).
std::vector<OnnxAttr> pool_onnx_attrs(const PoolAttrs& a) {
  return {OnnxAttr::list("kernel_shape", {a.kernel_h, a.kernel_w}), OnnxAttr::list("strides", {a.stride_h, a.stride_w}),
          OnnxAttr::list("pads", {a.pad_h, a.pad_w, a.pad_h, a.pad_w})};
}
void max_pool_onnx(OnnxWriter& w) {
  if (w.needed(1)) w.refuse("is read for its indices (output 1), which have no ONNX equivalent here");
  w.add("MaxPool", {w.in(0)}, {w.out(0)}, pool_onnx_attrs(w.node().attrs.as<PoolAttrs>()));
}
void avg_pool_onnx(OnnxWriter& w) {
  std::vector<OnnxAttr> attrs = pool_onnx_attrs(w.node().attrs.as<PoolAttrs>());
  attrs.push_back(OnnxAttr::integer("count_include_pad", 1));
  w.add("AveragePool", {w.in(0)}, {w.out(0)}, attrs);
}

}  // namespace

GG_OP(max_pool2d_op) = {.name = "max_pool2d", .arity = 1, .outputs = 2, .diff_inputs = 0b1,
                        .kernels = {.f32 = max_pool_fwd<float>, .f64 = max_pool_fwd<double>}, .infer = infer_max_pool,
                        .vjp = max_pool_vjp, .onnx = max_pool_onnx};
GG_OP(max_unpool2d_op) = {.name = "max_unpool2d", .arity = 2, .flags = kInternal, .diff_inputs = 0b01,
                          .kernels = {.f32 = max_unpool_fwd<float>, .f64 = max_unpool_fwd<double>}, .infer = infer_unpool,
                          .vjp = max_unpool_vjp};
GG_OP(max_pool2d_gather_op) = {.name = "max_pool2d_gather", .arity = 2, .flags = kInternal, .diff_inputs = 0b01,
                               .kernels = {.f32 = gather_fwd<float>, .f64 = gather_fwd<double>}, .infer = infer_gather,
                               .vjp = max_gather_vjp};
GG_OP(avg_pool2d_op) = {.name = "avg_pool2d", .arity = 1, .diff_inputs = 0b1,
                        .kernels = {.f32 = avg_pool_fwd<float>, .f64 = avg_pool_fwd<double>}, .infer = infer_avg_pool,
                        .vjp = avg_pool_vjp, .onnx = avg_pool_onnx};
GG_OP(avg_pool2d_backward_op) = {.name = "avg_pool2d_backward", .arity = 1, .flags = kInternal, .diff_inputs = 0b1,
                                 .kernels = {.f32 = avg_pool_backward_fwd<float>, .f64 = avg_pool_backward_fwd<double>},
                                 .infer = infer_avg_backward, .vjp = avg_pool_backward_vjp};

namespace {

Value max_unpool(Value g, Value indices, const PoolAttrs& a) { return make(max_unpool2d_op, {g, indices}, Attrs(a)); }
Value max_gather(Value v, Value indices, const PoolAttrs& a) { return make(max_pool2d_gather_op, {v, indices}, Attrs(a)); }
Value avg_pool(Value x, const PoolAttrs& a) { return make(avg_pool2d_op, {x}, Attrs(a)); }
Value avg_pool_backward(Value g, const PoolAttrs& a) { return make(avg_pool2d_backward_op, {g}, Attrs(a)); }

// A square window; stride 0 means the kernel. Everything is checked by the op's inference.
PoolAttrs square(Value x, int kernel, int stride, int padding) {
  const Shape s = x.shape();
  const int st = stride == 0 ? kernel : stride;
  return PoolAttrs{kernel, kernel, st, st, padding, padding, s.rank == 4 ? s.dims[2] : 0, s.rank == 4 ? s.dims[3] : 0};
}

// relu_grad(max_unpool2d(g, i), y) -> max_unpool2d(relu_grad(g, pooled), i), where i and pooled
// are the outputs of max_pool2d(y): the backward pass of relu then max-pool masks the pooled
// gradient (4x smaller for 2x2 windows) instead of the unpooled map. Equal bit for bit: the
// unpooled map is zero but at the indices, and there y is the pooled value itself, so both
// sides keep the same g's (and add the same ones, in the same order, where windows overlap).
// The unpool node becomes the masking and the relu_grad node the unpool (keeping its readers;
// the two swap names); the unpool must have no other reader and not be fetched.
bool fuse_unpool_relu_grad(Rewriter& r, int i) {
  IrNode& rg = r.at(i);
  if (rg.node.op != &relu_grad_op) return false;
  const int u = rg.node.inputs[0].node;
  if (r.op(u) != &max_unpool2d_op || r.fetched(u) || r.readers(u).size() != 1) return false;
  IrNode& un = r.at(u);
  const Operand indices = un.node.inputs[1];
  if (r.op(indices.node) != &max_pool2d_op || indices.port != 1) return false;
  if (!(r.at(indices.node).node.inputs[0] == rg.node.inputs[1])) return false;
  const Operand g = un.node.inputs[0];
  const Attrs window = un.node.attrs;
  un.node.op = &relu_grad_op;
  un.node.inputs = {g, Operand{indices.node, 0}};
  un.node.attrs = Attrs();
  un.node.outputs[0] = r.at(g.node).node.out(g.port);
  un.node.fused = true;
  rg.node.op = &max_unpool2d_op;
  rg.node.inputs = {Operand{u, 0}, indices};
  rg.node.attrs = window;
  rg.node.fused = true;
  std::swap(un.node.name, rg.node.name);  // each name stays with its kind of work
  r.changed();
  return true;
}

}  // namespace

GG_FUSION(unpool_relu_grad_rule) = {"unpool_relu_grad", 1, fuse_unpool_relu_grad};

}  // namespace detail

Value max_pool2d(Value x, int kernel, int stride, int padding) {
  return detail::make(detail::max_pool2d_op, {x}, Attrs(detail::square(x, kernel, stride, padding)));
}

Value avg_pool2d(Value x, int kernel, int stride, int padding) {
  return detail::make(detail::avg_pool2d_op, {x}, Attrs(detail::square(x, kernel, stride, padding)));
}

Value global_avg_pool(Value x) {
  const Shape s = x.shape();
  if (s.rank != 4)
    throw GraphError("global_avg_pool: expects an NCHW tensor of rank 4, got " + detail::describe(detail::graph_of(x), x.operand()));
  return mean(x, {2, 3});
}

Value flatten(Value x) {
  const Shape s = x.shape();
  if (s.rank < 2)
    throw GraphError("flatten: expects rank 2 or more, got " + detail::describe(detail::graph_of(x), x.operand()));
  std::int64_t rest = 1;
  for (int i = 1; i < s.rank; ++i) {
    if (s.dims[i] == dyn)
      throw GraphError("flatten: only dimension 0 may be dyn, got " + detail::describe(detail::graph_of(x), x.operand()));
    rest *= s.dims[i];
  }
  return reshape(x, Shape{s.dims[0], rest});
}

}  // namespace gg
