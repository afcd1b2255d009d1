// Internal: slice iteration and the softmax block kernel shared by softmax, log_softmax and the
// fused softmax-cross-entropy.
#pragma once

#include "op.hpp"

#include <array>
#include <bit>
#include <limits>

namespace gg::detail {

// Slices along `axis` are processed kSliceBlock at a time: for the notebook's {classes, batch}
// layout the slices are columns, and a block of adjacent columns makes every inner loop
// contiguous and vectorisable; per-column max and sum live on the stack (no allocation).
constexpr std::int64_t kSliceBlock = 64;
using Len = std::int64_t;
// Slices that are rows (the class axis innermost: {batch, classes}) of at most kMaxRowSlice
// elements are copied kRowBlock at a time into stack buffers laid out as columns, so that the
// block functions run on them exactly as on columns (bitwise the same results per slice) and
// their loops vectorise across the rows. Longer rows are processed one at a time (exp_sums then
// vectorises along the row).
constexpr std::int64_t kRowBlock = 32;
constexpr std::int64_t kMaxRowSlice = 64;

// Calls f(in, out, n, stride, w) for blocks of w <= kSliceBlock adjacent slices of length n
// along `axis` of `shape`: in[i] and out[i] point at the block's first element in operand i and
// output i, and element k of slice j is at [k * stride + j]. `in` and `out` point at contiguous
// tensors of that shape; f must write every element of its output blocks.
template <typename T, std::size_t NI, std::size_t NO, typename F>
void for_each_block(const Shape& shape, int axis, int threads, const std::array<const T*, NI>& in,
                    const std::array<T*, NO>& out, F f) {
  const Split3 s = split_at(shape, axis);
  if (s.inner == 1 && s.n <= kMaxRowSlice) {
    const std::int64_t n = s.n, nblocks = (s.outer + kRowBlock - 1) / kRowBlock;
    parallel_for(nblocks, threads, n * kRowBlock * 8, [&](std::int64_t lo, std::int64_t hi) {
      alignas(64) T buf[NI + NO][kMaxRowSlice * kRowBlock];
      std::array<const T*, NI> bin;
      std::array<T*, NO> bout;
      for (std::size_t i = 0; i < NI; ++i) bin[i] = buf[i];
      for (std::size_t i = 0; i < NO; ++i) bout[i] = buf[NI + i];
      for (std::int64_t t = lo; t < hi; ++t) {
        const std::int64_t r0 = t * kRowBlock, w = std::min(kRowBlock, s.outer - r0);
        for (std::size_t i = 0; i < NI; ++i) {  // rows r0.. of operand i -> columns of buf[i]
          const T* src = in[i] + r0 * n;
          for (std::int64_t j = 0; j < w; ++j)
            for (std::int64_t k = 0; k < n; ++k) buf[i][k * kRowBlock + j] = src[j * n + k];
        }
        f(bin, bout, n, kRowBlock, w);
        for (std::size_t i = 0; i < NO; ++i) {  // and back
          T* dst = out[i] + r0 * n;
          for (std::int64_t j = 0; j < w; ++j)
            for (std::int64_t k = 0; k < n; ++k) dst[j * n + k] = buf[NI + i][k * kRowBlock + j];
        }
      }
    });
    return;
  }
  const std::int64_t nblocks = (s.inner + kSliceBlock - 1) / kSliceBlock;
  parallel_for(s.outer * nblocks, threads, s.n * kSliceBlock * 8, [&](std::int64_t lo, std::int64_t hi) {
    std::array<const T*, NI> bin;
    std::array<T*, NO> bout;
    for (std::int64_t t = lo; t < hi; ++t) {
      const std::int64_t o = t / nblocks, i0 = (t % nblocks) * kSliceBlock;
      const std::int64_t i1 = std::min(s.inner, i0 + kSliceBlock), off = o * s.n * s.inner + i0;
      for (std::size_t i = 0; i < NI; ++i) bin[i] = in[i] + off;
      for (std::size_t i = 0; i < NO; ++i) bout[i] = out[i] + off;
      f(bin, bout, s.n, s.inner, i1 - i0);
    }
  });
}

// exp for the softmax family, written so that loops over it vectorise. GCC has no vector exp
// of its own: glibc's vector variants (libmvec) are declared only under -ffast-math, and
// std::exp / expf are scalar calls. Nor does it vectorise floor unless -fno-trapping-math. So
// both precisions are plain arithmetic here: range reduction x = n ln2 + r with |r| <= ln2/2
// (ln2 split in two so that n * high part is exact), a polynomial for e^r, and 2^n built in the
// exponent bits. Every operation is an IEEE one (no fast-math), so the vectorised loop and its
// scalar remainder give the same bits, and the separate and fused softmax kernels agree bitwise.
//
// float: Cephes' expf (degree-6 polynomial), about 1 ulp (within 2, tested). Inputs below -87.3
// give 0 (the true value is denormal); above 88.7 the result saturates near 3.3e38; NaN stays
// NaN. n = floor(x log2e + 1/2) is computed exactly as floorf would: round to nearest by adding
// and subtracting 1.5 * 2^23 (exact for |v| < 2^22), then one down where that rounded up.
inline float exp_vec(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.7f ? 88.7f : x;
  const float v = x * 1.44269504088896341f + 0.5f;
  const float nearest = (v + 12582912.0f) - 12582912.0f;
  const float n = nearest > v ? nearest - 1.0f : nearest;  // floor(v); NaN stays NaN
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

// double: n = x log2e rounded to nearest by the 1.5 * 2^52 shift (whose low bits then hold n as
// an integer: no double-to-int64 conversion, which AVX2 lacks), r = x - n ln2 with fdlibm's
// split of ln2 (the high part has 32 bits, so n * high is exact), e^r by its Taylor polynomial
// of degree 13 (truncation error below 4e-18 relative on |r| <= ln2/2) in Horner form. 2^n is
// applied as two factors 2^h 2^(n-h), h ~ n/2, each a normal number, so results near the
// overflow threshold and in the subnormal range come out right (one rounding, in the last
// multiplication). Measured against expl on 4M random points in [-745, 709]: max 0.88 ulp
// (1 ulp in the subnormal range), and 94% of results bitwise equal to glibc's exp (whose
// error is up to 0.51 ulp). Below -746 the result is 0, above 710 +inf; NaN stays NaN.
inline double exp_vec(double x) {
  constexpr double kShift = 6755399441055744.0;  // 1.5 * 2^52
  x = x < -746.0 ? -746.0 : x;
  x = x > 710.0 ? 710.0 : x;
  const double kn = x * 1.4426950408889634074 + kShift;
  const double n = kn - kShift;
  double r = x - n * 6.93147180369123816490e-01;  // ln2, high part (32 bits)
  r = r - n * 1.90821492927058770002e-10;         // ln2, low part
  double p = 1.0 / 6227020800.0;                  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // h = n/2 rounded (again by the shift), and n - h; the bits of (m + shift) are those of the
  // shift plus m, so (bits + 1023) << 52 is 2^m (the shift's own bits are shifted out).
  const double kh = n * 0.5 + kShift;
  const double kl = (n - (kh - kShift)) + kShift;
  const double s1 = std::bit_cast<double>((std::bit_cast<std::uint64_t>(kh) + 1023u) << 52);
  const double s2 = std::bit_cast<double>((std::bit_cast<std::uint64_t>(kl) + 1023u) << 52);
  return p * s1 * s2;
}

// log for the softmax family's log-sum-exp (one per slice: without it, glibc's scalar log would
// cost half as much as all the vectorised exps of a 10-class slice). fdlibm's e_log.c, within
// 1 ulp: x = 2^k (1 + f) with sqrt(2)/2 <= 1 + f < sqrt(2) (found by musl's bit trick on the
// exponent), s = f / (2 + f), log(1 + f) = f - (f^2/2 - s (f^2/2 + R(s^2))) with fdlibm's
// degree-14 polynomial R, plus k ln2 in two parts. k is read from the exponent bits and made a
// double by the 2^52 trick (no int64-to-double conversion, which AVX2 lacks). Subnormal inputs
// are scaled by 2^54 first; 0 gives -inf, +inf gives +inf, negative numbers and NaN give NaN.
inline double log_vec(double x) {
  const bool sub = x < 2.2250738585072014e-308;  // also 0, negative and -inf; not NaN
  const double xs = sub ? x * 18014398509481984.0 : x;  // * 2^54
  const std::uint64_t u = std::bit_cast<std::uint64_t>(xs) + (std::uint64_t{0x3ff00000 - 0x3fe6a09e} << 32);
  const double k = std::bit_cast<double>((u >> 52) | 0x4330000000000000u) - (4503599627370496.0 + 1023.0) -
                   (sub ? 54.0 : 0.0);
  const double m = std::bit_cast<double>((u & 0x000fffffffffffffu) + (std::uint64_t{0x3fe6a09e} << 32));
  const double f = m - 1.0;
  const double hfsq = 0.5 * f * f;
  const double s = f / (2.0 + f);
  const double z = s * s;
  const double w = z * z;
  const double t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
  const double t2 = z * (6.666666666666735130e-01 +
                         w * (2.857142874366239149e-01 + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
  const double r = t2 + t1;
  const double y = k * 6.93147180369123816490e-01 - ((hfsq - (s * (hfsq + r) + k * 1.90821492927058770002e-10)) - f);
  const double inf = std::numeric_limits<double>::infinity();
  const double special = x == 0 ? -inf : (x == inf ? inf : std::numeric_limits<double>::quiet_NaN());
  return x > 0 && x < inf ? y : special;
}

// Per slice of a block of w adjacent slices (length n, distance `stride`): mx = the max,
// se = sum exp(x - mx), and with e != nullptr the exponentials stored in e (x's layout). The
// softmax, log_softmax and loss kernels all start here, so a fused kernel does the same
// arithmetic in the same order as the separate ones.
template <typename T>
void exp_sums(const T* x, T* e, std::int64_t n, std::int64_t stride, std::int64_t w, T* mx, T* se) {
  // One contiguous slice: a row longer than kMaxRowSlice (for_each_block passes shorter rows as
  // columns, with stride kRowBlock). Vectorised along the row, the sum in lanes.
  if (w == 1 && stride == 1) {
    T m = -std::numeric_limits<T>::infinity(), sum = 0;
#pragma omp simd reduction(max : m)
    for (std::int64_t k = 0; k < n; ++k) m = m < x[k] ? x[k] : m;
    if (e) {
      T* __restrict out = e;
#pragma omp simd reduction(+ : sum)
      for (std::int64_t k = 0; k < n; ++k) {
        const T v = exp_vec(x[k] - m);
        sum += v;
        out[k] = v;
      }
    } else {
#pragma omp simd reduction(+ : sum)
      for (std::int64_t k = 0; k < n; ++k) sum += exp_vec(x[k] - m);
    }
    mx[0] = m, se[0] = sum;
    return;
  }
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
