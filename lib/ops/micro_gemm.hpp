// Internal: GEMM on BLIS's microkernel, for kernels that run many small products on their own
// threads (the convolutions, one image at a time).
//
// Why not bli_gemm: BLIS's OpenMP build opens a parallel region in every call, and libgomp
// allocates a new team for a region nested in another (it caches only the last top-level team
// of the same size), so single-threaded BLIS calls from inside a kernel's threads would
// allocate in every step; BLIS would also repack the shared operand (the weights) in every
// call. Here the caller packs each operand once into BLIS's micro-panel format and the
// microkernel (BLIS's own, for the sub-configuration in use) does the arithmetic:
//
//   C {m, n} (column-stored: element (i, j) at c[i + j ldc]) = beta C + A {m, k} B {k, n}
//
// A is packed in panels of MR rows: panel r holds, for p = 0..k-1, the MR values A(r MR + i, p)
// (zero past m); B in panels of NR columns: panel q holds, for p = 0..k-1, the NR values
// B(p, q NR + j) (zero past n). Panels start on 64-byte boundaries (the kernels load them
// aligned). BLIS's AVX-512 kernels (skx, MR x NR = 32 x 12 for float, 16 x 14 for double)
// prefer column-stored C, which every caller here produces; a row-preferring kernel (AVX2's
// haswell) gives the same results through its general-stride path, only slower.
#pragma once

#include <blis.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace gg::detail {

template <typename T>
struct Micro {
  using Kernel = void (*)(dim_t, dim_t, dim_t, void*, void*, void*, void*, void*, inc_t, inc_t, auxinfo_t*, cntx_t*);
  Kernel kernel = nullptr;
  cntx_t* cntx = nullptr;
  dim_t mr = 0, nr = 0;

  static const Micro& get() {
    static const Micro m = [] {
      bli_init();
      Micro r;
      const num_t dt = std::is_same_v<T, float> ? BLIS_FLOAT : BLIS_DOUBLE;
      r.cntx = bli_gks_query_cntx();
      r.kernel = reinterpret_cast<Kernel>(bli_cntx_get_l3_nat_ukr_dt(dt, BLIS_GEMM_UKR, r.cntx));
      r.mr = bli_cntx_get_blksz_def_dt(dt, BLIS_MR, r.cntx);
      r.nr = bli_cntx_get_blksz_def_dt(dt, BLIS_NR, r.cntx);
      return r;
    }();
    return m;
  }
  // Elements of one packed panel of depth k, rounded up to 64 bytes; of a packed operand.
  std::int64_t panel(std::int64_t width, std::int64_t k) const {
    const std::int64_t per = static_cast<std::int64_t>(64 / sizeof(T));
    return (width * k + per - 1) / per * per;
  }
  std::int64_t packed_a(std::int64_t m, std::int64_t k) const { return (m + mr - 1) / mr * panel(mr, k); }
  std::int64_t packed_b(std::int64_t k, std::int64_t n) const { return (n + nr - 1) / nr * panel(nr, k); }
};

// Packs `rows` x `depth` values, element (i, p) at src[i rs + p cs], into panels of `width`
// rows: panel q holds, for each p, the `width` values of rows q width .. (zero past `rows`).
template <typename T>
void pack_panels(const T* src, std::int64_t rs, std::int64_t cs, std::int64_t rows, std::int64_t depth, std::int64_t width,
                 std::int64_t panel_size, T* dst) {
  for (std::int64_t r0 = 0; r0 < rows; r0 += width) {
    T* panel = dst + (r0 / width) * panel_size;
    const std::int64_t n = std::min(width, rows - r0);
    if (rs == 1) {  // each p: a contiguous run of rows
      for (std::int64_t p = 0; p < depth; ++p) {
        const T* s = src + r0 + p * cs;
        T* d = panel + p * width;
        for (std::int64_t i = 0; i < n; ++i) d[i] = s[i];
        for (std::int64_t i = n; i < width; ++i) d[i] = T(0);
      }
    } else {  // each row contiguous over p (cs == 1) or strided: a transposing copy
      for (std::int64_t i = 0; i < width; ++i) {
        const T* s = src + (r0 + i) * rs;
        for (std::int64_t p = 0; p < depth; ++p) panel[p * width + i] = i < n ? s[p * cs] : T(0);
      }
    }
  }
}

// Packs A {m, k}, element (i, p) at src[i rs + p cs], into MR-row panels.
template <typename T>
void pack_a(const T* src, std::int64_t rs, std::int64_t cs, std::int64_t m, std::int64_t k, T* dst) {
  const Micro<T>& u = Micro<T>::get();
  pack_panels(src, rs, cs, m, k, u.mr, u.panel(u.mr, k), dst);
}

// Packs B {k, n}, element (p, j) at src[p rs + j cs], into NR-column panels: B^T's rows.
template <typename T>
void pack_b(const T* src, std::int64_t rs, std::int64_t cs, std::int64_t k, std::int64_t n, T* dst) {
  const Micro<T>& u = Micro<T>::get();
  pack_panels(src, cs, rs, n, k, u.nr, u.panel(u.nr, k), dst);
}

// C = beta C + A B from packed A and B, on the calling thread. The result of each element does
// not depend on anything but its row of A and column of B (the microkernel's order over p).
template <typename T>
void micro_gemm(std::int64_t m, std::int64_t n, std::int64_t k, const T* ap, const T* bp, T beta, T* c, std::int64_t ldc) {
  const Micro<T>& u = Micro<T>::get();
  T one = 1;
  auxinfo_t aux{};
  const std::int64_t pa = u.panel(u.mr, k), pb = u.panel(u.nr, k);
  for (std::int64_t c0 = 0; c0 < n; c0 += u.nr) {
    T* b = const_cast<T*>(bp) + (c0 / u.nr) * pb;
    for (std::int64_t r0 = 0; r0 < m; r0 += u.mr) {
      T* a = const_cast<T*>(ap) + (r0 / u.mr) * pa;
      bli_auxinfo_set_next_a(r0 + u.mr < m ? a + pa : const_cast<T*>(ap), &aux);
      bli_auxinfo_set_next_b(r0 + u.mr < m ? b : b + pb, &aux);
      u.kernel(std::min(u.mr, m - r0), std::min(u.nr, n - c0), k, &one, a, b, &beta, c + r0 + c0 * ldc, 1, ldc, &aux,
               u.cntx);
    }
  }
}

}  // namespace gg::detail
