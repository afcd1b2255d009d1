// Data-parallel training over MPI (lib/gradgraph/distributed.hpp). Boost.MPI owns MPI's lifetime
// and gathers the ranks' facts; the all-reduce is a hand-written ring over MPI point-to-point
// messages rather than MPI_Allreduce, whose summation order depends on the algorithm Open MPI
// picks (by message size and rank count): a fixed ring order makes every rank's result, and every
// run's, the same bits.
#include <gradgraph/distributed.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <new>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__SSE2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if GG_HAVE_MPI
#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/utility.hpp>
#include <boost/serialization/vector.hpp>
#include <mpi.h>
#endif

namespace gg::train {

std::uint64_t fingerprint(const void* data, std::size_t bytes, std::uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint64_t h = 0xcbf29ce484222325ull ^ seed;
  std::size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 29;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

std::string hex(std::uint64_t v) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

#if GG_HAVE_MPI

bool mpi_available() { return true; }

constexpr std::size_t kLine = 64;  // the shared segments' first line: their Header

// The first line of each rank's segment. `arrivals` is its barrier counter; before arriving, the
// rank also writes there its recent cost of each way of copying into the window (ordinary,
// streamed), in the slot of that barrier's parity, so that every rank reads the same figures
// after the barrier and they all pick the same way. (A rank rewrites that slot before the barrier
// after next, which it reaches only once every rank has arrived at the next: all have read it.)
struct Header {
  std::atomic<std::uint64_t> arrivals{0};
  std::atomic<double> seconds[2][2] = {{-1.0, -1.0}, {-1.0, -1.0}};  // [parity][way]
  std::atomic<std::uint64_t> ping{0};  // rank 0's: passed between ranks 0 and 1 (core_round_trip)
};
static_assert(sizeof(Header) <= kLine && std::atomic<double>::is_always_lock_free);

struct Mpi::Impl {
  boost::mpi::environment env;
  boost::mpi::communicator world;
  std::vector<unsigned char> scratch;  // one chunk received, reused by every sum
  // When every rank runs on this machine: a shared-memory window with one segment per rank
  // (MPI-3), allocated by the first sum and reused. Off with GRADGRAPH_MPI_SHARED=0.
  bool one_node = false;
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Win win = MPI_WIN_NULL;
  std::size_t win_bytes = 0;
  std::vector<unsigned char*> segment;  // each rank's segment, as this process sees it
  std::uint64_t arrivals = 0;             // this rank's barriers so far (the first line of its segment)
  // What a shared sum reads and writes, sized once: no allocation per step.
  std::vector<const unsigned char*> sources;  // each rank's buffer, in rank order
  std::vector<const void*> cursors;           // where combine is in each rank's lines
  std::vector<std::uint64_t> my_bits;         // this rank's, gathered before they go to the window
  std::uint64_t buffers = 2;              // per segment, used in turn
  Header* header(std::size_t q) const { return reinterpret_cast<Header*>(segment[q]); }
  // Rank q's values for the sum after `arrival` barriers.
  unsigned char* buffer(int q, std::uint64_t arrival) const {
    return segment[static_cast<std::size_t>(q)] + kLine + (arrival % buffers) * win_bytes;
  }
  // How the ranks copy their values into the window (choose_copy, below): all the same way.
  bool stream = true;              // this step: non-temporal stores, else ordinary ones
  bool exploring = false;          // this step goes the way that is not the cheaper one
  double seconds[2] = {-1, -1};    // this rank's recent cost per step of each way (ordinary, streamed)
  std::uint64_t steps[2] = {0, 0};  // steps gone each way
  std::uint64_t timed = 0;          // sums large enough to be timed (kTimedBytes), so far
  int on_node = 1;  // ranks on this machine
  bool portable = false;  // the window's lines written and summed without AVX-512 (GRADGRAPH_MPI_PORTABLE=1)
  Impl(int& argc, char**& argv) : env(argc, argv, boost::mpi::threading::funneled, true) {
    MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, world.rank(), MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &on_node);
    const char* shared = std::getenv("GRADGRAPH_MPI_SHARED");
    one_node = on_node == world.size() && !(shared != nullptr && std::string(shared) == "0");
    const char* portable_env = std::getenv("GRADGRAPH_MPI_PORTABLE");
    portable = portable_env != nullptr && std::string(portable_env) == "1";
  }
  ~Impl() {  // before env finalises MPI
    if (win != MPI_WIN_NULL) {
      MPI_Win_unlock_all(win);
      MPI_Win_free(&win);
    }
    if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
  }
};

Mpi::Mpi(int& argc, char**& argv) : impl_(std::make_unique<Impl>(argc, argv)) {}
Mpi::~Mpi() = default;

int Mpi::rank() const { return impl_->world.rank(); }

int Mpi::ranks_on_node() const { return impl_->on_node; }
int Mpi::size() const { return impl_->world.size(); }

void Mpi::abort(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  impl_->world.abort(code);
  std::abort();  // not reached: MPI_Abort does not return
}

namespace {

static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "counters in shared memory must be lock-free");

template <typename T>
void add_into(void* to, const void* from, std::int64_t n) {
  T* a = static_cast<T*>(to);
  const T* b = static_cast<const T*>(from);
  for (std::int64_t i = 0; i < n; ++i) a[i] += b[i];
}

}  // namespace

