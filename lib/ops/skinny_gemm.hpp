// Internal: GEMMs with one short side, which BLIS runs far below its peak.
//
// The notebook's step has three: Z2 = W2 A1 (10 x 64 times 64 x 60000), dA1 = W2^T dZ2 (64 x 10
// times 10 x 60000) and dW2 = dZ2 A1^T (10 x 60000 times 60000 x 10). Each moves ~15 MB and does
// ~77 MFLOP: memory-bound, a fraction of a millisecond at this machine's bandwidth. BLIS packs
// the long operand into its micro-panel format first (a second pass over those 15 MB, plus
// writes) and its 32 x 12 tiles are mostly empty with 10 rows: 1.9 to 4.8 ms each. These kernels
// read the long operand once, in place:
//
//   rows (the long side is C's columns, n):  C[i, j0..] = alpha sum_p A[i, p] B[p, j0..] + beta C.
//        B's and C's rows are contiguous. A tile of two vectors of columns times up to 12 rows of
//        C stays in registers over p; A (short: m or k <= 16) is broadcast from L1.
//   dots (the long side is the inner one, k): C[i, j] = alpha sum_p A[i, p] B[p, j] + beta C, A's
//        rows and B's columns contiguous along p: dot products of long rows. k is cut into a
//        fixed number of slabs (a function of k only); in a slab, a block of up to 10 x 2
//        (i, j) pairs keeps one vector of lane-wise partial sums each; the slabs' sums are
//        added in slab order.
//
// Threads split the columns (rows) or the slabs (dots); no element's sum depends on the split,
// so the result has the same bits for any thread count. Both take the product as BLIS would:
// beta 0 never reads C (it may hold garbage), beta 1 adds.
#pragma once

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>

