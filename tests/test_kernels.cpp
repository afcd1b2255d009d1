// Kernel-level numerics that the op-level gradient checks cannot see.
#include "../lib/ops/softmax.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

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
