// MatMul: C = alpha * batch^batch_power * op(A) op(B), op(X) = X or X^T, rank 2, float.
//
// Transposes never copy: op(X) is X's view with its two strides swapped, handed to BLIS's
// typed gemm, which packs panels itself and takes any row/column strides (so operands may be
// strided feeds: kStrided). alpha is 1 for user nodes; the fusion rules below fold a scale that
// only feeds GEMMs into it, and a scale of a GEMM's result (batch_power carries a mean's 1/m).
//
// VJP, with C = op(A) op(B):  d op(A) = G op(B)^T,  d op(B) = op(A)^T G, transposing back where
// op() transposed; alpha scales both.
#include "collective.hpp"
#include "fusion.hpp"
#include "onnx.hpp"
#include "op.hpp"
#include "op_list.hpp"
#include "skinny_gemm.hpp"

#include <blis.h>

#include <utility>

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// C = op(A) op(B), op(X) = X or X^T. Rank-2 float operands; transposes are BLIS strides, never copies.
Value matmul(Value a, Value b, bool trans_a = false, bool trans_b = false);
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

struct MatMulAttrs {
  bool trans_a = false, trans_b = false;  // op(A) = A^T, op(B) = B^T
  double alpha = 1;                       // C = alpha * batch^batch_power * op(A) op(B)
  int batch_power = 0;
  template <typename F> void visit(F&& f) {
    f("trans_a", trans_a), f("trans_b", trans_b), f("alpha", alpha), f("batch_power", batch_power);
  }
};

Outputs infer(const Graph& g, const Node& n) {
  require_float(g, n, 0);
  const DType t = require_same_dtype(g, n, 0, 1);
  const MatMulAttrs& at = n.attrs.as<MatMulAttrs>();
  const Shape& a = operand(g, n, 0).shape;
  const Shape& b = operand(g, n, 1).shape;
  if (a.rank != 2 || b.rank != 2) fail(g, n, "operands must be rank 2");
  const std::int64_t m = at.trans_a ? a[1] : a[0], ka = at.trans_a ? a[0] : a[1];
  const std::int64_t kb = at.trans_b ? b[1] : b[0], nn = at.trans_b ? b[0] : b[1];
  if (ka != kb)
    throw GraphError(std::string("matmul: inner dimensions differ: ") + describe(g, n.inputs[0]) + (at.trans_a ? "^T" : "") +
                     " times " + describe(g, n.inputs[1]) + (at.trans_b ? "^T" : ""));
  return Port{t, Shape{m, nn}};
}

// op(X) as a view: the transpose is a stride swap.
TensorView op_view(const TensorView& v, bool trans) { return trans ? v.transposed() : v; }

// C = alpha op(A) op(B) + beta C (beta 0 or 1): a product with one short side by skinny_gemm.hpp's
// kernels (they read the long operand once, where BLIS would pack it first), the rest through
// BLIS's typed gemm.
template <typename T>
void gemm_into(const TensorView& a0, const TensorView& b0, const TensorView& c, const MatMulAttrs& at, T alpha, T beta,
               int threads) {
  TensorView a = op_view(a0, at.trans_a), b = op_view(b0, at.trans_b);
  TensorView cv = c;
  if (a.shape[1] > 0 &&
      skinny::run<T>({data<T>(a), a.strides[0], a.strides[1], data<T>(b), b.strides[0], b.strides[1], data<T>(c), c.strides[0],
                      c.strides[1], a.shape[0], b.shape[1], a.shape[1], alpha, beta},
                     threads))
    return;
  // A product with few rows and many columns (the notebook's Z2 = W2 A1: 10 x 60000) runs
  // transposed, C^T = B^T A^T (strides only): BLIS's microkernel is 32 rows tall here, so 10
  // rows would leave two thirds of every tile empty; 10 columns fill most of its 12. (Not for a
  // long inner dimension, dW2 = dZ2 A1^T: measured slower transposed.)
  if (a.shape[0] < 16 && b.shape[1] >= 4 * a.shape[0] && b.shape[1] > a.shape[1]) {
    const TensorView t = a;
    a = b.transposed(), b = t.transposed(), cv = c.transposed();
  }
  const dim_t m = a.shape[0], kk = a.shape[1], n = b.shape[1];
  if (m == 0 || n == 0) return;
  if (kk == 0) {  // BLIS would scale C by beta; an empty sum is zero
    for (dim_t i = 0; i < m; ++i)
      for (dim_t j = 0; j < n; ++j) data<T>(cv)[i * cv.strides[0] + j * cv.strides[1]] *= beta;
    return;
  }
  // Threads per call (not BLIS's global setting). Every call of a program uses the program's
  // thread count: libgomp caches the team of the last parallel region and reuses it when the
  // next one asks for the same size, so steady-state steps allocate nothing (a team of one is
  // never cached, so single-threaded programs do allocate one per GEMM, inside libgomp).
  rntm_t rntm = BLIS_RNTM_INITIALIZER;
  bli_rntm_set_num_threads(threads, &rntm);
  if constexpr (std::is_same_v<T, float>)
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, kk, &alpha, data<T>(a), a.strides[0], a.strides[1],
                 data<T>(b), b.strides[0], b.strides[1], &beta, data<T>(cv), cv.strides[0], cv.strides[1], nullptr, &rntm);
  else
    bli_dgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, kk, &alpha, data<T>(a), a.strides[0], a.strides[1],
                 data<T>(b), b.strides[0], b.strides[1], &beta, data<T>(cv), cv.strides[0], cv.strides[1], nullptr, &rntm);
}

