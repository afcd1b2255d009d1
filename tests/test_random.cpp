#include <catch2/catch.hpp>

#include <gradgraph/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <vector>

using gg::Generator;
using gg::RngKind;

// Reference values were produced by NumPy 1.24 (legacy global generator) and printed with repr(),
// which round-trips doubles exactly; hence exact equality throughout.

TEST_CASE("numpy generator reproduces np.random.seed(33); np.random.randn(4) bit for bit") {
  Generator g(RngKind::numpy, 33);
  CHECK(g.normal() == -0.3188535051081303);
  CHECK(g.normal() == -1.6029805557604186);
  CHECK(g.normal() == -1.5352178709022035);
  CHECK(g.normal() == -0.5704008948248712);
}

TEST_CASE("numpy generator reproduces He-scaled W1 = randn(64, 784) * sqrt(2/784)") {
  // Note: W1[0,0] is -0.016104533976218458; the 16-digit printout -0.01610453397621846 is one ulp away.
  Generator g(RngKind::numpy, 33);
  const double scale = std::sqrt(2.0 / 784);
  CHECK(g.normal() * scale == -0.016104533976218458);
  CHECK(g.normal() * scale == -0.08096274436345519);
  CHECK(g.normal() * scale == -0.07754021193669441);
}

TEST_CASE("numpy generator stays bit-exact deep into the stream and across consecutive randn calls") {
  // np.random.seed(33); a = randn(64*784); b = randn(10, 64)
  Generator g(RngKind::numpy, 33);
  std::vector<double> a(64 * 784);
  for (double& x : a) x = g.normal();
  CHECK(a[50173] == -0.3164978576695244);
  CHECK(a[50174] == -0.9882323414713251);
  CHECK(a[50175] == -0.677553588411391);
  std::vector<double> b(10 * 64);
  for (double& x : b) x = g.normal();
  CHECK(b[0] == 2.596787940756143);
  CHECK(b[1] == 0.3085176348487047);
  CHECK(b[639] == -0.017119721894095975);
}

TEST_CASE("numpy generator reproduces the scaled W1 and W2 of a 784-64-10 network") {
  // np.random.seed(33); W1 = randn(64,784)*sqrt(2./784); W2 = randn(10,64)*sqrt(2./64)
  Generator g(RngKind::numpy, 33);
  double w1_last = 0;
  for (int i = 0; i < 64 * 784; ++i) w1_last = g.normal() * std::sqrt(2.0 / 784);
  CHECK(w1_last == -0.0342216240702124);
  std::vector<double> w2(10 * 64);
  for (double& x : w2) x = g.normal() * std::sqrt(2.0 / 64);
  CHECK(w2[0] == 0.4590515905530299);
  CHECK(w2[639] == -0.0030263678608357675);
}

TEST_CASE("numpy generator's uniform matches np.random.rand") {
  Generator g(RngKind::numpy, 0);
  CHECK(g.uniform() == 0.5488135039273248);
  CHECK(g.uniform() == 0.7151893663724195);
  CHECK(g.uniform() == 0.6027633760716439);
}

TEST_CASE("numpy generator keeps the cached gaussian across interleaved uniform draws, like NumPy") {
  // np.random.seed(5); randn(), rand(), randn()
  Generator g(RngKind::numpy, 5);
  CHECK(g.normal() == 0.44122748688504143);
  CHECK(g.uniform() == 0.20671915533942642);
  CHECK(g.normal() == -0.33087015189408764);
}

TEST_CASE("numpy generator accepts the largest 32-bit seed and rejects anything larger") {
  Generator g(RngKind::numpy, 4294967295u);
  CHECK(g.normal() == 0.6484086742306527);
  CHECK(g.normal() == 0.6693235306338161);
  CHECK_THROWS_AS(Generator(RngKind::numpy, 4294967296u), std::invalid_argument);
  CHECK_NOTHROW(Generator(RngKind::standard, 4294967296u));
}

TEST_CASE("numpy generator's shuffle matches np.random.shuffle and np.random.permutation") {
  {
    Generator g(RngKind::numpy, 7);
    std::vector<std::int64_t> v(10);
    std::iota(v.begin(), v.end(), 0);
    g.shuffle(v);
    CHECK(v == std::vector<std::int64_t>{8, 5, 0, 2, 1, 9, 7, 3, 6, 4});
  }
  {
    Generator g(RngKind::numpy, 7);
    std::vector<std::int64_t> v(100);
    std::iota(v.begin(), v.end(), 0);
    g.shuffle(v);
    CHECK(std::vector<std::int64_t>(v.begin(), v.begin() + 10) ==
          std::vector<std::int64_t>{37, 26, 78, 91, 49, 15, 93, 71, 86, 22});
  }
}