void Mpi::sum(void* data, std::int64_t count, DType dtype) {
  if (!is_float(dtype)) throw std::invalid_argument("Mpi::sum: float32 or float64 only");
  const int n = size(), r = rank();
  if (n == 1 || count == 0) return;
  const std::size_t es = dtype_size(dtype);
  if (impl_->one_node) return sum_shared(data, count, dtype, false);
  const auto t0 = std::chrono::steady_clock::now();
  const MPI_Datatype type = dtype == DType::f32 ? MPI_FLOAT : MPI_DOUBLE;
  auto* bytes = static_cast<unsigned char*>(data);
  auto first = [&](int c) { return count * c / n; };
  auto length = [&](int c) { return first(c + 1) - first(c); };
  auto at = [&](int c) { return bytes + static_cast<std::size_t>(first(c)) * es; };
  auto mod = [n](int c) { return ((c % n) + n) % n; };
  const int next = mod(r + 1), prev = mod(r - 1);
  // A chunk received (the last is the longest), or the whole buffer with two ranks.
  impl_->scratch.resize(static_cast<std::size_t>(n == 2 ? count : length(n - 1)) * es + es);
  MPI_Comm comm = impl_->world;
  // One exchange with both neighbours, waited for with a deadline: MPI's own waits never end
  // when a peer is gone without the runtime noticing (a hung rank, or one on another path).
  auto exchange = [&](const void* send, std::int64_t ns, void* recv, std::int64_t nr, int step) {
    MPI_Request req[2];
    MPI_Irecv(recv, static_cast<int>(nr), type, prev, step, comm, &req[0]);
    MPI_Isend(send, static_cast<int>(ns), type, next, step, comm, &req[1]);
    const auto start = std::chrono::steady_clock::now();
    for (long spins = 0;; ++spins) {
      int done = 0;
      MPI_Testall(2, req, &done, MPI_STATUSES_IGNORE);
      if (done) return;
      if ((spins & 1023) == 0 &&
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout_) {
        std::fprintf(stderr,
                     "gradgraph: rank %d: no gradients from rank %d for %.0f s: it died, hangs, or runs another "
                     "network or data; ending the job\n",
                     r, prev, timeout_);
        abort(3);
      }
    }
  };
  // Two ranks: one exchange of the whole buffer, and each adds the other's values to its own. a + b
  // and b + a are the same bits (IEEE addition commutes), so both ranks hold the same sum; the
  // ring below would take two exchanges of half the buffer, twice the latency for these sizes.
  if (n == 2) {
    exchange(data, count, impl_->scratch.data(), count, 0);
    if (dtype == DType::f32)
      add_into<float>(data, impl_->scratch.data(), count);
    else
      add_into<double>(data, impl_->scratch.data(), count);
    seconds_in_sum_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return;
  }
  // Reduce-scatter: after step s, rank r holds chunk r - s - 1 summed over s + 2 ranks; after
  // n - 1 steps it holds chunk r + 1 summed over all of them.
  for (int s = 0; s + 1 < n; ++s) {
    const int out = mod(r - s), in = mod(r - s - 1);
    exchange(at(out), length(out), impl_->scratch.data(), length(in), s);
    if (dtype == DType::f32)
      add_into<float>(at(in), impl_->scratch.data(), length(in));
    else
      add_into<double>(at(in), impl_->scratch.data(), length(in));
  }
  // All-gather: each summed chunk travels once around the ring, copied as it is.
  for (int s = 0; s + 1 < n; ++s) {
    const int out = mod(r + 1 - s), in = mod(r - s);
    exchange(at(out), length(out), at(in), length(in), n + s);
  }
  seconds_in_sum_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void Mpi::mean(void* data, std::int64_t count, DType dtype) {
  if (!is_float(dtype)) throw std::invalid_argument("Mpi::mean: float32 or float64 only");
  if (count < 1) throw std::invalid_argument("Mpi::mean: no weight");
  if (size() == 1) return;  // the mean of one rank's values is those values
  if (impl_->one_node) return sum_shared(data, count, dtype, true);
  Communicator::mean(data, count, dtype);
}

namespace {

// A buffer of the window holds a rank's values line by line (16 float32 or 8 float64 a line),
// without the lines that are all zeros: a bit per line says which are there.
//   [BufferHead: a line] [a bit per line of values, in 64-bit words] [the lines not all zeros]
// Gradients of sparse inputs have many: a pixel dark in every image of a rank's shard zeroes its
// weights' gradients, a ReLU unit off for all of them its row (23% of the MLP's lines at 64 images
// a rank, 36% in the rows layout), and lines that travel between cores cost more than a test.
// (Packing the nonzero values themselves, 49% of them, cost more in compress and expand
// instructions than it saved in bytes.) A line of zeros and -0s is left out too, and read as +0s,
// by the other ranks and by the rank itself: every rank sums the same operands, so all get the
// same bits (a -0 read as +0 by some ranks only could give -0 on one and +0 on another).
// Sums smaller than this are neither timed nor written the chosen way (ordinary stores): batch
// norm's statistics, 2 C + 1 values.
constexpr std::size_t kTimedBytes = 16 << 10;

struct BufferHead {
  double weight = 1;  // the rank's m_r, for a mean
};
static_assert(sizeof(BufferHead) <= kLine);

constexpr std::size_t round_to_line(std::size_t bytes) { return (bytes + kLine - 1) / kLine * kLine; }
std::size_t lines_of(std::int64_t values, std::size_t es) { return round_to_line(static_cast<std::size_t>(values) * es) / kLine; }
std::size_t words_of(std::size_t lines) { return (lines + 63) / 64; }
std::size_t lines_at(std::size_t lines) { return kLine + round_to_line(words_of(lines) * sizeof(std::uint64_t)); }
std::size_t buffer_bytes(std::int64_t values, std::size_t es) {
  return lines_at(lines_of(values, es)) + lines_of(values, es) * kLine;
}

template <typename T>
constexpr std::int64_t kLanes = static_cast<std::int64_t>(kLine / sizeof(T));
template <typename T>
unsigned lanes_mask(std::int64_t len) { return len >= kLanes<T> ? (1u << kLanes<T>) - 1 : (1u << len) - 1; }
// How `values` values of T fall into lines: `full` whole ones, then perhaps one of `tail` lanes.
template <typename T>
struct Lines {
  std::size_t count, full;
  unsigned all, tail;  // the lanes of a whole line, of the last partial one
  explicit Lines(std::int64_t values)
      : count(lines_of(values, sizeof(T))), full(static_cast<std::size_t>(values / kLanes<T>)), all(lanes_mask<T>(kLanes<T>)),
        tail(lanes_mask<T>(values - static_cast<std::int64_t>(full) * kLanes<T>)) {}
};

// One line of values in registers, and what the window's format needs of it: with AVX-512, or
// portable C++ (also where AVX-512 is, with GRADGRAPH_MPI_PORTABLE=1, so that the tests run it).
// Both compute the same operations in the same order, so they give the same bits (a fused
// multiply-add in both), and so do all ranks.
#if defined(__AVX512F__)
template <typename T>
struct Avx512Line;
template <>
struct Avx512Line<float> {
  __m512 v;
  // The values of `lanes` (a bit each) at p, zeros for the others: p is not read for lanes 0.
  static Avx512Line load(const float* p, unsigned lanes) { return {_mm512_maskz_loadu_ps(static_cast<__mmask16>(lanes), p)}; }
  static Avx512Line bytes(const void* p) { return {_mm512_loadu_ps(p)}; }  // 64 bytes of anything, as they are
  void store(float* p, unsigned lanes) const { _mm512_mask_storeu_ps(p, static_cast<__mmask16>(lanes), v); }
  bool zero() const { return _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_UQ) == 0; }  // NaN is not zero
  void put(float* line, bool stream) const { stream ? _mm512_stream_ps(line, v) : _mm512_store_ps(line, v); }
  Avx512Line times(float m) const { return {_mm512_mul_ps(_mm512_set1_ps(m), v)}; }
  Avx512Line plus_times(float m, Avx512Line x) const { return {_mm512_fmadd_ps(_mm512_set1_ps(m), x.v, v)}; }  // this + m x
};
template <>
struct Avx512Line<double> {
  __m512d v;
  static Avx512Line load(const double* p, unsigned lanes) { return {_mm512_maskz_loadu_pd(static_cast<__mmask8>(lanes), p)}; }
  static Avx512Line bytes(const void* p) { return {_mm512_loadu_pd(p)}; }
  void store(double* p, unsigned lanes) const { _mm512_mask_storeu_pd(p, static_cast<__mmask8>(lanes), v); }
  bool zero() const { return _mm512_cmp_pd_mask(v, _mm512_setzero_pd(), _CMP_NEQ_UQ) == 0; }
  void put(double* line, bool stream) const { stream ? _mm512_stream_pd(line, v) : _mm512_store_pd(line, v); }
  Avx512Line times(double m) const { return {_mm512_mul_pd(_mm512_set1_pd(m), v)}; }
  Avx512Line plus_times(double m, Avx512Line x) const { return {_mm512_fmadd_pd(_mm512_set1_pd(m), x.v, v)}; }
};
#endif
template <typename T>
struct PortableLine {
  T v[kLanes<T>] = {};
  static PortableLine load(const T* p, unsigned lanes) {
    PortableLine l;
    for (std::int64_t j = 0; j < kLanes<T>; ++j) l.v[j] = (lanes >> j) & 1 ? p[j] : T(0);
    return l;
  }
  static PortableLine bytes(const void* p) {  // 64 bytes of anything, as they are (not read as T: aliasing)
    PortableLine l;
    std::memcpy(l.v, p, kLine);
    return l;
  }
  void store(T* p, unsigned lanes) const {
    for (std::int64_t j = 0; j < kLanes<T>; ++j)
      if ((lanes >> j) & 1) p[j] = v[j];
  }
  bool zero() const {
    for (std::int64_t j = 0; j < kLanes<T>; ++j)
      if (v[j] != T(0)) return false;  // NaN != 0
    return true;
  }
  void put(T* line, bool) const { std::memcpy(line, v, kLine); }
  PortableLine times(T m) const {
    PortableLine l;
    for (std::int64_t j = 0; j < kLanes<T>; ++j) l.v[j] = m * v[j];
    return l;
  }
  PortableLine plus_times(T m, const PortableLine& x) const {
    PortableLine l;
    for (std::int64_t j = 0; j < kLanes<T>; ++j) l.v[j] = std::fma(m, x.v[j], v[j]);
    return l;
  }
};

// Writes this rank's `values` (and its weight) into its buffer of the window, without its lines
// of zeros, with ordinary stores or non-temporal ones (`stream`): those send the lines to memory
// and drop any copy another core holds on the way, without a read for ownership. The bits are
// gathered in `bits` (this rank's, sized for the window) and go out after the lines. Whole aligned
// lines only, and not memcpy: glibc's (rep movsb) took 50-70 us for 200 KB into the shared window
// on this machine's AMD cores, where a loop of stores takes 5.
template <template <typename> class Line, typename T>
void pack_to_window(unsigned char* buffer, const T* x, std::int64_t values, T weight, bool stream, std::uint64_t* bits) {
  const Lines<T> lines(values);
  const std::size_t words = words_of(lines.count);
  T* out = reinterpret_cast<T*>(buffer + lines_at(lines.count));
  // With ordinary stores every line is written where the next kept one goes, and kept only if it
  // is not zeros: no branch to mispredict. Streamed stores must not write a line twice (writing
  // the MLP's buffer took 80 us that way, against 7 with the branch).
  auto put = [&](std::size_t c, unsigned lanes) {
    const Line<T> l = Line<T>::load(x + c * kLanes<T>, lanes);
    const bool kept = !l.zero();
    if (stream) {
      if (kept) l.put(out, true), out += kLanes<T>;
    } else {
      l.put(out, false);
      out += kept ? kLanes<T> : 0;
    }
    return std::uint64_t{kept};
  };
  for (std::size_t w = 0; w < words; ++w) {
    std::uint64_t word = 0;
    const std::size_t first = 64 * w, end = std::min(lines.full, first + 64);
    for (std::size_t c = first; c < end; ++c) word |= put(c, lines.all) << (c - first);
    if (lines.full < lines.count && lines.full / 64 == w) word |= put(lines.full, lines.tail) << (lines.full - first);
    bits[w] = word;
  }
  // The bits and the head, whole lines moved as they are.
  auto put_line = [&](unsigned char* to, const void* from) { Line<T>::bytes(from).put(reinterpret_cast<T*>(to), stream); };
  for (std::size_t b = 0; b < words * sizeof(std::uint64_t); b += kLine)
    put_line(buffer + kLine + b, reinterpret_cast<const unsigned char*>(bits) + b);
  alignas(64) unsigned char head[kLine] = {};
  new (head) BufferHead{static_cast<double>(weight)};
  put_line(buffer, head);
#if defined(__SSE2__)
  _mm_sfence();  // streamed stores are weakly ordered: all of them before the barrier's release
#endif
}

// to = the sum over ranks q of their values (rank order, the same bits on every rank), or with
// `weighted` the weighted mean of Communicator::mean: acc = m_0 x_0, then acc = acc + m_q x_q
// (fused) for q = 1, 2, ...; a plain sum weighs by 1, and 1 x is x. This rank's values (`self`)
// are read in place from `to`, its lines left out (`own`: its bits) as +0s like the others';
// the others' from their buffers (`buffers`, in rank order; this rank's entry unused). `values`
// excludes the weight, which a mean has last. `cursors`: one per rank, where each is in its lines.
template <template <typename> class Line, typename T>
void combine(T* to, std::int64_t values, bool weighted, int self, const std::uint64_t* own,
             const std::vector<const unsigned char*>& buffers, std::vector<const void*>& cursors) {
  const std::size_t n = buffers.size(), me = static_cast<std::size_t>(self);
  const Lines<T> lines(values);
  auto weight = [&](std::size_t q) {
    return q == me ? to[values] : static_cast<T>(reinterpret_cast<const BufferHead*>(buffers[q])->weight);
  };
  T total = 0;
  for (std::size_t q = 0; weighted && q < n; ++q) total += weight(q);
  const T inverse = weighted ? T(1) / total : T(1);
  auto m = [&](std::size_t q) { return weighted ? weight(q) * inverse : T(1); };
  auto bits = [&](std::size_t q) { return reinterpret_cast<const std::uint64_t*>(buffers[q] + kLine); };
  // Rank q's line c, from its lines kept, at p: read branch-free (a masked load of nothing for a
  // line left out), and p moved past it.
  auto there = [](const std::uint64_t* kept, std::size_t c) { return (kept[c / 64] >> (c % 64)) & 1; };
  auto read = [&](const std::uint64_t* kept, std::size_t c, const T*& p, unsigned lanes) {
    const bool in = there(kept, c);
    const Line<T> l = Line<T>::load(p, in ? lanes : 0u);
    p += in ? kLanes<T> : 0;
    return l;
  };
  auto mine = [&](std::size_t c, unsigned lanes) { return Line<T>::load(to + c * kLanes<T>, there(own, c) ? lanes : 0u); };
  if (n == 2) {  // the common case: one pass, the other rank's lines in order
    const T m0 = m(0), m1 = m(1);
    const std::size_t other = 1 - me;
    const std::uint64_t* kept = bits(other);
    const T* p = reinterpret_cast<const T*>(buffers[other] + lines_at(lines.count));
    auto run = [&](auto mine_first) {
      auto line = [&](std::size_t c, unsigned lanes) {
        const Line<T> x = mine(c, lanes), y = read(kept, c, p, lanes);
        if constexpr (decltype(mine_first)::value)
          x.times(m0).plus_times(m1, y).store(to + c * kLanes<T>, lanes);
        else
          y.times(m0).plus_times(m1, x).store(to + c * kLanes<T>, lanes);
      };
      for (std::size_t c = 0; c < lines.full; ++c) line(c, lines.all);
      if (lines.full < lines.count) line(lines.full, lines.tail);
    };
    if (me == 0)
      run(std::true_type{});
    else
      run(std::false_type{});
  } else {
    for (std::size_t q = 0; q < n; ++q) cursors[q] = buffers[q] + lines_at(lines.count);
    for (std::size_t c = 0; c < lines.count; ++c) {
      const unsigned lanes = c < lines.full ? lines.all : lines.tail;
      auto source = [&](std::size_t q) {
        if (q == me) return mine(c, lanes);
        const T* p = static_cast<const T*>(cursors[q]);
        const Line<T> l = read(bits(q), c, p, lanes);
        cursors[q] = p;
        return l;
      };
      Line<T> acc = source(0).times(m(0));
      for (std::size_t q = 1; q < n; ++q) acc = acc.plus_times(m(q), source(q));
      acc.store(to + c * kLanes<T>, lanes);  // after every source's read of this line, `to`'s own included
    }
  }
  if (weighted) to[values] = total;
}

}  // namespace

