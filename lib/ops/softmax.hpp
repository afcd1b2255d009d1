// Internal: slice iteration and the softmax block kernel shared by softmax, log_softmax and the
// fused softmax-cross-entropy.
#pragma once

#include "op.hpp"

#include <bit>
#include <limits>

namespace gg::detail {

// Slices along `axis` are processed kSliceBlock at a time: for the notebook's {classes, batch}
// layout the slices are columns, and a block of adjacent columns makes every inner loop
// contiguous and vectorisable; per-column max and sum live on the stack (no allocation).
constexpr std::int64_t kSliceBlock = 64;

// Calls f(offset, n, stride, width) for blocks of `width` adjacent slices of length n.
template <typename T, typename F>
void for_each_slice(const TensorView& x, int axis, int threads, F f) {
  const Split3 s = split_at(x.shape, axis);
  const std::int64_t nblocks = (s.inner + kSliceBlock - 1) / kSliceBlock;
  parallel_for(s.outer * nblocks, threads, s.n * kSliceBlock * 8, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t t = lo; t < hi; ++t) {
      const std::int64_t o = t / nblocks, i0 = (t % nblocks) * kSliceBlock;
      const std::int64_t i1 = std::min(s.inner, i0 + kSliceBlock);
      f(o * s.n * s.inner + i0, s.n, s.inner, i1 - i0);
    }
  });
}

// exp for the softmax family. float: Cephes' expf (range reduction x = n ln2 + r with a split
// ln2, a degree-6 polynomial on |r| <= ln2/2, 2^n built in the exponent bits), about 1 ulp and
// written so that loops over it vectorise (glibc's expf is a scalar call). Inputs below -87.3
// give 0 (the true value is denormal); NaN stays NaN. double: std::exp.
inline float exp_vec(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.7f ? 88.7f : x;
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;  // ln2 split: the high part is exact in a few bits
  r = r - n * -2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  const int bits = (static_cast<int>(n == n ? n : 0.0f) + 127) << 23;  // NaN: p carries it
  const float scale = std::bit_cast<float>(bits);
  return x <= -87.3f ? 0.0f : p * scale;
}
inline double exp_vec(double x) { return __builtin_exp(x); }

// Per slice of a block of w adjacent slices (length n, distance `stride`): mx = the max,
// se = sum exp(x - mx), and with e != nullptr the exponentials stored in e (x's layout). The
// softmax, log_softmax and loss kernels all start here, so a fused kernel does the same
// arithmetic in the same order as the separate ones.
template <typename T>
void exp_sums(const T* x, T* e, std::int64_t n, std::int64_t stride, std::int64_t w, T* mx, T* se) {
  for (std::int64_t j = 0; j < w; ++j) mx[j] = -std::numeric_limits<T>::infinity(), se[j] = 0;
  for (std::int64_t k = 0; k < n; ++k) {
    const T* __restrict row = x + k * stride;
#pragma omp simd
    for (std::int64_t j = 0; j < w; ++j) mx[j] = mx[j] < row[j] ? row[j] : mx[j];
  }
  for (std::int64_t k = 0; k < n; ++k) {
    const T* __restrict row = x + k * stride;
    if (e) {
      T* __restrict out = e + k * stride;
#pragma omp simd
      for (std::int64_t j = 0; j < w; ++j) {
        const T v = exp_vec(row[j] - mx[j]);
        se[j] += v;
        out[j] = v;
      }
    } else {
#pragma omp simd
      for (std::int64_t j = 0; j < w; ++j) se[j] += exp_vec(row[j] - mx[j]);
    }
  }
}

// Turns the exponentials left by exp_sums into softmax: e *= 1 / se (se becomes 1 / se).
template <typename T>
void normalize_exps(T* e, std::int64_t n, std::int64_t stride, std::int64_t w, T* se) {
  for (std::int64_t j = 0; j < w; ++j) se[j] = T(1) / se[j];
  for (std::int64_t k = 0; k < n; ++k)
    for (std::int64_t j = 0; j < w; ++j) e[k * stride + j] = static_cast<T>(e[k * stride + j] * se[j]);
}

// y = softmax (or log_softmax) of `width` adjacent slices of length n at distance `stride`.
template <typename T>
void softmax_block(const T* x, T* y, std::int64_t n, std::int64_t stride, std::int64_t w, bool log_out);

}  // namespace gg::detail
