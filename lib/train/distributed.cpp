// Data-parallel training over MPI (lib/gradgraph/distributed.hpp). Boost.MPI owns MPI's lifetime
// and gathers the ranks' facts; the all-reduce is a hand-written ring over MPI point-to-point
// messages rather than MPI_Allreduce, whose summation order depends on the algorithm Open MPI
// picks (by message size and rank count): a fixed ring order makes every rank's result, and every
// run's, the same bits.
#include <gradgraph/distributed.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>

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

struct Mpi::Impl {
  boost::mpi::environment env;
  boost::mpi::communicator world;
  std::vector<unsigned char> scratch;  // one chunk received, reused by every sum
  Impl(int& argc, char**& argv) : env(argc, argv, boost::mpi::threading::funneled, true) {}
};

Mpi::Mpi(int& argc, char**& argv) : impl_(std::make_unique<Impl>(argc, argv)) {}
Mpi::~Mpi() = default;

int Mpi::rank() const { return impl_->world.rank(); }
int Mpi::size() const { return impl_->world.size(); }

void Mpi::abort(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  impl_->world.abort(code);
  std::abort();  // not reached: MPI_Abort does not return
}

namespace {

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
  const auto t0 = std::chrono::steady_clock::now();
  const std::size_t es = dtype_size(dtype);
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
int Mpi::size() const { return 1; }
void Mpi::sum(void*, std::int64_t, DType) {}
void Mpi::check_same(const std::vector<std::pair<std::string, std::string>>&) {}
void Mpi::abort(int code) { std::exit(code); }

#endif

}  // namespace gg::train