// Which way the ranks write their values into the window, chosen by measuring both as they go:
// the cheaper one differs between machines and, on this virtual machine, over time. Ordinary
// stores into lines that another core has read pay for invalidating its copies; with both cores
// under one L3 that is cheap once the reader's copies have gone to the L3 (hence 8 buffers in
// turn, not 2), and the other rank then reads the lines from this core's cache: writing and
// summing the MLP's 155 KB of lines kept take ~11 us. With the cores on different dies (the other
// die's L3 keeps the lines) the same stores took 40-60 us. Non-temporal stores skip the
// invalidations but send the lines to memory, where the readers fetch them: ~19 us in both
// states. A way's cost is a rank's writing and summing (not its wait), summed over the ranks,
// who publish theirs at each barrier so that all decide alike (their reads differ with the
// others' stores); every 128th step goes the other way. Only sums of kTimedBytes or more count
// (`turn` numbers them) and use the choice: batch norm's sums of a few hundred bytes, several a
// step, go with ordinary stores and would blur the figures.
void Mpi::choose_copy(std::uint64_t epoch, std::uint64_t turn) {
  double total[2] = {0, 0};
  bool known[2] = {true, true};
  for (std::size_t q = 0; q < impl_->segment.size(); ++q)
    for (int way = 0; way < 2; ++way) {
      const double t = impl_->header(q)->seconds[epoch & 1][way].load(std::memory_order_relaxed);
      known[way] = known[way] && t >= 0;
      total[way] += t;
    }
  const bool cheaper = known[1] && known[0] ? total[1] < total[0] : !known[1];  // each way once first
  impl_->exploring = known[0] && known[1] && turn % 128 == 0;
  impl_->stream = impl_->exploring ? !cheaper : cheaper;
}

