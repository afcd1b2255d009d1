// Mpi::sum and Mpi::mean under mpirun (tests/test_distributed.cpp runs it with 2 and 3 ranks):
// every rank must end with the same bits; through the shared-memory window (ranks on one machine)
// they must be exactly the rank-order formula of docs/distributed.md,
//   acc = m_0 x_0, then acc = fma(m_q, x_q, acc) for q = 1, 2, ...   (m_q = 1 for a sum)
// with every line of values (64 bytes) that holds only zeros read as +0s, whoever's it is. The
// values have such lines, -0s in them and in lines with nonzeros, a NaN, and counts that end
// inside a line. Prints the first difference and exits 1; exits 0 when every case holds.
#include <gradgraph/distributed.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

// Rank q's values for case `seed`: lines of zeros (every third), lines of zeros and -0s (every
// fifth), -0s among nonzeros, one NaN; with `weighted`, last, the weight m_q.
template <typename T>
std::vector<T> values_of(int q, std::int64_t count, bool weighted, std::uint32_t seed) {
  constexpr std::int64_t lanes = 64 / sizeof(T);
  std::vector<T> x(static_cast<std::size_t>(count));
  std::uint32_t state = seed * 2654435761u + static_cast<std::uint32_t>(q) * 40503u + 1u;
  const std::int64_t values = weighted ? count - 1 : count;
  for (std::int64_t i = 0; i < values; ++i) {
    state = state * 1664525u + 1013904223u;
    const std::int64_t line = i / lanes;
    T v = static_cast<T>(static_cast<int>(state >> 8) % 2001 - 1000) / T(64);  // exact, and sums of them too
    if ((line + q) % 3 == 0) v = 0;
    if ((line + q) % 5 == 0) v = (state >> 3) & 1 ? T(-0.0) : T(0);
    if ((state >> 5) % 7 == 0) v = T(-0.0);
    x[static_cast<std::size_t>(i)] = v;
  }
  if (values > 10 && q == 1) x[10] = std::numeric_limits<T>::quiet_NaN();
  if (weighted) x[static_cast<std::size_t>(count - 1)] = static_cast<T>(31 + 2 * q);
  return x;
}

template <typename T>
std::vector<T> expected(const std::vector<std::vector<T>>& x, std::int64_t count, bool weighted) {
  constexpr std::int64_t lanes = 64 / sizeof(T);
  const std::int64_t values = weighted ? count - 1 : count;
  std::vector<std::vector<T>> read = x;  // as every rank reads them: lines of zeros are +0s
  for (std::vector<T>& r : read)
    for (std::int64_t first = 0; first < values; first += lanes) {
      const std::int64_t end = std::min(values, first + lanes);
      bool zeros = true;
      for (std::int64_t i = first; i < end; ++i) zeros = zeros && r[static_cast<std::size_t>(i)] == T(0);
      for (std::int64_t i = first; zeros && i < end; ++i) r[static_cast<std::size_t>(i)] = T(0);
    }
  T total = 0;
  for (std::size_t q = 0; weighted && q < x.size(); ++q) total += x[q][static_cast<std::size_t>(count - 1)];
  const T inverse = weighted ? T(1) / total : T(1);
  std::vector<T> out(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < values; ++i) {
    auto m = [&](std::size_t q) { return weighted ? x[q][static_cast<std::size_t>(count - 1)] * inverse : T(1); };
    T acc = m(0) * read[0][static_cast<std::size_t>(i)];
    for (std::size_t q = 1; q < x.size(); ++q) acc = std::fma(m(q), read[q][static_cast<std::size_t>(i)], acc);
    out[static_cast<std::size_t>(i)] = acc;
  }
  if (weighted) out[static_cast<std::size_t>(count - 1)] = total;
  return out;
}

template <typename T>
bool check(gg::train::Mpi& mpi, bool shared, std::int64_t count, bool weighted, std::uint32_t seed) {
  const int n = mpi.size(), me = mpi.rank();
  std::vector<std::vector<T>> x;
  for (int q = 0; q < n; ++q) x.push_back(values_of<T>(q, count, weighted, seed));
  std::vector<T> data = x[static_cast<std::size_t>(me)];
  if (weighted)
    mpi.mean(data.data(), count, gg::dtype_of<T>());
  else
    mpi.sum(data.data(), count, gg::dtype_of<T>());
  const std::string what = std::string(sizeof(T) == 4 ? "float32" : "float64") + (weighted ? " mean" : " sum") + " of " +
                           std::to_string(count) + " (case " + std::to_string(seed) + ")";
  // The same bits on every rank (check_same throws CollectiveError on all ranks alike).
  mpi.check_same({{what, gg::train::hex(gg::train::fingerprint(data.data(), data.size() * sizeof(T)))}});
  const std::vector<T> want = expected(x, count, weighted);
  for (std::int64_t i = 0; i < count; ++i) {
    const T a = data[static_cast<std::size_t>(i)], b = want[static_cast<std::size_t>(i)];
    // Through the window: the formula's bits. By messages the order differs: close, NaN alike.
    const bool same = shared ? std::memcmp(&a, &b, sizeof(T)) == 0
                             : (std::isnan(a) && std::isnan(b)) || std::fabs(a - b) <= T(1e-5) * (T(1) + std::fabs(b));
    if (same) continue;
    std::fprintf(stderr, "mpi-sum-check: rank %d: %s: element %lld is %.9g, not %.9g\n", me, what.c_str(),
                 static_cast<long long>(i), static_cast<double>(a), static_cast<double>(b));
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  gg::train::Mpi mpi(argc, argv);
  const char* env = std::getenv("GRADGRAPH_MPI_SHARED");
  const bool shared = !(env != nullptr && std::string(env) == "0");
  int cases = 0;
  try {
    // Counts that end inside a line and past a word of line bits; the MLP's buffer (50893); one
    // count after another in one window (a larger one remakes it), each a few times (the
    // buffers in turn).
    for (const std::int64_t count : {1, 2, 15, 16, 17, 100, 1031, 5000, 50893})
      for (std::uint32_t seed = 0; seed < 3; ++seed)
        for (const bool weighted : {false, true}) {
          if (weighted && count < 2) continue;
          const bool ok = check<float>(mpi, shared, count, weighted, seed) && check<double>(mpi, shared, count, weighted, seed);
          if (!ok) mpi.abort(1);
          cases += 2;
        }
  } catch (const gg::train::CollectiveError& e) {
    if (mpi.rank() == 0) std::fprintf(stderr, "mpi-sum-check: %s\n", e.what());
    return 1;
  }
  if (mpi.rank() == 0) std::printf("mpi-sum-check: %d cases on %d ranks (%s): every rank the same bits\n", cases, mpi.size(),
                                   shared ? "shared window, the formula's bits" : "messages");
  return 0;
}
