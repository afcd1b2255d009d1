// Data-parallel training over MPI (Open MPI through Boost.MPI): the one place gradgraph talks to
// MPI. Each rank (process) holds a replica of the program and trains on its shard of every batch
// (BatchOptions::shard/shards); the gradients are summed across ranks inside the program, between
// backward and update (gg::all_reduce_mean, TrainOptions::communicator), so every rank applies the
// update one process fed the whole batch would. docs/distributed.md says how to run it.
//
//   gg::train::Mpi mpi(argc, argv);            // MPI_Init; one per process
//   to.communicator = &mpi;                    // TrainOptions
//   bo.shard = mpi.rank(); bo.shards = mpi.size();
//   mpi.check_same({{"network", spec}, ...});  // every rank the same run, or an error on all
//
// Built only when meson finds MPI and Boost.MPI (scripts/install-deps installs them); without
// them mpi_available() is false and constructing an Mpi throws, saying so.
#pragma once

#include <gradgraph/ops.hpp>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace gg::train {

// Whether this build of gradgraph has MPI.
bool mpi_available();

// Thrown the same way on every rank (a collective found the ranks disagree): each rank can end
// normally, rank 0 saying why.
struct CollectiveError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Mpi : public Communicator {
 public:
  // Initialises MPI (errors abort the whole job, MPI's default) and ends it in the destructor.
  // Throws std::runtime_error when gradgraph was built without MPI.
  Mpi(int& argc, char**& argv);
  ~Mpi() override;
  Mpi(const Mpi&) = delete;
  Mpi& operator=(const Mpi&) = delete;

  int rank() const override;
  int size() const override;
  // How many ranks of the job run on this machine (this one included): with threads per rank,
  // what shares the cores.
  int ranks_on_node() const;
  // An all-reduce of float32 or float64 data in place, the same bits on every rank, every run.
  // Ranks all on one machine each write their values, without their lines of zeros, into their
  // segment of a shared-memory window, pass a barrier, and add all segments in rank order, their
  // own values read in place (GRADGRAPH_MPI_SHARED=0 turns that off); otherwise two ranks exchange
  // their buffers and add, and more run a ring (reduce-scatter, then all-gather), each chunk summed
  // along the ring in one fixed order and copied to every rank: per rank it sends and receives
  // 2 (N - 1) / N of the bytes.
  // A peer silent for longer than the timeout ends the whole job (MPI_Abort) with a message: a
  // rank that died or went a different way never leaves the others hanging.
  void sum(void* data, std::int64_t count, DType dtype) override;
  // Communicator::mean; ranks all on one machine do it in one pass, as for sum().
  void mean(void* data, std::int64_t count, DType dtype) override;
  void set_timeout(double seconds) { timeout_ = seconds; }
  double timeout() const { return timeout_; }
  // Seconds spent in sum() and mean() (communication and waiting) since the last reset, for
  // measurements.
  double seconds_in_sum() const { return seconds_in_sum_; }
  void reset_timer() { seconds_in_sum_ = 0; }
  // Collective (every rank calls it): the time for a cache line to go from rank 0's core to rank
  // 1's and back, in seconds, on ranks 0 and 1 when they share the window (-1 elsewhere, or before
  // the first sum, or by messages). What the all-reduce through shared memory costs depends on
  // it: ~100 ns where the cores share an L3, several times that across dies or sockets.
  double core_round_trip();

  // Every rank passes the same keys; returns when every value agrees on every rank, else throws
  // CollectiveError on every rank naming the keys that differ and the values of rank 0 and of the
  // first rank that differs.
  void check_same(const std::vector<std::pair<std::string, std::string>>& facts);
  // Ends every rank of the job now (MPI_Abort) with exit code `code`.
  [[noreturn]] void abort(int code);

 private:
  void barrier_shared();
  void sum_shared(void* data, std::int64_t count, DType dtype, bool weighted);
  void choose_copy(std::uint64_t epoch, std::uint64_t turn);
  void make_window(std::int64_t values, DType dtype);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  double timeout_ = 300;
  double seconds_in_sum_ = 0;
};

// A 64-bit hash of bytes (FNV-1a over 8-byte words), to compare data and parameters across ranks.
std::uint64_t fingerprint(const void* data, std::size_t bytes, std::uint64_t seed = 0);
std::string hex(std::uint64_t v);

}  // namespace gg::train