// Each rank's segment of the shared window: a line for its Header, then K buffers (2 to 8), used
// in turn, each large enough for `values` values of `dtype` with no line left out (pack_to_window's
// layout). A rank writes buffer k mod K of step k only after the barrier of step k - 1, which
// every rank passes only once done reading step k - 2's buffers: so one barrier per sum suffices,
// where one buffer would need a second to keep the values until all ranks have read them. Made by
// the first sum (collective: every rank sums the same counts).
void Mpi::make_window(std::int64_t values, DType dtype) {
  const std::size_t bytes = buffer_bytes(values, dtype_size(dtype));
  if (impl_->win_bytes >= bytes) return;
  impl_->buffers = std::clamp<std::size_t>((std::size_t{16} << 20) / bytes, 2, 8);
  if (impl_->win != MPI_WIN_NULL) {
    MPI_Win_unlock_all(impl_->win);
    MPI_Win_free(&impl_->win);
  }
  // A line more than the segment needs: Open MPI places the segments 8 bytes past a line boundary
  // here, and each starts at its first line boundary (the same offset in every process: the
  // mapping is page-aligned in each).
  const std::size_t segment_bytes = kLine + impl_->buffers * bytes;
  void* base = nullptr;
  MPI_Win_allocate_shared(static_cast<MPI_Aint>(segment_bytes + kLine), 1, MPI_INFO_NULL, impl_->node, &base, &impl_->win);
  auto line_aligned = [](void* p) {
    return reinterpret_cast<unsigned char*>(round_to_line(reinterpret_cast<std::uintptr_t>(p)));
  };
  unsigned char* mine = line_aligned(base);
  // Touched now, not in the first steps: their page faults would count as the copies' cost.
  std::memset(base, 0, segment_bytes + kLine);
  new (mine) Header;
  impl_->arrivals = 0;
  const auto ranks = static_cast<std::size_t>(size());
  impl_->segment.assign(ranks, nullptr);
  impl_->sources.assign(ranks, nullptr);
  impl_->cursors.assign(ranks, nullptr);
  // Whole lines of bits, as they go out.
  const std::size_t bits_bytes = round_to_line(words_of(lines_of(values, dtype_size(dtype))) * sizeof(std::uint64_t));
  impl_->my_bits.assign(bits_bytes / sizeof(std::uint64_t), 0);
  for (int q = 0; q < size(); ++q) {
    MPI_Aint seg_size = 0;
    int unit = 0;
    void* at = nullptr;
    MPI_Win_shared_query(impl_->win, q, &seg_size, &unit, &at);
    impl_->segment[static_cast<std::size_t>(q)] = line_aligned(at);
  }
  MPI_Win_lock_all(MPI_MODE_NOCHECK, impl_->win);
  impl_->win_bytes = bytes;
  MPI_Barrier(impl_->node);  // every counter is set up before any rank waits on it
  // The other segments' pages mapped now too (a read of each): the first sums would be slow.
  unsigned char sink = 0;
  for (int q = 0; q < size(); ++q)
    for (std::size_t at = 0; at < segment_bytes; at += 4096)
      sink ^= *static_cast<volatile unsigned char*>(impl_->segment[static_cast<std::size_t>(q)] + at);
  (void)sink;
}

