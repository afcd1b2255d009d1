// A compiled program: the fetched subgraph, fused, ordered once by Boost.Graph's topological
// sort, with every buffer planned once per batch size, then run many times.
//
// Memory: parameters and optimizer state live in one persistent arena (shared between
// programs compiled with share_params_with); every other value lives in a per-batch-size
// arena whose offsets come from liveness intervals over the schedule (buffers whose lifetimes
// do not overlap share memory; elementwise ops overwrite a dying operand in place). After the
// first run() at a batch size, run() allocates nothing.
//
// A Program refers to its Graph (to match feeds and fetches) and must not outlive it: run(),
// get() and scalar() after the graph is destroyed throw std::logic_error (a lifetime token, not
// a dangling pointer). Its parameters stay readable and settable by name.
#pragma once

#include <gradgraph/graph.hpp>
#include <gradgraph/random.hpp>
#include <gradgraph/sparse.hpp>

#include <cstdint>
#include <iosfwd>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace gg {

// Below this density a sparse x dense product beats BLIS's dense GEMM (docs/performance.md).
inline constexpr double kDefaultSparseDensity = 0.5;

struct Communicator;  // <gradgraph/ops.hpp>: the ranks of a data-parallel run

struct CompileOptions {
  bool fuse = true;          // run the fusion pass (add+relu, scale into GEMM alpha)
  int threads = 0;           // kernel and BLIS threads; 0 = OpenMP's default (all cores)
  RngKind rng = RngKind::standard;
  std::uint64_t seed = 0;    // for the parameters' initialisers
  const Program* share_params_with = nullptr;  // use that program's parameter storage
  // Training or evaluation: ops that behave differently read it (dropout draws a mask in
  // training and is the identity in evaluation; batch norm uses batch or running statistics).
  bool training = true;
  // Products (matmul) with an operand that is an input fed with its nonzeros (Feed::sparse) use
  // the sparse kernels when that input's density (nonzeros / elements) is at most this; above
  // it, or at 0, the dense GEMM. The default is where the two meet on MNIST-sized products
  // (docs/performance.md says how it was measured).
  double sparse_density = kDefaultSparseDensity;
  // Data parallelism: this program is one rank of `ranks`, fed its shard of each batch. In
  // training, batch norm's statistics are then the global batch's (its per-channel sums are
  // summed across ranks, and so are those of its gradient), as one process fed the whole batch
  // computes them; every rank must run the program in step. A program that differentiates batch
  // norm twice throws when run (those graph ops would use each rank's own means). Null: one
  // process.
  Communicator* ranks = nullptr;
};

namespace detail {
struct Compiled;    // the IR in schedule order (lib/program/compile.cpp)
struct ParamStore;  // persistent parameter/state arena (lib/program/param_store.cpp)
struct Plan;        // buffers and steps for one batch size (lib/program/plan.cpp)
// How a program runs (its settings, the same for every step of a run; lib/program/execute.cpp).
struct RunSettings {
  int threads = 1;
  bool training = true;
  std::uint64_t seed = 0;
  std::int64_t examples_before = 0;
  Communicator* ranks = nullptr;
  bool profiling = false;
  double sparse_density = kDefaultSparseDensity;
};
}  // namespace detail

class Program {
 public:
  struct Feed {
    Value input;
    TensorView value;
    // Optionally the same values stored by their nonzeros (gg::to_sparse), with value's shape
    // and dtype: products that read this input may then compute from the nonzeros alone. The
    // caller keeps it alive for the run and in agreement with `value`.
    const SparseMatrix* sparse = nullptr;
  };

  Program(Graph& g, const std::vector<Value>& fetches, const CompileOptions& opts = {});
  ~Program();
  Program(Program&&) noexcept;
  Program& operator=(Program&&) noexcept;

  // Feeds every input the fetches need (a batch size may be new: then it plans, once).
  void run(std::initializer_list<Feed> feeds);
  void run(const std::vector<Feed>& feeds);

  // A fetched value from the last run (a view of program memory, valid until the next run).
  TensorView get(Value v) const;
  double scalar(Value v) const;

  // Parameters and states by name or handle: a writable view of persistent storage.
  TensorView param(const std::string& name) const;
  TensorView param(Value v) const;
  // Copies given values in (any strides); the dtype and shape must be the parameter's, as for
  // feeds: convert with Tensor::copy_of(view, dtype) first if needed.
  void set_param(const std::string& name, const TensorView& value);
  void set_param(Value v, const TensorView& value);
  std::vector<std::string> param_names() const;  // params then states, in creation order
  std::vector<std::string> state_names() const;
  // Re-runs every initialiser in creation order with `rng` (states back to their inits too).
  void init_params(Generator& rng);
  std::size_t param_bytes() const;

  // Bytes of the planned arena for a batch size (plans it if needed; batch ignored when the
  // graph has no open dimension).
  std::size_t planned_bytes(std::int64_t batch);
  // Sum of all planned buffers' sizes without sharing (what a naive allocator would use).
  std::size_t unshared_bytes(std::int64_t batch);
  // Kernel launches per run at a batch size, and the scheduled ops by name, for inspection.
  int num_steps(std::int64_t batch);
  std::vector<std::string> schedule(std::int64_t batch);
  void write_dot(std::ostream& os) const;  // the fused, scheduled program as Graphviz

  // Per-step wall time accumulated over runs while profiling is on (for benchmarks).
  struct StepProfile {
    std::string op, name;
    double seconds = 0;
    std::int64_t calls = 0;
  };
  void set_profiling(bool on);
  std::vector<StepProfile> profile(std::int64_t batch);
  // Every batch size's plan so far, the steps of the same node added up.
  std::vector<StepProfile> profile() const;

  // Which kernel each product with a sparse-capable operand used in the last run: the sparse
  // one when that input was fed with its nonzeros at most sparse_density dense.
  struct ProductChoice {
    std::string op, name, input;
    double density = -1;  // of the input's nonzeros; -1: fed without them
    bool sparse = false;
  };
  std::vector<ProductChoice> product_choices() const;
  void set_sparse_density(double d);
  double sparse_density() const { return run_.sparse_density; }

  void set_threads(int threads);
  int threads() const { return run_.threads; }
  bool training() const { return run_.training; }
  // Sets the "lr" attribute of every op that has one (the optimizers' updates), for schedules;
  // no re-plan. Returns how many ops it changed.
  int set_learning_rate(double lr);
  // Data parallelism: how many examples of the global batch come before the ones the next runs
  // are fed (this rank's shard's place in the batch), so that ops that draw random numbers per
  // example (dropout) draw, for each example, what one process fed the whole batch would. 0 by
  // default: the fed examples are the batch.
  void set_examples_before(std::int64_t n) { run_.examples_before = n; }

 private:
  detail::Plan& plan_for(std::int64_t batch);
  void run_impl(const Feed* feeds, std::size_t n);
  int slot_of(Value v) const;

  const Graph& graph() const;  // the graph, or std::logic_error once it is destroyed

  Graph* graph_ = nullptr;
  std::weak_ptr<const int> graph_lifetime_;
  std::unique_ptr<detail::Compiled> code_;
  std::shared_ptr<detail::ParamStore> params_;
  std::map<std::int64_t, std::unique_ptr<detail::Plan>> plans_;
  detail::Plan* current_ = nullptr;
  detail::RunSettings run_;
};

}  // namespace gg