template <typename T>
void forward(const KernelArgs& k) {
  const MatMulAttrs& at = k.attrs<MatMulAttrs>();
  gemm_into<T>(k.in[0], k.in[1], k.out[0], at, static_cast<T>(batch_factor(at.alpha, at.batch_power, k.batch)), T(0),
               k.threads);
}

// ---- sparse x dense -----------------------------------------------------------------------------
//
// When one operand is an input fed with its nonzeros (Program::Feed::sparse), the product is
// computed from them. Written as C = D B with the sparse factor B {K, N} on the right (a sparse
// A becomes C^T = op(B)^T op(A)^T: a transposed view of C, no copy), two cases by how B's
// nonzeros are grouped:
//   gather  (grouped by column n):  C[:, n] = alpha sum_k B[k, n] D[:, k]. A panel of up to four
//           vectors of C[:, n] stays in registers over the column's nonzeros: per nonzero, a
//           broadcast and fused multiply-adds from one contiguous row of D^T, packed once per
//           call (the notebook's Z1 = W1 X).
//   scatter (grouped by row k):     C[:, n] += alpha B[k, n] D[:, k]. The panel of D[:, k] is held
//           in registers and added into row n of an accumulator C^T {N, panel}, L2-sized for a
//           weight gradient, written out transposed at the end (the notebook's dW1 = dZ1 X^T).
// Threads split C's rows into panels of whole vectors, never a sum: every element is summed over
// its nonzeros in their stored order (two interleaved partial sums in the gather, so that the
// fused multiply-adds do not wait on each other), the same bits for any thread count. Each
// thread packs and accumulates in its own contiguous part of the workspace, the same part in
// both kernels: on this 2-core VM, a workspace written by one core and read by the other in the
// next step costed more than the products. A naive scatter with the accumulators in memory on
// both sides is slower than dense BLIS; the register-held operand is what makes these kernels
// beat the GEMM (MNIST: about 2.4x at 19%).
// Vec<T> and kLanes<T>: one 512-bit vector (skinny_gemm.hpp).
constexpr std::int64_t kMaxPanel = 4;  // vectors of C per panel (registers: 2 x 4 accumulators)

template <typename T> std::int64_t padded(std::int64_t m) { return (m + kLanes<T> - 1) / kLanes<T> * kLanes<T>; }

// The product as C = D B with the sparse B on the right.
struct SparseProduct {
  TensorView c, d;  // C {M, N}, D {M, K}: views, any strides
  bool gather = false;
  std::int64_t m = 0, k = 0, n = 0;
};

SparseProduct sparse_product(const MatMulAttrs& at, const TensorView& a, const TensorView& b, const TensorView& c,
                             int sparse_operand, int major) {
  SparseProduct p;
  int bmajor;  // the axis of B the nonzeros are grouped by
  if (sparse_operand == 1) {
    p.c = c;
    p.d = op_view(a, at.trans_a);
    bmajor = at.trans_b ? 1 - major : major;
  } else {
    p.c = c.transposed();
    p.d = op_view(b, !at.trans_b);
    bmajor = 1 - (at.trans_a ? 1 - major : major);
  }
  p.gather = bmajor == 1;
  p.m = p.c.shape[0], p.n = p.c.shape[1], p.k = p.d.shape[1];
  return p;
}

// From this many groups of nonzeros on (a full data set), threads split the groups rather than
// C's rows: each nonzero is then read from memory once, not once per thread. The scatter's
// groups go to kChunks fixed chunks, each with its own accumulator, added in chunk order: the
// same bits for any thread count. Both depend on the shapes only.
constexpr std::int64_t kWide = 8192;
constexpr std::int64_t kChunks = 8;

bool wide(const SparseProduct& p) { return (p.gather ? p.n : p.k) >= kWide; }

// Panel-major scratch: panel q (rows q * width ..) holds {K or N, its vectors} contiguously; a
// wide scatter has one such accumulator per chunk.
template <typename T>
std::size_t sparse_bytes(const SparseProduct& p) {
  const std::int64_t copies = !p.gather && wide(p) ? kChunks : 1;
  // A wide scatter may run from the cross blocks: a tile of D^T columns per chunk, too.
  const std::int64_t tiles = !p.gather && wide(p) ? kChunks * kCrossSpan * kMaxPanel * kLanes<T> : 0;
  return static_cast<std::size_t>(copies * (p.gather ? p.k : p.n) * padded<T>(p.m) + tiles) * sizeof(T) + 64;
}

// dst[r * drs + c * dcs] = scale * src[r * rs + c * cs] for r < rows, c < cols, in 16 x 16 tiles
// that stay in L1: a transpose walked along either side alone misses a cache line per element
// on the other.
template <typename T>
void transpose_block(const T* src, std::int64_t rs, std::int64_t cs, std::int64_t rows, std::int64_t cols, T* dst,
                     std::int64_t drs, std::int64_t dcs, T scale, bool accumulate = false) {
  constexpr std::int64_t kB = 16;
  for (std::int64_t a = 0; a < rows; a += kB)
    for (std::int64_t b = 0; b < cols; b += kB) {
      const std::int64_t ae = std::min(a + kB, rows), be = std::min(b + kB, cols);
      if (accumulate)
        for (std::int64_t c = b; c < be; ++c)
          for (std::int64_t r = a; r < ae; ++r) dst[r * drs + c * dcs] += scale * src[r * rs + c * cs];
      else
        for (std::int64_t c = b; c < be; ++c)
          for (std::int64_t r = a; r < ae; ++r) dst[r * drs + c * dcs] = scale * src[r * rs + c * cs];
    }
}

