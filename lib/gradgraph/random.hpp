// Seeded random numbers with results that are identical on every platform and compiler.
//
// Two kinds:
//   numpy     bit-exact with NumPy's legacy global generator (np.random.seed(s) followed by
//             np.random.rand / randn / shuffle), so a network initialised here starts from exactly the
//             weights a reference NumPy script would have drawn. MT19937, seeds 0 .. 2^32-1.
//   standard  std::mt19937_64 with the same double and normal constructions; any 64-bit seed.
//
// The standard library's distributions are never used: their algorithms are unspecified and differ
// between libstdc++, libc++ and MSVC. Every transform is written out here instead.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace gg {

enum class RngKind { numpy, standard };

class Generator {
 public:
  // Throws std::invalid_argument for a numpy seed above 2^32-1 (NumPy rejects those too).
  Generator(RngKind kind, std::uint64_t seed);

  // Uniform in [0, 1) with 53 random bits (NumPy's random_sample).
  double uniform();
  // Standard normal by the polar Box-Muller method; every other call returns a cached value
  // (NumPy's legacy gauss, including when the cache survives interleaved uniform() calls).
  double normal();
  // Uniform integer in [0, n), unbiased by masked rejection; n must be > 0. In numpy mode this is
  // NumPy's legacy random_interval(n - 1).
  std::uint64_t below(std::uint64_t n);
  // Fisher-Yates from the back using below(); in numpy mode it matches np.random.shuffle.
  void shuffle(std::vector<std::int64_t>& v);

  RngKind kind() const { return kind_; }
  // The whole state as text (the engine's words and the cached normal), for checkpoints:
  // set_state(state()) continues the stream exactly. set_state throws std::invalid_argument for
  // text that is not a state of this kind of generator.
  std::string state() const;
  void set_state(const std::string& text);

 private:
  std::uint32_t next32();
  std::uint64_t next64();

  RngKind kind_;
  std::mt19937 mt32_;     // numpy
  std::mt19937_64 mt64_;  // standard
  bool has_gauss_ = false;
  double gauss_ = 0.0;
};

}  // namespace gg