TEST_CASE("standard generator is deterministic for a seed and differs between seeds") {
  Generator a(RngKind::standard, 42), b(RngKind::standard, 42), c(RngKind::standard, 43);
  bool differs = false;
  for (int i = 0; i < 1000; ++i) {
    double x = a.normal(), y = b.normal(), z = c.normal();
    CHECK(x == y);
    differs = differs || x != z;
    CHECK(a.uniform() == b.uniform());
  }
  CHECK(differs);
  CHECK(a.kind() == RngKind::standard);
}

TEST_CASE("standard generator's uniform is the top 53 bits of one mt19937_64 draw") {
  Generator g(RngKind::standard, 123);
  std::mt19937_64 ref(123);
  for (int i = 0; i < 100; ++i) CHECK(g.uniform() == static_cast<double>(ref() >> 11) / 9007199254740992.0);
}

TEST_CASE("uniform stays in [0, 1)") {
  for (RngKind k : {RngKind::numpy, RngKind::standard}) {
    Generator g(k, 1);
    for (int i = 0; i < 100000; ++i) {
      double u = g.uniform();
      REQUIRE(u >= 0.0);
      REQUIRE(u < 1.0);
    }
  }
}

TEST_CASE("below(n) stays in [0, n) and reaches every value") {
  for (RngKind k : {RngKind::numpy, RngKind::standard}) {
    Generator g(k, 9);
    for (std::uint64_t n : {1u, 2u, 3u, 7u, 10u, 1000u}) {
      std::vector<int> seen(n, 0);
      for (int i = 0; i < 20000; ++i) {
        std::uint64_t x = g.below(n);
        REQUIRE(x < n);
        ++seen[x];
      }
      CHECK(std::count(seen.begin(), seen.end(), 0) == 0);
    }
    const std::uint64_t big = (std::uint64_t{1} << 40) + 3;  // exercises the 64-bit draw path
    for (int i = 0; i < 1000; ++i) REQUIRE(g.below(big) < big);
    CHECK_THROWS_AS(g.below(0), std::invalid_argument);
  }
}

TEST_CASE("below(n) is unbiased: each of 3 values gets about a third of the draws") {
  // A modulo reduction of 2-bit draws would give 0 twice the weight; masked rejection gives 1/3 each.
  Generator g(RngKind::standard, 5);
  int count[3] = {};
  const int n = 300000;
  for (int i = 0; i < n; ++i) ++count[g.below(3)];
  for (int c : count) CHECK(std::abs(c - n / 3) < 1500);  // ~5.8 standard deviations
}

TEST_CASE("shuffle produces a permutation") {
  for (RngKind k : {RngKind::numpy, RngKind::standard}) {
    Generator g(k, 11);
    std::vector<std::int64_t> v(1000);
    std::iota(v.begin(), v.end(), 0);
    g.shuffle(v);
    std::vector<std::int64_t> sorted = v;
    std::sort(sorted.begin(), sorted.end());
    std::vector<std::int64_t> expected(1000);
    std::iota(expected.begin(), expected.end(), 0);
    CHECK(sorted == expected);
    CHECK(v != expected);  // the chance of the identity is 1/1000!
    std::vector<std::int64_t> empty, one{5};
    g.shuffle(empty);
    g.shuffle(one);
    CHECK(one == std::vector<std::int64_t>{5});
  }
}

TEST_CASE("normal() has mean about 0 and variance about 1") {
  for (RngKind k : {RngKind::numpy, RngKind::standard}) {
    Generator g(k, 2024);
    const int n = 100000;
    double sum = 0, sum2 = 0;
    for (int i = 0; i < n; ++i) {
      double x = g.normal();
      sum += x;
      sum2 += x * x;
    }
    double mean = sum / n, var = sum2 / n - mean * mean;
    // Standard errors: 0.0032 for the mean, 0.0045 for the variance; these bounds are ~6 of them.
    CHECK(std::abs(mean) < 0.02);
    CHECK(std::abs(var - 1.0) < 0.03);
  }
}

TEST_CASE("a generator's saved state continues its stream exactly, normals' cache included", "[random]") {
  for (gg::RngKind kind : {gg::RngKind::numpy, gg::RngKind::standard}) {
    gg::Generator a(kind, 7);
    for (int i = 0; i < 5; ++i) a.uniform();
    a.normal();  // leaves the second normal cached
    const std::string saved = a.state();
    std::vector<double> expect;
    for (int i = 0; i < 6; ++i) expect.push_back(i % 2 ? a.uniform() : a.normal());
    gg::Generator b(kind, 99);
    b.set_state(saved);
    std::vector<double> got;
    for (int i = 0; i < 6; ++i) got.push_back(i % 2 ? b.uniform() : b.normal());
    CHECK(got == expect);
    gg::Generator other(kind == gg::RngKind::numpy ? gg::RngKind::standard : gg::RngKind::numpy, 1);
    CHECK_THROWS_AS(other.set_state(saved), std::invalid_argument);
    CHECK_THROWS_AS(b.set_state(saved.substr(0, saved.size() / 2)), std::invalid_argument);
  }
}