// sum = the nonzeros [q, end)'s values times their rows of dt ({rows, NV lanes}, row index[q]),
// as two interleaved partial sums (even and odd nonzeros) so that consecutive fused
// multiply-adds do not wait on each other. Shared by the gather and the cross gather.
template <typename T, int NV, typename Index>
inline void gather_sum(const Index* index, const T* val, std::int64_t q, std::int64_t end, const T* dt, Vec<T> (&sum)[NV]) {
  constexpr std::int64_t w = NV * kLanes<T>;
  Vec<T> even[NV] = {}, odd[NV] = {};
  for (; q + 1 < end; q += 2) {
    const Vec<T>* a = reinterpret_cast<const Vec<T>*>(dt + index[q] * w);
    const Vec<T>* b = reinterpret_cast<const Vec<T>*>(dt + index[q + 1] * w);
    const T va = val[q], vb = val[q + 1];
    for (int u = 0; u < NV; ++u) even[u] += va * a[u], odd[u] += vb * b[u];
  }
  if (q < end) {
    const Vec<T>* a = reinterpret_cast<const Vec<T>*>(dt + index[q] * w);
    for (int u = 0; u < NV; ++u) even[u] += val[q] * a[u];
  }
  for (int u = 0; u < NV; ++u) sum[u] = even[u] + odd[u];
}

// One panel of C's rows [row0, row0 + rows), NV vectors wide, for every column n: dt is the
// panel's D^T {K, NV lanes}.
template <typename T, int NV>
void gather_panel(const SparseProduct& p, const SparseMatrix& s, const T* dt, std::int64_t row0, std::int64_t rows,
                  std::int64_t n0, std::int64_t n1, T alpha, bool accumulate) {
  constexpr std::int64_t w = NV * kLanes<T>;
  const std::int64_t* ptr = s.ptr.data();
  const std::int32_t* idx = s.index.data();
  const T* val = s.values<T>();
  T* c = data<T>(p.c);
  const std::int64_t rs = p.c.strides[0], cs = p.c.strides[1];
  for (std::int64_t n = n0; n < n1; ++n) {
    Vec<T> sum[NV];
    gather_sum<T, NV>(idx, val, ptr[n], ptr[n + 1], dt, sum);
    alignas(64) T out[w];
    for (int u = 0; u < NV; ++u) reinterpret_cast<Vec<T>*>(out)[u] = sum[u];
    if (accumulate)
      for (std::int64_t i = 0; i < rows; ++i) c[(row0 + i) * rs + n * cs] += alpha * out[i];
    else
      for (std::int64_t i = 0; i < rows; ++i) c[(row0 + i) * rs + n * cs] = alpha * out[i];
  }
}

// One panel of C's rows over B's rows [kb, ke), accumulated into acc {N, NV lanes} (zeroed here).
template <typename T, int NV>
void scatter_panel(const SparseProduct& p, const SparseMatrix& s, T* acc, std::int64_t row0, std::int64_t rows,
                   std::int64_t kb, std::int64_t ke) {
  constexpr std::int64_t w = NV * kLanes<T>;
  constexpr std::int64_t kTile = 64;  // rows of B (columns of D) packed at a time
  const std::int64_t* ptr = s.ptr.data();
  const std::int32_t* idx = s.index.data();
  const T* val = s.values<T>();
  const T* d = data<T>(p.d);
  const std::int64_t rs = p.d.strides[0], cs = p.d.strides[1];
  std::fill(acc, acc + p.n * w, T(0));
  alignas(64) T tile[kTile * w];
  for (std::int64_t k0 = kb; k0 < ke; k0 += kTile) {
    const std::int64_t kn = std::min(kTile, ke - k0);
    if (rows < w) std::fill(tile, tile + kn * w, T(0));
    transpose_block<T>(d + row0 * rs + k0 * cs, rs, cs, rows, kn, tile, 1, w, T(1));
    for (std::int64_t kk = 0; kk < kn; ++kk) {
      Vec<T> col[NV];
      for (int u = 0; u < NV; ++u) col[u] = reinterpret_cast<const Vec<T>*>(tile + kk * w)[u];
      for (std::int64_t q = ptr[k0 + kk]; q < ptr[k0 + kk + 1]; ++q) {
        Vec<T>* out = reinterpret_cast<Vec<T>*>(acc + idx[q] * w);
        const T v = val[q];
        for (int u = 0; u < NV; ++u) out[u] += v * col[u];
      }
    }
  }
}

