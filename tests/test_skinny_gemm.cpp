// The GEMMs with one short side (lib/ops/skinny_gemm.hpp): against a long double reference, on
// shapes with every kind of tail, and the same bits for any thread count.
#include "../lib/ops/skinny_gemm.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

using gg::detail::skinny::Gemm;

// A product C {m, n} = A {m, k} B {k, n} with its own storage: A and B row-major unless
// transposed (then column-major), C row-major or column-major.
template <typename T>
struct Case {
  std::int64_t m, n, k;
  bool a_cols, b_cols, c_cols;
  std::vector<T> a, b, c;
  Case(std::int64_t m_, std::int64_t n_, std::int64_t k_, bool ac, bool bc, bool cc)
      : m(m_), n(n_), k(k_), a_cols(ac), b_cols(bc), c_cols(cc), a(m * k), b(k * n), c(m * n) {
    // Values of both signs, not round, so that a wrong order or a dropped term shows.
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<T>(std::sin(0.731 * static_cast<double>(i) + 0.3));
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<T>(std::cos(0.377 * static_cast<double>(i) + 0.1));
    for (std::size_t i = 0; i < c.size(); ++i) c[i] = static_cast<T>(0.5 + 0.25 * std::sin(static_cast<double>(i)));
  }
  T& at_a(std::int64_t i, std::int64_t p) { return a_cols ? a[i + p * m] : a[i * k + p]; }
  T& at_b(std::int64_t p, std::int64_t j) { return b_cols ? b[p + j * k] : b[p * n + j]; }
  T& at_c(std::int64_t i, std::int64_t j) { return c_cols ? c[i + j * m] : c[i * n + j]; }
  Gemm<T> gemm(T alpha, T beta) {
    return {a.data(), a_cols ? 1 : k, a_cols ? m : 1, b.data(), b_cols ? 1 : n, b_cols ? k : 1,
            c.data(), c_cols ? 1 : n, c_cols ? m : 1, m, n, k, alpha, beta};
  }
};

// C = alpha A B + beta C against long double sums; each element within `tol` of the sum of the
// terms' magnitudes (a bound on any order's rounding error).
template <typename T>
void check_against_reference(Case<T> cs, T alpha, T beta, int threads, double tol) {
  std::vector<long double> want(cs.m * cs.n), scale(cs.m * cs.n);
  for (std::int64_t i = 0; i < cs.m; ++i)
    for (std::int64_t j = 0; j < cs.n; ++j) {
      long double s = 0, mag = 0;
      for (std::int64_t p = 0; p < cs.k; ++p) {
        const long double t = static_cast<long double>(cs.at_a(i, p)) * cs.at_b(p, j);
        s += t, mag += std::fabs(t);
      }
      const long double c0 = beta == T(0) ? 0 : cs.at_c(i, j);
      want[i * cs.n + j] = alpha * s + beta * c0;
      scale[i * cs.n + j] = std::fabs(alpha) * mag + std::fabs(beta * c0) + 1e-30L;
    }
  // beta 0 must not read C: garbage (NaN) there must not reach the result.
  if (beta == T(0))
    for (T& x : cs.c) x = std::numeric_limits<T>::quiet_NaN();
  REQUIRE(gg::detail::skinny::run<T>(cs.gemm(alpha, beta), threads));
  int bad = 0;
  for (std::int64_t i = 0; i < cs.m; ++i)
    for (std::int64_t j = 0; j < cs.n; ++j) {
      const long double err = std::fabs(cs.at_c(i, j) - want[i * cs.n + j]) / scale[i * cs.n + j];
      if (!(err <= tol) && bad++ < 5) FAIL_CHECK("C(" << i << ", " << j << ") = " << cs.at_c(i, j) << ", want " << static_cast<double>(want[i * cs.n + j]));
    }
  CHECK(bad == 0);
}

}  // namespace

TEMPLATE_TEST_CASE("a product with few rows and long rows of B and C matches a long double reference", "[skinny]", float,
                   double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  // m: one row, a partial register block, 10 (the notebook's Z2), 16 in two blocks;
  // n: whole tiles, a one-vector tail, a scalar tail; k: 1, 64, 300.
  const std::int64_t m = GENERATE(1, 7, 10, 16);
  const std::int64_t n = GENERATE(512, 529, 600 + 16 + 5);
  const std::int64_t k = GENERATE(1, 64, 300);
  const T beta = GENERATE(T(0), T(1));
  INFO("m " << m << " n " << n << " k " << k << " beta " << beta);
  check_against_reference<T>(Case<T>(m, n, k, false, false, false), T(-0.25), beta, 2, tol);
  check_against_reference<T>(Case<T>(m, n, k, true, false, false), T(1), beta, 1, tol);  // A^T's strides (W2^T)
}