// One sum through the window: this rank's values written into its current buffer, a barrier,
// then every rank's values combined in rank order, this rank's own read in place.
void Mpi::sum_shared(void* data, std::int64_t count, DType dtype, bool weighted) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::int64_t values = weighted ? count - 1 : count;
  make_window(values, dtype);
  const std::uint64_t arrival = impl_->arrivals;
  unsigned char* buffer = impl_->buffer(rank(), arrival);
  const bool timed = buffer_bytes(values, dtype_size(dtype)) >= kTimedBytes;
  const bool stream = timed && impl_->stream, exploring = timed && impl_->exploring;
  // The same steps with AVX-512 or in portable C++ (GRADGRAPH_MPI_PORTABLE=1, or without AVX-512).
  auto pack = [&](auto* x) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(x)>>;
    const T weight = weighted ? x[values] : T(1);
#if defined(__AVX512F__)
    if (!impl_->portable) return pack_to_window<Avx512Line>(buffer, x, values, weight, stream, impl_->my_bits.data());
#endif
    pack_to_window<PortableLine>(buffer, x, values, weight, stream, impl_->my_bits.data());
  };
  if (dtype == DType::f32)
    pack(static_cast<const float*>(data));
  else
    pack(static_cast<const double*>(data));
  const double copy_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Header* mine = impl_->header(static_cast<std::size_t>(rank()));
  for (int way = 0; way < 2; ++way)
    mine->seconds[(arrival + 1) & 1][way].store(impl_->seconds[way], std::memory_order_relaxed);
  barrier_shared();  // every rank's values (and figures) are there
  const auto t1 = std::chrono::steady_clock::now();
  if (timed) choose_copy(arrival + 1, ++impl_->timed);  // for the next timed sum
  for (int q = 0; q < size(); ++q) impl_->sources[static_cast<std::size_t>(q)] = impl_->buffer(q, arrival);
  auto sum = [&](auto* to) {
#if defined(__AVX512F__)
    if (!impl_->portable)
      return combine<Avx512Line>(to, values, weighted, rank(), impl_->my_bits.data(), impl_->sources, impl_->cursors);
#endif
    combine<PortableLine>(to, values, weighted, rank(), impl_->my_bits.data(), impl_->sources, impl_->cursors);
  };
  if (dtype == DType::f32)
    sum(static_cast<float*>(data));
  else
    sum(static_cast<double*>(data));
  const auto t2 = std::chrono::steady_clock::now();
  seconds_in_sum_ += std::chrono::duration<double>(t2 - t0).count();
  if (!timed) return;
  // The way in use is timed at every step, the other only every 128th: its one sample counts more.
  // A way's first step is not counted: the first step of all took milliseconds here.
  const int way = stream ? 1 : 0;
  double& cost = impl_->seconds[way];
  const double t = copy_seconds + std::chrono::duration<double>(t2 - t1).count(), keep = exploring ? 0.5 : 0.875;
  if (impl_->steps[way]++ > 0) cost = cost < 0 ? t : keep * cost + (1 - keep) * t;
}