// The scatter's product from the cross blocks (SparseMatrix::cross): for B's rows in block b,
// acc[n] += sum over the block's nonzeros (k, n) of B[k, n] D[:, k], a gather per column n
// whose D^T rows (`tile`: {kCrossSpan, NV lanes}, packed by the caller) stay in cache; each
// acc[n] is read and written once per block, not once per nonzero.
template <typename T, int NV>
void cross_panel(const SparseBlocks& x, std::int64_t b, std::int64_t n_cols, const T* tile, T* acc) {
  constexpr std::int64_t w = NV * kLanes<T>;
  const std::int64_t* ptr = x.ptr.data() + b * (n_cols + 1);
  const std::uint16_t* off = x.offset.data();
  const T* val = x.values<T>();
  for (std::int64_t n = 0; n < n_cols; ++n) {
    if (ptr[n] == ptr[n + 1]) continue;
    Vec<T> sum[NV];
    gather_sum<T, NV>(off, val, ptr[n], ptr[n + 1], tile, sum);
    Vec<T>* out = reinterpret_cast<Vec<T>*>(acc + n * w);
    for (int u = 0; u < NV; ++u) out[u] += sum[u];
  }
}

template <typename T>
void cross_any(std::int64_t nv, const SparseBlocks& x, std::int64_t b, std::int64_t n_cols, const T* tile, T* acc) {
  switch (nv) {
    case 4: return cross_panel<T, 4>(x, b, n_cols, tile, acc);
    case 3: return cross_panel<T, 3>(x, b, n_cols, tile, acc);
    case 2: return cross_panel<T, 2>(x, b, n_cols, tile, acc);
    default: return cross_panel<T, 1>(x, b, n_cols, tile, acc);
  }
}

// The panel kernels for a width of nv vectors (1 to kMaxPanel), chosen at run time.
template <typename T>
void gather_any(std::int64_t nv, const SparseProduct& p, const SparseMatrix& s, const T* dt, std::int64_t row0,
                std::int64_t rows, std::int64_t n0, std::int64_t n1, T alpha, bool accumulate) {
  switch (nv) {
    case 4: return gather_panel<T, 4>(p, s, dt, row0, rows, n0, n1, alpha, accumulate);
    case 3: return gather_panel<T, 3>(p, s, dt, row0, rows, n0, n1, alpha, accumulate);
    case 2: return gather_panel<T, 2>(p, s, dt, row0, rows, n0, n1, alpha, accumulate);
    default: return gather_panel<T, 1>(p, s, dt, row0, rows, n0, n1, alpha, accumulate);
  }
}

template <typename T>
void scatter_any(std::int64_t nv, const SparseProduct& p, const SparseMatrix& s, T* acc, std::int64_t row0,
                 std::int64_t rows, std::int64_t kb, std::int64_t ke) {
  switch (nv) {
    case 4: return scatter_panel<T, 4>(p, s, acc, row0, rows, kb, ke);
    case 3: return scatter_panel<T, 3>(p, s, acc, row0, rows, kb, ke);
    case 2: return scatter_panel<T, 2>(p, s, acc, row0, rows, kb, ke);
    default: return scatter_panel<T, 1>(p, s, acc, row0, rows, kb, ke);
  }
}

template <typename T>
void forward(const KernelArgs& k);

template <typename T, typename F>
void for_panels(std::int64_t vectors, F&& f) {
  for (std::int64_t q = 0; q * kMaxPanel < vectors; ++q) {
    const std::int64_t nv = std::min(kMaxPanel, vectors - q * kMaxPanel);
    f(q * kMaxPanel * kLanes<T>, nv);
  }
}

