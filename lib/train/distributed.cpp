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
#include <string>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
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
  std::vector<const void*> sources;       // what a shared sum reads: each rank's values, in rank order
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
  int on_node = 1;  // ranks on this machine
  Impl(int& argc, char**& argv) : env(argc, argv, boost::mpi::threading::funneled, true) {
    MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, world.rank(), MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &on_node);
    const char* shared = std::getenv("GRADGRAPH_MPI_SHARED");
    one_node = on_node == world.size() && !(shared != nullptr && std::string(shared) == "0");
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

// Copies with ordinary stores or with non-temporal ones (`stream`): those send the lines to
// memory and drop any copy another core holds on the way, without a read for ownership. Not
// memcpy: glibc's (rep movsb) took 50-70 us for 200 KB into the shared window on this machine's
// AMD cores, where this loop takes 5.
void copy_to_window(void* to, const void* from, std::size_t bytes, bool stream) {
  auto* d = static_cast<unsigned char*>(to);
  const auto* s = static_cast<const unsigned char*>(from);
#if defined(__SSE2__)
  for (; bytes > 0 && (reinterpret_cast<std::uintptr_t>(d) & 15) != 0; --bytes) *d++ = *s++;
  if (stream) {
    for (; bytes >= 16; bytes -= 16, d += 16, s += 16)
      _mm_stream_si128(reinterpret_cast<__m128i*>(d), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  } else {
    for (; bytes >= 16; bytes -= 16, d += 16, s += 16)
      _mm_store_si128(reinterpret_cast<__m128i*>(d), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  }
  for (; bytes > 0; --bytes) *d++ = *s++;
  _mm_sfence();  // streamed stores are weakly ordered: all of them before the barrier's release
#else
  (void)stream;
  std::memcpy(d, s, bytes);
#endif
}

// to = the sum over ranks q of src[q] (rank order, the same bits on every rank), or with `weighted`
// the weighted mean of Communicator::mean. A plain sum weighs by 1: 1 x is x, and x + 1 y is
// x + y, fused or not. One of the sources is `to` itself (this rank's values): with two ranks,
// one loop per place of `to` among the operands, so that the compiler sees no aliasing to guard
// against and vectorises; with more, blocks through a small buffer, every source read before
// `to` is written.
template <typename T>
void combine(T* to, const std::vector<const void*>& sources, std::int64_t count, bool weighted) {
  const std::size_t n = sources.size();
  auto src = [&](std::size_t q) { return static_cast<const T*>(sources[q]); };
  const std::int64_t values = weighted ? count - 1 : count;
  T total = 0;
  for (std::size_t q = 0; weighted && q < n; ++q) total += src(q)[count - 1];
  const T inverse = weighted ? T(1) / total : T(1);
  auto m = [&](std::size_t q) { return weighted ? src(q)[count - 1] * inverse : T(1); };
  if (n == 2) {  // one pass, two streams, `to` read and written at the same index
    const T m0 = m(0), m1 = m(1);
    // Both ranks evaluate m0 x0 + m1 x1 with the same operands in the same places.
    if (src(0) == to) {
      const T* x1 = src(1);
      for (std::int64_t i = 0; i < values; ++i) to[i] = m0 * to[i] + m1 * x1[i];
    } else {
      const T* x0 = src(0);
      for (std::int64_t i = 0; i < values; ++i) to[i] = m0 * x0[i] + m1 * to[i];
    }
  } else {
    constexpr std::int64_t kBlock = 1024;
    T block[kBlock];
    for (std::int64_t b = 0; b < values; b += kBlock) {
      const std::int64_t len = std::min(kBlock, values - b);
      const T* x0 = src(0) + b;
      const T m0 = m(0);
      for (std::int64_t i = 0; i < len; ++i) block[i] = m0 * x0[i];
      for (std::size_t q = 1; q < n; ++q) {
        const T* y = src(q) + b;
        const T mq = m(q);
        for (std::int64_t i = 0; i < len; ++i) block[i] += mq * y[i];
      }
      std::copy(block, block + len, to + b);
    }
  }
  if (weighted) to[count - 1] = total;
}

}  // namespace

// Which way the ranks copy their values into the window, chosen by measuring both as they go:
// the cheaper one differs between machines and, on this virtual machine, over time. Ordinary
// stores into lines that another core has read pay for invalidating its copies; with both cores
// under one L3 that is cheap once the reader's copies have gone to the L3 (hence 8 buffers in
// turn, not 2), and the other rank then reads the lines from this core's cache: copy and sum of
// the MLP's 200 KB ~11 us. With the cores on different dies (the other die's L3 keeps the lines)
// the same stores took 45-80 us. Non-temporal stores skip the invalidations but send the lines to
// memory, where the readers fetch them: ~20 us in both states. A way's cost is a rank's copy and
// sum (not its wait), summed over the ranks, who publish theirs at each barrier so that all
// decide alike (their reads differ with the others' stores); every 128th step goes the other way.
void Mpi::choose_copy(std::uint64_t epoch) {
  double total[2] = {0, 0};
  bool known[2] = {true, true};
  for (std::size_t q = 0; q < impl_->segment.size(); ++q)
    for (int way = 0; way < 2; ++way) {
      const double t = impl_->header(q)->seconds[epoch & 1][way].load(std::memory_order_relaxed);
      known[way] = known[way] && t >= 0;
      total[way] += t;
    }
  const bool cheaper = known[1] && known[0] ? total[1] < total[0] : !known[1];  // each way once first
  impl_->exploring = known[0] && known[1] && epoch % 128 == 0;
  impl_->stream = impl_->exploring ? !cheaper : cheaper;
}

// Each rank's segment of the shared window: a line for its Header, then K buffers (2 to 8), used
// in turn. A rank writes buffer k mod K of step k only after the barrier of step k - 1, which
// every rank passes only once done reading step k - 2's buffers: so one barrier per sum
// suffices, where one buffer would need a second to keep the values until all ranks have read
// them. Made by the first sum (collective: every rank sums the same counts).
void Mpi::make_window(std::size_t padded) {
  if (impl_->win_bytes >= padded) return;
  impl_->buffers = std::clamp<std::size_t>((std::size_t{16} << 20) / padded, 2, 8);
  if (impl_->win != MPI_WIN_NULL) {
    MPI_Win_unlock_all(impl_->win);
    MPI_Win_free(&impl_->win);
  }
  void* mine = nullptr;
  MPI_Win_allocate_shared(static_cast<MPI_Aint>(kLine + impl_->buffers * padded), 1, MPI_INFO_NULL, impl_->node, &mine,
                          &impl_->win);
  // Touched now, not in the first steps: their page faults would count as the copies' cost.
  std::memset(mine, 0, kLine + impl_->buffers * padded);
  new (mine) Header;
  impl_->arrivals = 0;
  impl_->segment.assign(static_cast<std::size_t>(size()), nullptr);
  for (int q = 0; q < size(); ++q) {
    MPI_Aint seg_size = 0;
    int unit = 0;
    void* base = nullptr;
    MPI_Win_shared_query(impl_->win, q, &seg_size, &unit, &base);
    impl_->segment[static_cast<std::size_t>(q)] = static_cast<unsigned char*>(base);
  }
  MPI_Win_lock_all(MPI_MODE_NOCHECK, impl_->win);
  impl_->win_bytes = padded;
  MPI_Barrier(impl_->node);  // every counter is set up before any rank waits on it
  // The other segments' pages mapped now too (a read of each): the first sums would be slow.
  unsigned char sink = 0;
  for (int q = 0; q < size(); ++q)
    for (std::size_t at = 0; at < kLine + impl_->buffers * padded; at += 4096)
      sink ^= *static_cast<volatile unsigned char*>(impl_->segment[static_cast<std::size_t>(q)] + at);
  (void)sink;
}

// One sum through the window: this rank's values copied into its current buffer, a barrier,
// then every rank's buffer combined in rank order, this rank's own values read in place.
void Mpi::sum_shared(void* data, std::int64_t count, DType dtype, bool weighted) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::size_t bytes = static_cast<std::size_t>(count) * dtype_size(dtype);
  make_window((bytes + kLine - 1) / kLine * kLine);
  const std::uint64_t arrival = impl_->arrivals;
  copy_to_window(impl_->buffer(rank(), arrival), data, bytes, impl_->stream);
  const double copy_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Header* mine = impl_->header(static_cast<std::size_t>(rank()));
  for (int way = 0; way < 2; ++way)
    mine->seconds[(arrival + 1) & 1][way].store(impl_->seconds[way], std::memory_order_relaxed);
  barrier_shared();  // every rank's values (and figures) are there
  const auto t1 = std::chrono::steady_clock::now();
  const bool stream = impl_->stream, exploring = impl_->exploring;
  choose_copy(arrival + 1);  // for the next step
  auto run = [&](auto* to) {
    std::vector<const void*>& src = impl_->sources;  // sized once: no allocation per step
    src.resize(static_cast<std::size_t>(size()));
    for (int q = 0; q < size(); ++q)
      src[static_cast<std::size_t>(q)] = q == rank() ? static_cast<const void*>(to) : impl_->buffer(q, arrival);
    combine(to, src, count, weighted);
  };
  if (dtype == DType::f32)
    run(static_cast<float*>(data));
  else
    run(static_cast<double*>(data));
  const auto t2 = std::chrono::steady_clock::now();
  // The way in use is timed at every step, the other only every 128th: its one sample counts more.
  // A way's first step is not counted: the first step of all took milliseconds here.
  const int way = stream ? 1 : 0;
  double& cost = impl_->seconds[way];
  const double t = copy_seconds + std::chrono::duration<double>(t2 - t1).count(), keep = exploring ? 0.5 : 0.875;
  if (impl_->steps[way]++ > 0) cost = cost < 0 ? t : keep * cost + (1 - keep) * t;
  seconds_in_sum_ += std::chrono::duration<double>(t2 - t0).count();
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
void Mpi::abort(int code) { std::exit(code); }

#endif

}  // namespace gg::train