TEMPLATE_TEST_CASE("a product with a short inner dimension and many rows matches a long double reference", "[skinny]",
                   float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  const std::int64_t m = GENERATE(64, 100);  // the notebook's dA1 = W2^T dZ2: 64 x 10 times 10 x n
  const std::int64_t n = GENERATE(512, 1000);
  const std::int64_t k = GENERATE(3, 10);
  INFO("m " << m << " n " << n << " k " << k);
  check_against_reference<T>(Case<T>(m, n, k, true, false, false), T(1), T(0), 2, tol);
  check_against_reference<T>(Case<T>(m, n, k, false, false, false), T(0.5), T(1), 3, tol);
}

TEMPLATE_TEST_CASE("a product with a long inner dimension and a small result matches a long double reference", "[skinny]",
                   float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  // k: one slab, several with a vector tail, the most slabs with a scalar tail in the last one.
  const std::int64_t k = GENERATE(2048, 5000 + 16, 20000 + 7);
  const std::int64_t m = GENERATE(1, 10, 13);  // 13: two blocks of rows
  const std::int64_t n = GENERATE(1, 3, 64);   // odd: a last column alone
  const T beta = GENERATE(T(0), T(1));
  INFO("m " << m << " n " << n << " k " << k << " beta " << beta);
  // The notebook's dW2 = dZ2 A1^T: A's rows and B's columns contiguous along k.
  check_against_reference<T>(Case<T>(m, n, k, false, true, false), T(-0.1), beta, 2, tol);
}

TEST_CASE("a skinny product whose long side is C's rows runs transposed, C^T = B^T A^T", "[skinny]") {
  // C column-major {1000, 10} = A {1000, 64} (column-major) B {64, 10}: C^T = B^T A^T has few rows and contiguous rows.
  check_against_reference<double>(Case<double>(1000, 10, 64, true, true, true), 1.0, 0.0, 2, 1e-14);
  // A long inner dimension with a column-major C: C's strides only change where the sums go.
  check_against_reference<double>(Case<double>(8, 4, 4096, false, true, true), 1.0, 1.0, 2, 1e-14);
}

TEMPLATE_TEST_CASE("skinny products give the same bits for 1, 2 and 3 threads", "[skinny]", float, double) {
  using T = TestType;
  auto run = [](Case<T> cs, int threads) {
    REQUIRE(gg::detail::skinny::run<T>(cs.gemm(T(0.3), T(1)), threads));
    return cs.c;
  };
  for (const Case<T>& cs : {Case<T>(10, 6000 + 19, 64, false, false, false), Case<T>(64, 3000, 10, true, false, false),
                            Case<T>(10, 64, 30000 + 5, false, true, false)}) {
    INFO("m " << cs.m << " n " << cs.n << " k " << cs.k);
    const std::vector<T> one = run(cs, 1);
    CHECK(run(cs, 2) == one);
    CHECK(run(cs, 3) == one);
  }
}

TEST_CASE("square and short products are left to BLIS", "[skinny]") {
  std::vector<float> a(64 * 64), b(64 * 64), c(64 * 64);
  using G = Gemm<float>;
  CHECK_FALSE(gg::detail::skinny::run<float>(G{a.data(), 64, 1, b.data(), 64, 1, c.data(), 64, 1, 64, 64, 64, 1, 0}, 1));
  // Few rows but short rows of B (a mini-batch of 128): BLIS.
  CHECK_FALSE(gg::detail::skinny::run<float>(G{a.data(), 64, 1, b.data(), 128, 1, c.data(), 128, 1, 10, 128, 64, 1, 0}, 1));
  // Long rows, but B's rows are strided (batch-first operands): BLIS.
  CHECK_FALSE(gg::detail::skinny::run<float>(G{a.data(), 64, 1, b.data(), 1, 64, c.data(), 1000, 1, 10, 1000, 64, 1, 0}, 1));
}