// Many groups (a full data set): threads split them; C's rows in panels of kMaxPanel vectors.
template <typename T>
void sparse_wide(const KernelArgs& k, const SparseProduct& p, const SparseMatrix& s, T alpha, bool accumulate) {
  const std::int64_t mp = padded<T>(p.m), vectors = mp / kLanes<T>;
  T* ws = reinterpret_cast<T*>((reinterpret_cast<std::uintptr_t>(k.workspace) + 63) / 64 * 64);
  const T* d = data<T>(p.d);
  T* c = data<T>(p.c);
  const int threads = std::max(1, k.threads);
  if (p.gather) {
    // D^T packed once per panel ({K, w} at ws + K row0), shared: each thread packs a share of K.
#pragma omp parallel num_threads(threads)
    {
      const int id = omp_get_thread_num(), nt = omp_get_num_threads();
      const std::int64_t k0 = p.k * id / nt, k1 = p.k * (id + 1) / nt;
      for_panels<T>(vectors, [&](std::int64_t row0, std::int64_t nv) {
        const std::int64_t w = nv * kLanes<T>, rows = std::min(w, p.m - row0);
        T* part = ws + p.k * row0;
        if (rows < w) std::fill(part + k0 * w, part + k1 * w, T(0));
        transpose_block<T>(d + row0 * p.d.strides[0] + k0 * p.d.strides[1], p.d.strides[0], p.d.strides[1], rows, k1 - k0,
                           part + k0 * w, 1, w, T(1));
      });
#pragma omp barrier
      const std::int64_t n0 = p.n * id / nt, n1 = p.n * (id + 1) / nt;
      for_panels<T>(vectors, [&](std::int64_t row0, std::int64_t nv) {
        const std::int64_t rows = std::min(nv * kLanes<T>, p.m - row0);
        const T* part = ws + p.k * row0;
        gather_any<T>(nv, p, s, part, row0, rows, n0, n1, alpha, accumulate);
      });
    }
    return;
  }
  // Scatter: chunk ch accumulates B's rows [p.k ch / kChunks, ..) at ws + ch N Mp (panel-major),
  // then every element of C is the sum of the chunks' values in chunk order. With the cross
  // blocks, a chunk is whole blocks of kCrossSpan rows: each packs its D^T columns into its own
  // tile after the accumulators and gathers per column.
  const std::int64_t per_chunk = p.n * mp;
  const bool cross = s.has_cross();
  const std::int64_t blocks = s.cross.blocks;
  T* tiles = ws + kChunks * per_chunk;  // {kChunks, kCrossSpan, kMaxPanel lanes}
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (std::int64_t ch = 0; ch < kChunks; ++ch) {
      if (cross) {
        T* tile = tiles + ch * kCrossSpan * kMaxPanel * kLanes<T>;
        std::fill(ws + ch * per_chunk, ws + (ch + 1) * per_chunk, T(0));
        for (std::int64_t b = blocks * ch / kChunks; b < blocks * (ch + 1) / kChunks; ++b) {
          const std::int64_t k0 = b * kCrossSpan, kn = std::min(kCrossSpan, p.k - k0);
          for_panels<T>(vectors, [&](std::int64_t row0, std::int64_t nv) {
            const std::int64_t w = nv * kLanes<T>, rows = std::min(w, p.m - row0);
            if (rows < w) std::fill(tile, tile + kn * w, T(0));
            transpose_block<T>(d + row0 * p.d.strides[0] + k0 * p.d.strides[1], p.d.strides[0], p.d.strides[1], rows, kn,
                               tile, 1, w, T(1));
            cross_any<T>(nv, s.cross, b, p.n, tile, ws + ch * per_chunk + p.n * row0);
          });
        }
        continue;
      }
      const std::int64_t kb = p.k * ch / kChunks, ke = p.k * (ch + 1) / kChunks;
      for_panels<T>(vectors, [&](std::int64_t row0, std::int64_t nv) {
        const std::int64_t rows = std::min(nv * kLanes<T>, p.m - row0);
        T* part = ws + ch * per_chunk + p.n * row0;
        scatter_any<T>(nv, p, s, part, row0, rows, kb, ke);
      });
    }
#pragma omp for schedule(static)
    for (std::int64_t n = 0; n < p.n; ++n)
      for_panels<T>(vectors, [&](std::int64_t row0, std::int64_t nv) {
        const std::int64_t w = nv * kLanes<T>, rows = std::min(w, p.m - row0);
        for (std::int64_t i = 0; i < rows; ++i) {
          T sum = 0;
          for (std::int64_t ch = 0; ch < kChunks; ++ch) sum += ws[ch * per_chunk + p.n * row0 + n * w + i];
          T& out = c[(row0 + i) * p.c.strides[0] + n * p.c.strides[1]];
          out = accumulate ? out + alpha * sum : alpha * sum;
        }
      });
  }
}

// C = alpha op(A) op(B) (+ C when accumulating) with operand `sparse_operand` (0: A, 1: B) given
// by k.sparse. False when the workspace was planned for the other grouping and is too small: the
// caller then takes the dense path (correct, only slower).
template <typename T>
bool run_sparse(const KernelArgs& k, const TensorView& a, const TensorView& b, const TensorView& c, const MatMulAttrs& at,
                int sparse_operand, T alpha, bool accumulate) {
  const SparseMatrix& s = *k.sparse;
  const SparseProduct p = sparse_product(at, a, b, c, sparse_operand, s.major);
  if (sparse_bytes<T>(p) > k.workspace_bytes) return false;
  if (p.m == 0 || p.n == 0) return true;
  const std::int64_t vectors = padded<T>(p.m) / kLanes<T>;
  if (wide(p)) {
    sparse_wide<T>(k, p, s, alpha, accumulate);
    return true;
  }
  // Panels: one per thread when the work pays for a parallel region, at most kMaxPanel vectors.
  const int threads = s.nnz() * vectors >= (1 << 16) ? k.threads : 1;
  const std::int64_t width = std::min(kMaxPanel, (vectors + threads - 1) / threads);
  const std::int64_t panels = (vectors + width - 1) / width;
  T* ws = reinterpret_cast<T*>((reinterpret_cast<std::uintptr_t>(k.workspace) + 63) / 64 * 64);
  const std::int64_t len = p.gather ? p.k : p.n;  // rows of a panel's scratch
  auto panel = [&](std::int64_t q) {
    const std::int64_t row0 = q * width * kLanes<T>;
    const std::int64_t nv = std::min(width, vectors - q * width), w = nv * kLanes<T>;
    const std::int64_t rows = std::min(w, p.m - row0);
    T* part = ws + len * row0;  // this panel's scratch: {len, w}
    if (p.gather) {
      // The panel's D^T {K, w}, zero past M: every load is a whole aligned vector.
      if (rows < w) std::fill(part, part + p.k * w, T(0));
      transpose_block<T>(data<T>(p.d) + row0 * p.d.strides[0], p.d.strides[0], p.d.strides[1], rows, p.k, part, 1, w, T(1));
      gather_any<T>(nv, p, s, part, row0, rows, 0, p.n, alpha, accumulate);
    } else {
      scatter_any<T>(nv, p, s, part, row0, rows, 0, p.k);
      // C[row0.., :] = alpha acc^T.
      transpose_block<T>(part, w, 1, p.n, rows, data<T>(p.c) + row0 * p.c.strides[0], p.c.strides[1], p.c.strides[0], alpha,
                         accumulate);
    }
  };
  // No parallel region for one thread: libgomp allocates a team of one afresh every time.
  const int team = static_cast<int>(std::min<std::int64_t>(threads, panels));
  if (team <= 1) {
    for (std::int64_t q = 0; q < panels; ++q) panel(q);
    return true;
  }
#pragma omp parallel for num_threads(team) schedule(static)
  for (std::int64_t q = 0; q < panels; ++q) panel(q);
  return true;
}

