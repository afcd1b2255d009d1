// Internal: the elementwise kernel skeletons that op files instantiate with a functor.
#pragma once

#include "op.hpp"

namespace gg::detail {

// out = f(a, b) with NumPy broadcasting. Inputs may be any strided views; the output is
// contiguous. Fast paths: equal shapes (one flat loop) and a broadcast innermost dimension
// (stride 0 or 1), which covers bias adds in both layouts. T is the operands' element type, O
// the output's (comparisons read int64 labels and write floats).
template <typename T, typename O = T, typename F>
void binary_kernel(const KernelArgs& k, F f) {
  const TensorView &a = k.in[0], &b = k.in[1];
  O* o = data<O>(k.out[0]);
  const T* pa = data<T>(a);
  const T* pb = data<T>(b);
  const Shape& s = k.out[0].shape;
  const std::int64_t n = s.numel();
  if (a.shape == s && b.shape == s && a.is_contiguous() && b.is_contiguous()) {
    parallel_for(n, k.threads, 1, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) o[i] = f(pa[i], pb[i]);
    });
    return;
  }
  if (s.rank == 0) {
    o[0] = f(pa[0], pb[0]);
    return;
  }
  const Strides sa = broadcast_strides(a, s), sb = broadcast_strides(b, s);
  const int last = s.rank - 1;
  const std::int64_t L = s.dims[last], rows = L ? n / L : 0;
  const std::int64_t ia = sa[last], ib = sb[last];
  parallel_for(rows, k.threads, L, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t r = lo; r < hi; ++r) {
      std::int64_t offa = 0, offb = 0, rem = r;
      for (int d = last - 1; d >= 0; --d) {
        std::int64_t i = rem % s.dims[d];
        rem /= s.dims[d];
        offa += i * sa[d];
        offb += i * sb[d];
      }
      const T* ra = pa + offa;
      const T* rb = pb + offb;
      O* ro = o + r * L;
      if (ia == 1 && ib == 1)
        for (std::int64_t j = 0; j < L; ++j) ro[j] = f(ra[j], rb[j]);
      else if (ia == 1 && ib == 0)
        for (std::int64_t j = 0; j < L; ++j) ro[j] = f(ra[j], rb[0]);
      else if (ia == 0 && ib == 1)
        for (std::int64_t j = 0; j < L; ++j) ro[j] = f(ra[0], rb[j]);
      else
        for (std::int64_t j = 0; j < L; ++j) ro[j] = f(ra[j * ia], rb[j * ib]);
    }
  });
}

// out = f(x) over a contiguous input of the output's shape.
template <typename T, typename O = T, typename F>
void unary_kernel(const KernelArgs& k, F f) {
  const T* x = data<T>(k.in[0]);
  O* o = data<O>(k.out[0]);
  parallel_for(k.out[0].numel(), k.threads, 1, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t i = lo; i < hi; ++i) o[i] = f(x[i]);
  });
}

// Sums x viewed as (outer, n, inner) over its middle axis into out (outer, inner), contiguous.
// float32 sums are accumulated in double (per block of the inner loop), so a batch of 60,000
// examples loses no more precision than a few float roundings.
template <typename T>
void reduce_middle(const T* x, T* out, std::int64_t outer, std::int64_t n, std::int64_t inner, int threads) {
  if (inner == 1) {
    parallel_for(outer, threads, n, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t o = lo; o < hi; ++o) {
        const T* row = x + o * n;
        double total = 0;
        // Blocks of 256 are summed in T (vectorised), block sums in double.
        for (std::int64_t b = 0; b < n; b += 256) {
          const std::int64_t e = std::min<std::int64_t>(n, b + 256);
          T acc = 0;
          for (std::int64_t i = b; i < e; ++i) acc += row[i];
          total += acc;
        }
        out[o] = static_cast<T>(total);
      }
    });
    return;
  }
  constexpr std::int64_t kBlock = 64;
  const std::int64_t nblocks = (inner + kBlock - 1) / kBlock;
  parallel_for(outer * nblocks, threads, n * kBlock, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t t = lo; t < hi; ++t) {
      const std::int64_t o = t / nblocks, i0 = (t % nblocks) * kBlock, i1 = std::min(inner, i0 + kBlock);
      double acc[kBlock] = {};
      for (std::int64_t kk = 0; kk < n; ++kk) {
        const T* row = x + (o * n + kk) * inner;
        for (std::int64_t i = i0; i < i1; ++i) acc[i - i0] += row[i];
      }
      for (std::int64_t i = i0; i < i1; ++i) out[o * inner + i] = static_cast<T>(acc[i - i0]);
    }
  });
}

}  // namespace gg::detail
