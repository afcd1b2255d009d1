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
//
// The order of the additions is fixed by the code below, not by the vector width the compiler
// picks or the thread count (each output element is summed by one thread), so results are
// deterministic and the same in every kernel that sums this way:
//   inner == 1 (row sums, e.g. db1 = sum_to(dZ1 {64, m}, {64, 1})): each row in blocks of 256;
//     within a block, value i goes into partial sum (lane) i % kSumLanes, in T and in index
//     order; then the lanes are added to the row's total in double, in lane order. Sixteen
//     independent chains of additions vectorise and hide the add latency.
//   inner > 1 (column sums, e.g. {m, 64} -> {1, 64}): per output element, the n values added
//     in double in index order (adjacent columns vectorise).
// reduce_middle_with takes element i of x (flat index) from value(i), which may compute it and
// store it somewhere on the way: relu_grad_sum_to masks dZ1 and sums it in the same pass, with
// the same bits as sum_to over the stored dZ1.
constexpr int kSumLanes = 16;

template <typename T, typename Value>
void reduce_middle_with(Value value, T* out, std::int64_t outer, std::int64_t n, std::int64_t inner, int threads) {
  if (inner == 1) {
    parallel_for(outer, threads, n, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t o = lo; o < hi; ++o) {
        double total = 0;
        for (std::int64_t b = o * n, end = (o + 1) * n; b < end; b += 256) {
          const std::int64_t len = std::min<std::int64_t>(end - b, 256);
          T acc[kSumLanes] = {};
          std::int64_t i = 0;
          for (; i + kSumLanes <= len; i += kSumLanes) {
#pragma omp simd
            for (int l = 0; l < kSumLanes; ++l) acc[l] += value(b + i + l);
          }
          for (int l = 0; i + l < len; ++l) acc[l] += value(b + i + l);
          for (int l = 0; l < kSumLanes; ++l) total += static_cast<double>(acc[l]);
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
      const std::int64_t o = t / nblocks, i0 = (t % nblocks) * kBlock, w = std::min(inner, i0 + kBlock) - i0;
      double acc[kBlock] = {};
      for (std::int64_t kk = 0; kk < n; ++kk) {
        const std::int64_t row = (o * n + kk) * inner + i0;
#pragma omp simd
        for (std::int64_t i = 0; i < w; ++i) acc[i] += static_cast<double>(value(row + i));
      }
      for (std::int64_t i = 0; i < w; ++i) out[o * inner + i0 + i] = static_cast<T>(acc[i]);
    }
  });
}

template <typename T>
void reduce_middle(const T* x, T* out, std::int64_t outer, std::int64_t n, std::int64_t inner, int threads) {
  reduce_middle_with<T>([x](std::int64_t i) { return x[i]; }, out, outer, n, inner, threads);
}

// How sum_to(x, to) sums, when it is a middle-axis reduction: `to` is x's shape with some
// dimensions set to 1 (or removed on the left, NumPy's right alignment), and the summed ones
// (dimensions of extent 1 count as neither) are one contiguous run. Returns false otherwise;
// nothing summed is (outer = numel, n = 1, inner = 1) with `copy` set.
struct MiddleRun {
  std::int64_t outer = 1, n = 1, inner = 1;
  bool copy = false;
};
inline bool middle_run(const Shape& s, const Shape& to, MiddleRun& m) {
  const int lead = s.rank - to.rank;
  if (lead < 0) return false;
  int first = -1, last = -1;
  bool gap = false;
  for (int i = 0; i < s.rank; ++i) {
    if (s.dims[i] == 1) continue;  // neutral: summing or keeping it is the same
    const bool reduced = i < lead || to.dims[i - lead] == 1;
    if (!reduced) {
      gap = first >= 0;  // a kept dimension after the run started
      continue;
    }
    if (first >= 0 && gap) return false;
    if (first < 0) first = i;
    last = i;
  }
  m = MiddleRun{};
  if (first < 0) {
    for (int i = 0; i < s.rank; ++i) m.outer *= s.dims[i];
    m.copy = true;
    return true;
  }
  for (int i = 0; i < first; ++i) m.outer *= s.dims[i];
  for (int i = first; i <= last; ++i) m.n *= s.dims[i];
  for (int i = last + 1; i < s.rank; ++i) m.inner *= s.dims[i];
  return true;
}

}  // namespace gg::detail