template <typename T>
void sparse_forward(const KernelArgs& k) {
  const MatMulAttrs& at = k.attrs<MatMulAttrs>();
  const T alpha = static_cast<T>(batch_factor(at.alpha, at.batch_power, k.batch));
  if (!run_sparse<T>(k, k.in[0], k.in[1], k.out[0], at, k.sparse_operand, alpha, false)) forward<T>(k);
}

// Workspace for the sparse kernels, planned for nonzeros grouped along the input's open (batch)
// axis, else along its axis 0 (what the batch iterator and gg::to_sparse of a data set give).
std::size_t sparse_scratch_of(const MatMulAttrs& at, DType t, const Shape& sa, const Shape& sb, int sparse_operand, int major) {
  const TensorView a(nullptr, t, sa), b(nullptr, t, sb);
  const std::int64_t m = at.trans_a ? sa[1] : sa[0], nn = at.trans_b ? sb[0] : sb[1];
  const TensorView c(nullptr, t, Shape{m, nn});
  const SparseProduct p = sparse_product(at, a, b, c, sparse_operand, major);
  return t == DType::f32 ? sparse_bytes<float>(p) : sparse_bytes<double>(p);
}

std::size_t sparse_scratch(const Node& n, const Shape* in, int, int sparse_operand, int major) {
  return sparse_scratch_of(n.attrs.as<MatMulAttrs>(), n.out().dtype, in[0], in[1], sparse_operand, major);
}

Value gemm(Value x, Value y, MatMulAttrs at);

std::vector<Value> vjp(const VjpArgs& a) {
  const MatMulAttrs& at = a.attrs<MatMulAttrs>();
  Value A = a.in(0), B = a.in(1), G = a.dy();
  const bool ta = at.trans_a, tb = at.trans_b;
  auto mm = [&](Value x, Value y, bool tx, bool ty) { return gemm(x, y, {tx, ty, at.alpha, at.batch_power}); };
  std::vector<Value> out(2);
  if (a.wanted[0]) out[0] = ta ? mm(B, G, tb, true) : mm(G, B, false, !tb);
  if (a.wanted[1]) out[1] = tb ? mm(G, A, true, ta) : mm(A, G, !ta, false);
  return out;
}

// ONNX: MatMul. With the weights first and the data second (the columns layout's W X), the
// product is written transposed, as X^T W^T = (W X)^T with the weights stored transposed, and
// its result is held swapped (lib/ops/onnx.hpp): the batch comes first and the constant second,
// the form runtimes read as a fully connected layer (OpenCV refuses a constant first operand).
// op() transposes of computed operands cost a Transpose node; of constants, nothing.
void matmul_onnx(OnnxWriter& w) {
  const MatMulAttrs& a = w.node().attrs.as<MatMulAttrs>();
  if (a.batch_power != 0) w.refuse("has a factor that depends on the batch size (a mean over the open dimension)");
  const bool weights_first = w.is_constant(0) && !w.is_constant(1);
  const std::string y = a.alpha == 1 ? w.out(0, weights_first) : w.temp("product");
  if (weights_first)
    w.add("MatMul", {w.in(1, !a.trans_b), w.in(0, !a.trans_a)}, {y});
  else
    w.add("MatMul", {w.in(0, a.trans_a), w.in(1, a.trans_b)}, {y});
  if (a.alpha != 1)
    w.add("Mul", {y, w.initializer(scalar_tensor(a.alpha, w.node().out().dtype), "alpha")}, {w.out(0, weights_first)});
}

}  // namespace

GG_OP(matmul_op) = {.name = "matmul", .arity = 2, .flags = kStrided, .diff_inputs = 0b11,
                    .kernels = {.f32 = forward<float>, .f64 = forward<double>}, .infer = infer, .vjp = vjp, .onnx = matmul_onnx,
                    .sparse_kernels = {.f32 = sparse_forward<float>, .f64 = sparse_forward<double>},
                    .sparse_operands = 0b11, .sparse_workspace = sparse_scratch};

