#include "program_ir.hpp"

#include <algorithm>
#include <numeric>

namespace gg::detail {

std::size_t plan_offsets(const std::vector<BufferRequest>& reqs, std::vector<std::size_t>& offsets) {
  const std::size_t n = reqs.size();
  offsets.assign(n, 0);
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  // Largest first; ties by earlier start, so the plan is deterministic.
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (reqs[a].bytes != reqs[b].bytes) return reqs[a].bytes > reqs[b].bytes;
    return reqs[a].first < reqs[b].first;
  });
  auto aligned = [](std::size_t b) { return (b + 63) / 64 * 64; };
  std::vector<std::size_t> placed;
  std::size_t total = 0;
  std::vector<std::pair<std::size_t, std::size_t>> busy;  // [begin, end) of live-overlapping placed buffers
  for (std::size_t idx : order) {
    const BufferRequest& r = reqs[idx];
    const std::size_t size = aligned(r.bytes);
    busy.clear();
    for (std::size_t p : placed) {
      const BufferRequest& q = reqs[p];
      if (q.first <= r.last && r.first <= q.last) busy.emplace_back(offsets[p], offsets[p] + aligned(q.bytes));
    }
    std::sort(busy.begin(), busy.end());
    std::size_t at = 0;
    for (const auto& [b, e] : busy) {
      if (at + size <= b) break;
      at = std::max(at, e);
    }
    offsets[idx] = at;
    total = std::max(total, at + size);
    placed.push_back(idx);
  }
  return total;
}

}  // namespace gg::detail