// A barrier of the ranks on this machine through counters in their segments (release/acquire
// atomics: what a rank wrote before arriving is visible to every rank that saw it arrive),
// waited for with the same deadline as the exchanges. MPI's own barriers (MPI_Ibarrier) took tens
// of microseconds here, as long as the sum.
void Mpi::barrier_shared() {
  const std::uint64_t epoch = ++impl_->arrivals;
  auto counter = [&](std::size_t q) { return &impl_->header(q)->arrivals; };
  counter(static_cast<std::size_t>(rank()))->store(epoch, std::memory_order_release);
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t q = 0; q < impl_->segment.size(); ++q)
    for (long spins = 1; counter(q)->load(std::memory_order_acquire) < epoch; ++spins) {
      // More ranks than cores (mpirun --oversubscribe): let the rank being waited for run.
      if ((spins & 63) == 0) std::this_thread::yield();
      if ((spins & 1023) != 0 || std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <= timeout_)
        continue;
      std::fprintf(stderr,
                   "gradgraph: rank %d: the other ranks did not reach the gradient sum for %.0f s: one died, hangs, "
                   "or runs another network or data; ending the job\n",
                   rank(), timeout_);
      abort(3);
    }
}

// Ranks 0 and 1 take turns to bump a counter in rank 0's header line: each turn moves the line
// from one core's cache to the other's, and back. (256 round trips after 16 to warm up.)
double Mpi::core_round_trip() {
  if (impl_->win == MPI_WIN_NULL || size() < 2) return -1;
  // Read before the barrier, after which rank 0 takes its first turn at once: the same on both
  // (the last call's turns all happened before its closing barrier).
  std::atomic<std::uint64_t>& line = impl_->header(0)->ping;
  const std::uint64_t base = line.load(std::memory_order_acquire);
  MPI_Barrier(impl_->node);
  if (rank() > 1) {
    MPI_Barrier(impl_->node);
    return -1;
  }
  const int me = rank(), warm = 16, rounds = 256;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_);
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < warm + rounds; ++i) {
    if (i == warm) start = std::chrono::steady_clock::now();
    const std::uint64_t mine = base + 2 * static_cast<std::uint64_t>(i) + static_cast<std::uint64_t>(me);
    for (long spins = 1; line.load(std::memory_order_acquire) != mine; ++spins)
      if ((spins & 1023) == 0 && std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr, "gradgraph: rank %d: rank %d did not answer for %.0f s; ending the job\n", me, 1 - me, timeout_);
        abort(3);
      }
    line.store(mine + 1, std::memory_order_release);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / rounds;
  MPI_Barrier(impl_->node);
  return seconds;
}