namespace {

Value gemm(Value x, Value y, MatMulAttrs at) { return make(matmul_op, {x, y}, Attrs(at)); }

// The scale's factor folded into a GEMM's: exact in real arithmetic ((sA)B = s(AB)); in floating
// point BLIS applies it once instead of a separate pass (bitwise equal for powers of two).
void fold(MatMulAttrs& mm, const Node& scale_node) {
  const ScaleAttrs& s = scale_node.attrs.as<ScaleAttrs>();
  mm.alpha *= s.factor;
  mm.batch_power += s.batch_power;
}

// matmul(scale(x), y) and matmul(y, scale(x)) -> matmul with alpha, when every reader of the scale
// is a GEMM and the scale is not fetched. A GEMM reading the scaled value twice gets it twice.
bool fold_scale_into_readers(Rewriter& r, int i) {
  IrNode& sc = r.at(i);
  if (sc.node.op != &scale_op || sc.fetched) return false;
  const std::vector<int> rs = r.readers(i);
  if (rs.empty()) return false;
  for (int x : rs)
    if (r.op(x) != &matmul_op) return false;
  for (int x : rs) {
    Node& mm = r.at(x).node;
    int uses = 0;
    for (Operand& o : mm.inputs)
      if (o.node == i) o = sc.node.inputs[0], ++uses;
    if (uses == 0) continue;  // a second entry for a GEMM already rewritten
    for (int k = 0; k < uses; ++k) fold(mm.attrs.as<MatMulAttrs>(), sc.node);
    mm.fused = true;
  }
  r.kill(i);
  return true;
}

// scale(matmul(x, y)) -> matmul with alpha (it takes the scale's place and name), when the GEMM
// has no other reader and neither is fetched.
bool fold_scale_of_gemm(Rewriter& r, int i) {
  IrNode& sc = r.at(i);
  if (sc.node.op != &scale_op || sc.fetched) return false;
  const int src = sc.node.inputs[0].node;
  IrNode& mm = r.at(src);
  if (mm.node.op != &matmul_op || mm.fetched || r.readers(src).size() != 1) return false;
  Node folded = mm.node;
  fold(folded.attrs.as<MatMulAttrs>(), sc.node);
  folded.name = sc.node.name;
  folded.fused = true;
  sc.node = folded;  // the GEMM's operands come earlier: the order still holds
  r.kill(src);
  return true;
}

}  // namespace

GG_FUSION(fold_scale_into_gemms_rule) = {"fold_scale_into_gemms", 0, fold_scale_into_readers};
GG_FUSION(fold_scale_of_gemm_rule) = {"fold_scale_of_gemm", 0, fold_scale_of_gemm};

// ---- a GEMM folded into its one consumer ------------------------------------------------------------
//
// gemm_sgd_update and gemm_pack below: a consumer (op, operand 0 its destination) of a matmul that
// nothing else reads and nobody fetches takes the product's operands and runs the GEMM itself.
namespace {

// Whether the matmul `g` can be absorbed by its one reader.
bool product_for_one_reader(Rewriter& r, int g) {
  return r.op(g) == &matmul_op && !r.fetched(g) && r.readers(g).size() == 1;
}

// u(dst, G = matmul(A, B)) -> op(dst, A, B) with `attrs`; the matmul is gone.
void absorb_product(Rewriter& r, IrNode& u, int g, const OpDef& op, Attrs attrs) {
  const Node& mm = r.at(g).node;
  u.node.inputs = {u.node.inputs[0], mm.inputs[0], mm.inputs[1]};
  u.node.op = &op;
  u.node.attrs = std::move(attrs);
  u.node.fused = true;
  r.kill(g);
}

// The sparse kernels' workspace of such an op: the GEMM's, with operands 1 and 2 as A and B.
template <typename A>
std::size_t absorbed_gemm_scratch(const Node& n, const Shape* in, int, int sparse_operand, int major) {
  return sparse_scratch_of(n.attrs.as<A>().gemm(), n.out().dtype, in[1], in[2], sparse_operand - 1, major);
}

}  // namespace

// ---- plain SGD folded into the weight gradient's GEMM ------------------------------------------------
//
// gemm_sgd_update(P, A, B): P -= lr alpha op(A) op(B). An SGD update without weight decay whose
// gradient is a GEMM read by nothing else becomes one GEMM with beta = 1 (the sparse kernels add
// into P the same way): the gradient is never stored, and P is read and written once. Made only
// by the rule below (the updates, and the rule, run after everything else).
namespace {

struct GemmSgdAttrs {
  bool trans_a = false, trans_b = false;
  double alpha = 1;
  int batch_power = 0;
  double lr = 0;  // what Program::set_learning_rate sets
  template <typename F> void visit(F&& f) {
    f("trans_a", trans_a), f("trans_b", trans_b), f("alpha", alpha), f("batch_power", batch_power), f("lr", lr);
  }
  MatMulAttrs gemm() const { return {trans_a, trans_b, alpha, batch_power}; }
};

Outputs infer_gemm_sgd(const Graph& g, const Node& n) { return operand(g, n, 0); }

template <typename T>
T sgd_alpha(const KernelArgs& k) {
  const GemmSgdAttrs& at = k.attrs<GemmSgdAttrs>();
  return static_cast<T>(-at.lr * batch_factor(at.alpha, at.batch_power, k.batch));
}

template <typename T>
void gemm_sgd_fwd(const KernelArgs& k) {
  gemm_into<T>(k.in[1], k.in[2], k.in[0], k.attrs<GemmSgdAttrs>().gemm(), sgd_alpha<T>(k), T(1), k.threads);
}

template <typename T>
void gemm_sgd_sparse(const KernelArgs& k) {
  if (!run_sparse<T>(k, k.in[1], k.in[2], k.in[0], k.attrs<GemmSgdAttrs>().gemm(), k.sparse_operand - 1, sgd_alpha<T>(k), true))
    gemm_sgd_fwd<T>(k);
}

}  // namespace

