#include <gradgraph/random.hpp>

#include <cmath>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace gg {

Generator::Generator(RngKind kind, std::uint64_t seed) : kind_(kind) {
  if (kind == RngKind::numpy) {
    if (seed > 0xffffffffu)
      throw std::invalid_argument("Generator: numpy seed " + std::to_string(seed) +
                                  " out of range; NumPy's legacy seed must be between 0 and 2^32-1");
    // std::mt19937's seeding is init_genrand, which is what np.random.seed(int) runs.
    mt32_.seed(static_cast<std::uint32_t>(seed));
  } else {
    mt64_.seed(seed);
  }
}

std::uint32_t Generator::next32() {
  if (kind_ == RngKind::numpy) return static_cast<std::uint32_t>(mt32_());
  return static_cast<std::uint32_t>(mt64_() >> 32);
}

std::uint64_t Generator::next64() {
  if (kind_ == RngKind::standard) return mt64_();
  std::uint64_t hi = next32();  // high word first, as NumPy's mt19937_next64 does
  return hi << 32 | next32();
}

double Generator::uniform() {
  if (kind_ == RngKind::numpy) {
    // NumPy's random_sample: 27 + 26 bits from two 32-bit outputs. Every step is exact in double.
    std::uint32_t a = next32() >> 5, b = next32() >> 6;
    return (a * 67108864.0 + b) / 9007199254740992.0;
  }
  return static_cast<double>(mt64_() >> 11) / 9007199254740992.0;
}

double Generator::normal() {
  if (has_gauss_) {
    has_gauss_ = false;
    return gauss_;
  }
  double x1, x2, r2;
  do {
    x1 = 2.0 * uniform() - 1.0;
    x2 = 2.0 * uniform() - 1.0;
    // Each square is rounded to double before the add. Under -march=native the compiler may
    // otherwise fuse x1*x1 + x2*x2 into an FMA, which changes r2 in the last bit and breaks
    // bit-exactness with NumPy (built without FMA); GCC 12 -O2 -march=native does fuse it, and the
    // reference tests then fail. volatile is the portable way to forbid it. (Fusing 2.0*u - 1.0 is
    // harmless: 2.0*u is exact.)
    volatile double s1 = x1 * x1;
    volatile double s2 = x2 * x2;
    r2 = s1 + s2;
  } while (r2 >= 1.0 || r2 == 0.0);
  double f = std::sqrt(-2.0 * std::log(r2) / r2);
  gauss_ = f * x1;
  has_gauss_ = true;
  return f * x2;
}

std::uint64_t Generator::below(std::uint64_t n) {
  if (n == 0) throw std::invalid_argument("Generator::below: n must be positive");
  // NumPy's random_interval: draw under the smallest all-ones mask covering n-1 and reject values
  // past it. At most half the draws are rejected, and no modulo bias.
  const std::uint64_t max = n - 1;
  if (max == 0) return 0;
  std::uint64_t mask = max;
  mask |= mask >> 1;
  mask |= mask >> 2;
  mask |= mask >> 4;
  mask |= mask >> 8;
  mask |= mask >> 16;
  mask |= mask >> 32;
  std::uint64_t v;
  if (kind_ == RngKind::numpy && max <= 0xffffffffu) {
    do v = next32() & mask;
    while (v > max);
  } else {
    do v = next64() & mask;
    while (v > max);
  }
  return v;
}

void Generator::shuffle(std::vector<std::int64_t>& v) {
  for (std::size_t i = v.size(); i > 1; --i) {
    std::size_t j = static_cast<std::size_t>(below(i));
    std::swap(v[i - 1], v[j]);
  }
}

std::string Generator::state() const {
  std::ostringstream os;
  os << (kind_ == RngKind::numpy ? "numpy " : "standard ");
  if (kind_ == RngKind::numpy)
    os << mt32_;
  else
    os << mt64_;
  std::uint64_t bits = 0;
  std::memcpy(&bits, &gauss_, sizeof bits);  // the cached normal, exactly
  os << ' ' << (has_gauss_ ? 1 : 0) << ' ' << bits;
  return os.str();
}

void Generator::set_state(const std::string& text) {
  std::istringstream is(text);
  std::string kind;
  is >> kind;
  if (kind != (kind_ == RngKind::numpy ? "numpy" : "standard"))
    throw std::invalid_argument("Generator::set_state: not a state of a " +
                                std::string(kind_ == RngKind::numpy ? "numpy" : "standard") + " generator");
  std::mt19937 m32 = mt32_;
  std::mt19937_64 m64 = mt64_;
  if (kind_ == RngKind::numpy)
    is >> m32;
  else
    is >> m64;
  int has = 0;
  std::uint64_t bits = 0;
  is >> has >> bits;
  if (!is || (has != 0 && has != 1)) throw std::invalid_argument("Generator::set_state: malformed state text");
  mt32_ = m32;
  mt64_ = m64;
  has_gauss_ = has == 1;
  std::memcpy(&gauss_, &bits, sizeof bits);
}

}  // namespace gg
