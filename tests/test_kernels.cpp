// Kernel-level numerics that the op-level gradient checks cannot see.
#include "../lib/ops/softmax.hpp"
#include "support.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {
std::int32_t ordered(float f) {
  std::int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i < 0 ? std::numeric_limits<std::int32_t>::min() - i : i;
}
}  // namespace

TEST_CASE("the vectorisable float exp is within 2 ulp of the correctly rounded exp on softmax's range") {
  std::int64_t worst = 0;
  float worst_x = 0;
  for (float x = -87.0f; x <= 0.0f; x += 0.000731f) {
    const float want = static_cast<float>(std::exp(static_cast<double>(x)));
    const std::int64_t ulps = std::llabs(static_cast<long long>(ordered(gg::detail::exp_vec(x))) - ordered(want));
    if (ulps > worst) worst = ulps, worst_x = x;
  }
  INFO("worst at x = " << worst_x);
  CHECK(worst <= 2);
  CHECK(gg::detail::exp_vec(0.0f) == 1.0f);
  CHECK(std::fabs(gg::detail::exp_vec(10.0f) / std::exp(10.0f) - 1.0f) < 3e-7f);
}

TEST_CASE("the vectorisable float exp gives 0 far below -87, and keeps NaN") {
  CHECK(gg::detail::exp_vec(-100.0f) == 0.0f);
  CHECK(gg::detail::exp_vec(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(std::isnan(gg::detail::exp_vec(std::numeric_limits<float>::quiet_NaN())));
}

// ---- float64 exp, and the vectorised loops of the softmax family -------------------------------

namespace {
std::int64_t ordered(double d) {
  std::int64_t i;
  std::memcpy(&i, &d, sizeof i);
  return i < 0 ? std::numeric_limits<std::int64_t>::min() - i : i;
}
}  // namespace

TEST_CASE("the vectorisable double exp is within 1 ulp of the correctly rounded exp, subnormal results included") {
  // The reference is expl (64-bit mantissa) rounded to double; exp_vec is within 0.88 ulp of the
  // true value (1 ulp for subnormal results), so at most 1 ulp from the rounded reference.
  std::int64_t worst = 0;
  double worst_x = 0;
  long samples = 0;
  for (double x = -745.13; x <= 709.78; x += 0.0007391) {
    const double want = static_cast<double>(expl(static_cast<long double>(x)));
    const std::int64_t ulps = std::llabs(static_cast<long long>(ordered(gg::detail::exp_vec(x)) - ordered(want)));
    if (ulps > worst) worst = ulps, worst_x = x;
    ++samples;
  }
  INFO("worst at x = " << worst_x << " over " << samples << " points");
  CHECK(worst <= 1);
  for (double x : {0.0, -1e-300, 1e-300, -0.5 * std::log(2.0), 0.5 * std::log(2.0), -708.4, -740.0, 709.0, 709.7})
    CHECK(std::llabs(static_cast<long long>(ordered(gg::detail::exp_vec(x)) -
                                            ordered(static_cast<double>(expl(static_cast<long double>(x)))))) <= 1);
  CHECK(gg::detail::exp_vec(0.0) == 1.0);
}

TEST_CASE("the vectorisable double exp: 0 far below, +inf far above, NaN stays NaN") {
  const double inf = std::numeric_limits<double>::infinity();
  CHECK(gg::detail::exp_vec(-746.0) == 0.0);
  CHECK(gg::detail::exp_vec(-1e6) == 0.0);
  CHECK(gg::detail::exp_vec(-inf) == 0.0);
  CHECK(gg::detail::exp_vec(709.79) == inf);
  CHECK(gg::detail::exp_vec(1e6) == inf);
  CHECK(gg::detail::exp_vec(inf) == inf);
  CHECK(std::isnan(gg::detail::exp_vec(std::numeric_limits<double>::quiet_NaN())));
  CHECK(gg::detail::exp_vec(-745.0) == std::exp(-745.0));  // the smallest subnormal
}

TEST_CASE("the vectorisable double log is within 1 ulp of the correctly rounded log, and exact at the special values") {
  std::int64_t worst = 0;
  double worst_x = 0;
  auto check = [&](double x) {
    const double want = static_cast<double>(logl(static_cast<long double>(x)));
    const std::int64_t ulps = std::llabs(static_cast<long long>(ordered(gg::detail::log_vec(x)) - ordered(want)));
    if (ulps > worst) worst = ulps, worst_x = x;
  };
  for (double x = 0.5; x <= 70.0; x += 0.0001237) check(x);                  // a slice's sum of exps: [1, classes]
  for (double e = -1074; e <= 1023; e += 0.01731) check(std::exp2(e));         // every binade, subnormals included
  for (double x = 0.99; x <= 1.01; x += 1.3e-7) check(x);                      // around 1, where log is small
  INFO("worst at x = " << worst_x);
  CHECK(worst <= 1);
  const double inf = std::numeric_limits<double>::infinity();
  CHECK(gg::detail::log_vec(1.0) == 0.0);
  CHECK(gg::detail::log_vec(0.0) == -inf);
  CHECK(gg::detail::log_vec(-0.0) == -inf);
  CHECK(gg::detail::log_vec(inf) == inf);
  CHECK(std::isnan(gg::detail::log_vec(-1.0)));
  CHECK(std::isnan(gg::detail::log_vec(-inf)));
  CHECK(std::isnan(gg::detail::log_vec(std::numeric_limits<double>::quiet_NaN())));
  CHECK(gg::detail::log_vec(std::numeric_limits<double>::denorm_min()) == std::log(std::numeric_limits<double>::denorm_min()));
}

// exp_sums over a block of 64 columns runs its exp loop vectorised; over one column at a time it
// runs the same loop's scalar remainder. Both must give the same bits, or the fused and the
// separate kernels (and the rows and columns layouts) could disagree.
TEMPLATE_TEST_CASE("exp_sums gives the same bits vectorised over a block of columns as one column at a time", "", float,
                   double) {
  using T = TestType;
  constexpr std::int64_t n = 10, w = gg::detail::kSliceBlock;
  std::vector<T> x(n * w), e_block(n * w), e_one(n * w);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<T>(std::sin(0.37 * static_cast<double>(i)) * 30.0);
  x[5] = -std::numeric_limits<T>::infinity();  // an impossible class in column 5
  T mx_block[w], se_block[w];
  gg::detail::exp_sums<T>(x.data(), e_block.data(), n, w, w, mx_block, se_block);
  for (std::int64_t j = 0; j < w; ++j) {
    T mx, se;
    gg::detail::exp_sums<T>(x.data() + j, e_one.data() + j, n, w, 1, &mx, &se);
    CHECK(mx == mx_block[j]);
    CHECK(se == se_block[j]);
  }
  CHECK(e_one == e_block);
  CHECK(e_block[5] == T(0));
}

// Short rows ({batch, classes}) are copied into column blocks, so their softmax is computed by
// the same loops in the same order as the columns layout: the same bits, transposed.
TEST_CASE("softmax, log_softmax and the fused loss give the same bits in the rows and the columns layout", "[softmax]") {
  const gg::DType dt = GENERATE(gg::f32, gg::f64);
  const std::int64_t classes = GENERATE(10, 64), m = 77;  // 77: two full row blocks and a partial one
  INFO(gg::dtype_name(dt) << ", " << classes << " classes");
  gg::Graph g(dt);
  gg::Value zc = g.input("zc", {classes, gg::dyn}), zr = g.input("zr", {gg::dyn, classes});
  gg::Value yc = g.input("yc", {classes, gg::dyn}), yr = g.input("yr", {gg::dyn, classes});
  const gg::Value sc = gg::softmax(zc, 0), sr = gg::softmax(zr, 1);
  const gg::Value lc = gg::log_softmax(zc, 0), lr = gg::log_softmax(zr, 1);
  const gg::Value Lc = gg::softmax_cross_entropy(zc, yc, 0), Lr = gg::softmax_cross_entropy(zr, yr, 1);
  const gg::Value dc = gg::gradients(Lc, {zc})[0], dr = gg::gradients(Lr, {zr})[0];
  gg::CompileOptions o;
  o.threads = 2;
  gg::Program p(g, {sc, sr, lc, lr, Lc, Lr, dc, dr}, o);
  gg::Tensor z = gg::test::random_tensor(dt, {classes, m}, -20, 20, 5), y = gg::test::one_hot(dt, classes, m, 6);
  z.set({3, 4}, -std::numeric_limits<double>::infinity());
  gg::Tensor zt(dt, {m, classes}), yt(dt, {m, classes});
  for (std::int64_t k = 0; k < classes; ++k)
    for (std::int64_t j = 0; j < m; ++j) zt.set({j, k}, z.at({k, j})), yt.set({j, k}, y.at({k, j}));
  p.run({{zc, z}, {zr, zt}, {yc, y}, {yr, yt}});
  auto transposed = [&](const gg::TensorView& v) {
    std::vector<double> out;
    for (std::int64_t k = 0; k < classes; ++k)
      for (std::int64_t j = 0; j < m; ++j) out.push_back(v.at({j, k}));
    return out;
  };
  CHECK(gg::test::values(p.get(sc)) == transposed(p.get(sr)));
  CHECK(gg::test::values(p.get(lc)) == transposed(p.get(lr)));
  CHECK(gg::test::values(p.get(dc)) == transposed(p.get(dr)));
  // The loss adds its per-example terms in another order: equal to rounding.
  CHECK_THAT(p.scalar(Lr), Catch::Matchers::WithinRel(p.scalar(Lc), dt == gg::f32 ? 1e-6 : 1e-14));
}

// Rows longer than kMaxRowSlice are processed one at a time, vectorised along the row.
TEST_CASE("softmax and log_softmax of long rows match a long double reference", "[softmax]") {
  const gg::DType dt = GENERATE(gg::f32, gg::f64);
  const std::int64_t rows = 5, n = 1000;
  INFO(gg::dtype_name(dt));
  gg::Graph g(dt);
  gg::Value x = g.input("x", {rows, n});
  const gg::Value s = gg::softmax(x, 1), l = gg::log_softmax(x, -1);
  gg::Program p(g, {s, l});
  const gg::Tensor xv = gg::test::random_tensor(dt, {rows, n}, -30, 30, 7);
  p.run({{x, xv}});
  double worst_s = 0, worst_l = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    long double mx = -INFINITY, sum = 0;
    for (std::int64_t k = 0; k < n; ++k) mx = std::max<long double>(mx, xv.at({r, k}));
    for (std::int64_t k = 0; k < n; ++k) sum += expl(xv.at({r, k}) - mx);
    for (std::int64_t k = 0; k < n; ++k) {
      const long double want_s = expl(xv.at({r, k}) - mx) / sum, want_l = (xv.at({r, k}) - mx) - logl(sum);
      worst_s = std::max(worst_s, static_cast<double>(fabsl(p.get(s).at({r, k}) - want_s) / want_s));
      worst_l = std::max(worst_l, static_cast<double>(fabsl(p.get(l).at({r, k}) - want_l) / std::max(1.0L, fabsl(want_l))));
    }
  }
  const double tol = dt == gg::f32 ? 1e-5 : 1e-13;  // a sum of 1000 terms in T
  CHECK(worst_s < tol);
  CHECK(worst_l < tol);
}