GG_OP(gemm_sgd_update_op) = {.name = "gemm_sgd_update", .arity = 3, .flags = kInternal | kNonDifferentiable | kStrided,
                             .writes = 0b1, .alias = 0, .kernels = {.f32 = gemm_sgd_fwd<float>, .f64 = gemm_sgd_fwd<double>},
                             .infer = infer_gemm_sgd,
                             .sparse_kernels = {.f32 = gemm_sgd_sparse<float>, .f64 = gemm_sgd_sparse<double>},
                             .sparse_operands = 0b110, .sparse_workspace = absorbed_gemm_scratch<GemmSgdAttrs>};

namespace {

bool fold_sgd_into_gemm(Rewriter& r, int i) {
  IrNode& u = r.at(i);
  if (u.node.op != &sgd_update_op) return false;
  const SgdAttrs& sa = u.node.attrs.as<SgdAttrs>();
  if (sa.weight_decay != 0) return false;
  const int g = u.node.inputs[1].node;
  if (!product_for_one_reader(r, g)) return false;
  const Node& mm = r.at(g).node;
  for (const Operand& o : mm.inputs)
    if (o.node == u.node.inputs[0].node) return false;  // the product reads the parameter it would overwrite
  const MatMulAttrs& ma = mm.attrs.as<MatMulAttrs>();
  absorb_product(r, u, g, gemm_sgd_update_op, Attrs(GemmSgdAttrs{ma.trans_a, ma.trans_b, ma.alpha, ma.batch_power, sa.lr}));
  return true;
}

}  // namespace

GG_FUSION(fold_sgd_into_gemm_rule) = {"fold_sgd_into_gemm", 2, fold_sgd_into_gemm};

// ---- a gradient GEMM written straight into its all-reduce buffer ----------------------------------
//
// gemm_pack(f, A, B): f[o : o + n] = alpha op(A) op(B): the pack of a GEMM read by nothing else,
// made by the rule below, so that the product (the largest gradient, dW1) is written once, where
// the all-reduce reads it, instead of stored, read and copied.
namespace {

struct GemmPackAttrs {
  bool trans_a = false, trans_b = false;
  double alpha = 1;
  int batch_power = 0;
  PackAttrs pack;
  template <typename F> void visit(F&& f) {
    f("trans_a", trans_a), f("trans_b", trans_b), f("alpha", alpha), f("batch_power", batch_power);
    pack.visit(f);
  }
  MatMulAttrs gemm() const { return {trans_a, trans_b, alpha, batch_power}; }
};

Outputs infer_gemm_pack(const Graph& g, const Node& n) { return operand(g, n, 0); }

// The product's destination, {M, N} contiguous inside f, and its alpha.
template <typename T>
TensorView gemm_pack_destination(const KernelArgs& k, T& alpha) {
  const GemmPackAttrs& at = k.attrs<GemmPackAttrs>();
  const Shape& sa = k.in[1].shape;
  const Shape& sb = k.in[2].shape;
  alpha = static_cast<T>(batch_factor(at.alpha, at.batch_power, k.batch));
  return TensorView(data<T>(k.in[0]) + at.pack.offset, k.in[0].dtype,
                    Shape{at.trans_a ? sa[1] : sa[0], at.trans_b ? sb[0] : sb[1]});
}

template <typename T>
void gemm_pack_fwd(const KernelArgs& k) {
  T alpha;
  const TensorView c = gemm_pack_destination<T>(k, alpha);
  gemm_into<T>(k.in[1], k.in[2], c, k.attrs<GemmPackAttrs>().gemm(), alpha, T(0), k.threads);
}

template <typename T>
void gemm_pack_sparse(const KernelArgs& k) {
  T alpha;
  const TensorView c = gemm_pack_destination<T>(k, alpha);
  if (!run_sparse<T>(k, k.in[1], k.in[2], c, k.attrs<GemmPackAttrs>().gemm(), k.sparse_operand - 1, alpha, false))
    gemm_pack_fwd<T>(k);
}

}  // namespace

GG_OP(gemm_pack_op) = {.name = "gemm_pack", .arity = 3, .flags = kInternal | kNonDifferentiable | kStrided,
                       .writes = 0b1, .alias = 0, .kernels = {.f32 = gemm_pack_fwd<float>, .f64 = gemm_pack_fwd<double>},
                       .infer = infer_gemm_pack,
                       .sparse_kernels = {.f32 = gemm_pack_sparse<float>, .f64 = gemm_pack_sparse<double>},
                       .sparse_operands = 0b110, .sparse_workspace = absorbed_gemm_scratch<GemmPackAttrs>};

namespace {

bool fold_gemm_into_pack(Rewriter& r, int i) {
  IrNode& u = r.at(i);
  if (u.node.op != &pack_op) return false;
  const int g = u.node.inputs[1].node;
  if (!product_for_one_reader(r, g)) return false;
  const MatMulAttrs& ma = r.at(g).node.attrs.as<MatMulAttrs>();
  absorb_product(r, u, g, gemm_pack_op,
                 Attrs(GemmPackAttrs{ma.trans_a, ma.trans_b, ma.alpha, ma.batch_power, u.node.attrs.as<PackAttrs>()}));
  return true;
}

}  // namespace

GG_FUSION(fold_gemm_into_pack_rule) = {"fold_gemm_into_pack", 2, fold_gemm_into_pack};

}  // namespace detail

Value matmul(Value a, Value b, bool trans_a, bool trans_b) {
  return detail::gemm(a, b, {trans_a, trans_b, 1.0, 0});
}

}  // namespace gg