void Mpi::check_same(const std::vector<std::pair<std::string, std::string>>& facts) {
  std::vector<std::vector<std::pair<std::string, std::string>>> all;
  boost::mpi::all_gather(impl_->world, facts, all);
  for (std::size_t k = 1; k < all.size(); ++k) {
    if (all[k] == all[0]) continue;
    std::string what;
    for (std::size_t i = 0; i < std::max(all[0].size(), all[k].size()); ++i) {
      const std::string key = i < all[0].size() ? all[0][i].first : all[k][i].first;
      const std::string a = i < all[0].size() ? all[0][i].second : "(nothing)";
      const std::string b = i < all[k].size() ? all[k][i].second : "(nothing)";
      if (a != b) what += (what.empty() ? "" : "; ") + key + ": rank 0 has " + a + ", rank " + std::to_string(k) + " has " + b;
    }
    throw CollectiveError("the ranks do not run the same training (" + what + ")");
  }
}

#else  // built without MPI

bool mpi_available() { return false; }

struct Mpi::Impl {};

Mpi::Mpi(int&, char**&) {
  throw std::runtime_error(
      "this gradgraph was built without MPI: install openmpi-bin, libopenmpi-dev and libboost-mpi-dev "
      "(scripts/install-deps) and build again");
}
Mpi::~Mpi() = default;
int Mpi::rank() const { return 0; }
int Mpi::ranks_on_node() const { return 1; }
int Mpi::size() const { return 1; }
void Mpi::sum(void*, std::int64_t, DType) {}
void Mpi::mean(void*, std::int64_t, DType) {}
void Mpi::check_same(const std::vector<std::pair<std::string, std::string>>&) {}
double Mpi::core_round_trip() { return -1; }
void Mpi::abort(int code) { std::exit(code); }

#endif

}  // namespace gg::train
