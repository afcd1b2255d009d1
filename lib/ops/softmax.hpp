// Internal: slice iteration and the softmax block kernel shared by softmax, log_softmax and the
// fused softmax-cross-entropy.
#pragma once

#include "op.hpp"

namespace gg::detail {

// Slices along `axis` are processed kSliceBlock at a time: for the notebook's {classes, batch}
// layout the slices are columns, and a block of adjacent columns makes every inner loop
// contiguous and vectorisable; per-column max and sum live on the stack (no allocation).
constexpr std::int64_t kSliceBlock = 64;

// Calls f(offset, n, stride, width) for blocks of `width` adjacent slices of length n.
template <typename T, typename F>
void for_each_slice(const TensorView& x, int axis, int threads, F f) {
  const Split3 s = split_at(x.shape, axis);
  const std::int64_t nblocks = (s.inner + kSliceBlock - 1) / kSliceBlock;
  parallel_for(s.outer * nblocks, threads, s.n * kSliceBlock * 8, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t t = lo; t < hi; ++t) {
      const std::int64_t o = t / nblocks, i0 = (t % nblocks) * kSliceBlock;
      const std::int64_t i1 = std::min(s.inner, i0 + kSliceBlock);
      f(o * s.n * s.inner + i0, s.n, s.inner, i1 - i0);
    }
  });
}

// y = softmax (or log_softmax) of `width` adjacent slices of length n at distance `stride`.
template <typename T>
void softmax_block(const T* x, T* y, std::int64_t n, std::int64_t stride, std::int64_t w, bool log_out);

}  // namespace gg::detail