namespace gg::detail {

// One 512-bit vector (two 256-bit ones on AVX2), GCC's vector extension; aligned(sizeof(T)) so
// that loads and stores through it may be unaligned.
template <typename T> struct VecOf;
template <> struct VecOf<float> { typedef float type __attribute__((vector_size(64), aligned(4))); };
template <> struct VecOf<double> { typedef double type __attribute__((vector_size(64), aligned(8))); };
template <typename T> using Vec = typename VecOf<T>::type;
template <typename T>
constexpr std::int64_t kLanes = 64 / sizeof(T);

namespace skinny {

// A product C {m, n} = A {m, k} B {k, n} as pointers and element strides.
template <typename T>
struct Gemm {
  const T* a;
  std::int64_t ars, acs;
  const T* b;
  std::int64_t brs, bcs;
  T* c;
  std::int64_t crs, ccs;
  std::int64_t m, n, k;
  T alpha, beta;
};

constexpr std::int64_t kMaxRows = 12;   // rows: C rows per register tile (2 x 12 accumulators)
constexpr std::int64_t kMaxDotRows = 10;  // dots: A rows per block (10 x 2 accumulators + 12 loads)
constexpr std::int64_t kSlabs = 8;       // dots: most slabs of k
constexpr std::int64_t kMinSlab = 2048;  // dots: fewest elements of k per slab

// The conditions, on shapes and strides only (so a program always takes the same path).
template <typename T>
bool rows_fits(const Gemm<T>& g) {
  return g.bcs == 1 && g.ccs == 1 && std::min(g.m, g.k) <= 16 && g.m * g.k <= 16384 && g.n >= 16 * kLanes<T> &&
         g.k >= 1;
}
template <typename T>
bool dots_fits(const Gemm<T>& g) {
  return g.acs == 1 && g.brs == 1 && g.m * g.n <= 1024 && g.k >= kMinSlab;
}

// Balanced blocks of at most `most` rows: 64 rows in 6 blocks of 11 and 10, not 5 x 12 + 4.
inline std::int64_t block_start(std::int64_t total, std::int64_t most, std::int64_t q) {
  const std::int64_t blocks = (total + most - 1) / most;
  return total * q / blocks;
}

// Software prefetch distance along a row, in elements (512 bytes: four tiles of two vectors).
// The hardware prefetcher does not follow the 64 rows of B that Z2 = W2 A1 reads (or the 64
// rows of C that dA1 = W2^T dZ2 writes) at once: without this, Z2 took 4.2 ms of one core's
// time, with it 0.8 ms; dA1 2.0 -> 1.3 ms (prefetch for writing).
template <typename T>
constexpr std::int64_t kAhead = 512 / sizeof(T);

// Vectors are read and written in place through these, never passed or returned by value: without
// AVX-512 a 64-byte vector by value has another ABI than with it, which GCC notes (-Wpsabi) on
// every such function, and a build for a machine without AVX-512 must stay free of warnings.
template <typename T>
inline const Vec<T>* vec(const T* p) {
  return reinterpret_cast<const Vec<T>*>(p);
}
template <typename T>
inline Vec<T>* vec(T* p) {
  return reinterpret_cast<Vec<T>*>(p);
}

// Rows i0 .. i0 + R of C, NV vectors of columns from j0.
template <typename T, int R, int NV>
void rows_tile(const Gemm<T>& g, std::int64_t i0, std::int64_t j0) {
  constexpr std::int64_t L = kLanes<T>;
  Vec<T> acc[R][NV] = {};
  const T* a = g.a + i0 * g.ars;
  const T* b = g.b + j0;
  for (std::int64_t p = 0; p < g.k; ++p) {
    Vec<T> bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = *vec(b + p * g.brs + v * L);
    for (int v = 0; v < NV; ++v) __builtin_prefetch(b + p * g.brs + v * L + kAhead<T>);
    for (int r = 0; r < R; ++r) {
      const T s = a[r * g.ars + p * g.acs];
      for (int v = 0; v < NV; ++v) acc[r][v] += s * bv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) __builtin_prefetch(g.c + (i0 + r) * g.crs + j0 + v * L + kAhead<T>, 1);
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      T* c = g.c + (i0 + r) * g.crs + j0 + v * L;
      *vec(c) = g.beta == T(0) ? g.alpha * acc[r][v] : g.alpha * acc[r][v] + g.beta * *vec(c);
    }
}

template <typename T, int NV>
void rows_block(const Gemm<T>& g, std::int64_t i0, std::int64_t rows, std::int64_t j0) {
  switch (rows) {
#define GG_SKINNY_ROWS(R) \
  case R: return rows_tile<T, R, NV>(g, i0, j0);
    GG_SKINNY_ROWS(1) GG_SKINNY_ROWS(2) GG_SKINNY_ROWS(3) GG_SKINNY_ROWS(4) GG_SKINNY_ROWS(5) GG_SKINNY_ROWS(6)
    GG_SKINNY_ROWS(7) GG_SKINNY_ROWS(8) GG_SKINNY_ROWS(9) GG_SKINNY_ROWS(10) GG_SKINNY_ROWS(11)
    default: return rows_tile<T, 12, NV>(g, i0, j0);
#undef GG_SKINNY_ROWS
  }
}

// Columns [j0, j1) of C (j0 a multiple of the tile width unless it is the tail).
template <typename T>
void rows_range(const Gemm<T>& g, std::int64_t j0, std::int64_t j1) {
  constexpr std::int64_t L = kLanes<T>;
  const std::int64_t blocks = (g.m + kMaxRows - 1) / kMaxRows;
  std::int64_t j = j0;
  // Columns in chunks of kChunk: each block of C's rows is written (and B's rows read) in runs
  // of whole cache lines long enough for the hardware prefetcher; the chunk of B stays in L1/L2
  // for the next block of rows.
  constexpr std::int64_t kChunk = 256 / sizeof(T) * 4;
  for (; j + 2 * L <= j1; j = std::min(j1 / (2 * L) * (2 * L), j + kChunk))
    for (std::int64_t q = 0; q < blocks; ++q) {
      const std::int64_t i0 = block_start(g.m, kMaxRows, q), je = std::min(j1 / (2 * L) * (2 * L), j + kChunk);
      for (std::int64_t jj = j; jj < je; jj += 2 * L) rows_block<T, 2>(g, i0, block_start(g.m, kMaxRows, q + 1) - i0, jj);
    }
  for (; j + L <= j1; j += L)
    for (std::int64_t q = 0; q < blocks; ++q) {
      const std::int64_t i0 = block_start(g.m, kMaxRows, q);
      rows_block<T, 1>(g, i0, block_start(g.m, kMaxRows, q + 1) - i0, j);
    }
  for (; j < j1; ++j)  // fewer than a vector of columns left: one at a time, in the same order over p
    for (std::int64_t i = 0; i < g.m; ++i) {
      T s = 0;
      for (std::int64_t p = 0; p < g.k; ++p) s += g.a[i * g.ars + p * g.acs] * g.b[p * g.brs + j];
      T& c = g.c[i * g.crs + j];
      c = g.beta == T(0) ? g.alpha * s : g.alpha * s + g.beta * c;
    }
}

template <typename T>
void rows(const Gemm<T>& g, int threads) {
  constexpr std::int64_t W = 2 * kLanes<T>;
  const std::int64_t tiles = g.n / W;
  // A parallel region costs a few microseconds: only for products worth more than that.
  const int team = g.m * g.n * g.k >= (1 << 18) ? static_cast<int>(std::min<std::int64_t>(threads, tiles)) : 1;
  if (team <= 1) return rows_range(g, 0, g.n);
#pragma omp parallel num_threads(team)
  {
    const std::int64_t id = omp_get_thread_num(), nt = omp_get_num_threads();
    const std::int64_t j0 = tiles * id / nt * W, j1 = id + 1 == nt ? g.n : tiles * (id + 1) / nt * W;
    rows_range(g, j0, j1);
  }
}

// Slab s of k: [slab_start(s), slab_start(s + 1)), starts on whole vectors.
template <typename T>
std::int64_t slabs_of(std::int64_t k) {
  return std::clamp<std::int64_t>(k / kMinSlab, 1, kSlabs);
}
template <typename T>
std::int64_t slab_start(std::int64_t k, std::int64_t slabs, std::int64_t s) {
  return s == slabs ? k : k / kLanes<T> * s / slabs * kLanes<T>;
}

template <typename T>
inline T lane_sum(const Vec<T>& v) {
  T s = 0;
  for (std::int64_t l = 0; l < kLanes<T>; ++l) s += v[l];
  return s;
}

// partial[i n + j] = sum over p in [p0, p1) of A[i0 + i, p] B[p, j0 + j], for RI x RJ pairs.
template <typename T, int RI, int RJ>
void dots_block(const Gemm<T>& g, std::int64_t i0, std::int64_t j0, std::int64_t p0, std::int64_t p1, T* partial) {
  constexpr std::int64_t L = kLanes<T>;
  Vec<T> acc[RI][RJ] = {};
  const std::int64_t pv = p0 + (p1 - p0) / L * L;
  for (std::int64_t p = p0; p < pv; p += L) {
    Vec<T> bv[RJ];
    for (int j = 0; j < RJ; ++j) bv[j] = *vec(g.b + (j0 + j) * g.bcs + p);
    for (int j = 0; j < RJ; ++j) __builtin_prefetch(g.b + (j0 + j) * g.bcs + p + 2 * kAhead<T>);
    for (int i = 0; i < RI; ++i) {
      const Vec<T> av = *vec(g.a + (i0 + i) * g.ars + p);
      for (int j = 0; j < RJ; ++j) acc[i][j] += av * bv[j];
    }
  }
  for (int i = 0; i < RI; ++i)
    for (int j = 0; j < RJ; ++j) {
      T s = lane_sum<T>(acc[i][j]);
      for (std::int64_t p = pv; p < p1; ++p) s += g.a[(i0 + i) * g.ars + p] * g.b[(j0 + j) * g.bcs + p];
      partial[(i0 + i) * g.n + j0 + j] = s;
    }
}

template <typename T, int RJ>
void dots_rows(const Gemm<T>& g, std::int64_t i0, std::int64_t rows, std::int64_t j0, std::int64_t p0, std::int64_t p1,
               T* partial) {
  switch (rows) {
#define GG_SKINNY_DOTS(R) \
  case R: return dots_block<T, R, RJ>(g, i0, j0, p0, p1, partial);
    GG_SKINNY_DOTS(1) GG_SKINNY_DOTS(2) GG_SKINNY_DOTS(3) GG_SKINNY_DOTS(4) GG_SKINNY_DOTS(5) GG_SKINNY_DOTS(6)
    GG_SKINNY_DOTS(7) GG_SKINNY_DOTS(8) GG_SKINNY_DOTS(9)
    default: return dots_block<T, 10, RJ>(g, i0, j0, p0, p1, partial);
#undef GG_SKINNY_DOTS
  }
}

template <typename T>
void dots(const Gemm<T>& g, int threads) {
  const std::int64_t slabs = slabs_of<T>(g.k);
  std::array<T, kSlabs * 1024> partial;  // {slab, m, n}: m n <= 1024 (dots_fits)
  const std::int64_t iblocks = (g.m + kMaxDotRows - 1) / kMaxDotRows;
  auto slab = [&](std::int64_t s) {
    const std::int64_t p0 = slab_start<T>(g.k, slabs, s), p1 = slab_start<T>(g.k, slabs, s + 1);
    T* part = partial.data() + s * g.m * g.n;
    for (std::int64_t q = 0; q < iblocks; ++q) {
      const std::int64_t i0 = block_start(g.m, kMaxDotRows, q), rows = block_start(g.m, kMaxDotRows, q + 1) - i0;
      std::int64_t j = 0;
      for (; j + 2 <= g.n; j += 2) dots_rows<T, 2>(g, i0, rows, j, p0, p1, part);
      if (j < g.n) dots_rows<T, 1>(g, i0, rows, j, p0, p1, part);
    }
  };
  const int team = static_cast<int>(std::min<std::int64_t>(threads, slabs));
  if (team <= 1) {
    for (std::int64_t s = 0; s < slabs; ++s) slab(s);
  } else {
#pragma omp parallel for num_threads(team) schedule(static)
    for (std::int64_t s = 0; s < slabs; ++s) slab(s);
  }
  for (std::int64_t i = 0; i < g.m; ++i)
    for (std::int64_t j = 0; j < g.n; ++j) {
      T sum = 0;
      for (std::int64_t s = 0; s < slabs; ++s) sum += partial[s * g.m * g.n + i * g.n + j];
      T& c = g.c[i * g.crs + j * g.ccs];
      c = g.beta == T(0) ? g.alpha * sum : g.alpha * sum + g.beta * c;
    }
}

// Runs the product if one of the two shapes fits, possibly as C^T = B^T A^T; false otherwise.
template <typename T>
bool run(const Gemm<T>& g, int threads) {
  const Gemm<T> t{g.b, g.bcs, g.brs, g.a, g.acs, g.ars, g.c, g.ccs, g.crs, g.n, g.m, g.k, g.alpha, g.beta};
  if (rows_fits(g)) return rows(g, threads), true;
  if (rows_fits(t)) return rows(t, threads), true;
  if (dots_fits(g)) return dots(g, threads), true;  // (C^T = B^T A^T needs the same strides: no second try)
  return false;
}

}  // namespace skinny
}  // namespace gg::detail
