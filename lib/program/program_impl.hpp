// Internal: the pieces of a Program, one file each.
//   compile.cpp      prune the graph to the fetches, copy it, fuse, order (once per program)
//   fuse.cpp         the fusion pass: offers the IR to the rules the op files define
//   param_store.cpp  the persistent arena of parameters and states
//   plan.cpp         buffers, views, staging and steps for one batch size (once per size)
//   execute.cpp      bind the feeds and run the steps (every run, no allocation)
//   program.cpp      the Program class: the user's handle on all of the above
// None of them knows an op by name: they read what each OpDef declares (lib/ops/op.hpp).
#pragma once

#include <gradgraph/program.hpp>

#include "ops/fusion.hpp"
#include "ops/op.hpp"

#include <array>
#include <functional>
#include <iosfwd>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace gg::detail {

// ---- compile --------------------------------------------------------------------------------------

struct Compiled {
  std::vector<IrNode> ir;                                    // live nodes in schedule order
  std::vector<std::array<Operand, kMaxOutputs>> graph_to_ir;  // graph (node, port) -> IR (node, port)
  std::vector<int> inputs;                                   // IR indices of the inputs
  bool has_dyn = false;                                      // some value has an open dimension
};

Compiled compile(const Graph& g, const std::vector<Value>& fetches, bool fuse);

// Runs every fusion rule over the IR, phase by phase; returns the number of rewrites.
int fuse(std::vector<IrNode>& ir);

// ---- parameters -------------------------------------------------------------------------------------

struct ParamStore {
  struct Entry {
    std::string name;
    int graph_id;
    DType dtype;
    Shape shape;
    Init init;
    bool trainable;
    std::size_t offset;
  };
  const Graph* graph = nullptr;
  std::vector<Entry> entries;  // creation order
  std::byte* arena = nullptr;
  std::size_t bytes = 0;

  explicit ParamStore(const Graph& g);
  ~ParamStore();
  ParamStore(const ParamStore&) = delete;
  ParamStore& operator=(const ParamStore&) = delete;

  TensorView view(const Entry& e) const { return TensorView(arena + e.offset, e.dtype, e.shape); }
  const Entry* by_graph_id(int id) const;
  const Entry& by_name(const std::string& name) const;
  void init(Generator& rng);
};

// ---- plan ---------------------------------------------------------------------------------------------

constexpr int kForever = std::numeric_limits<int>::max();

struct Step {
  KernelFn fn = nullptr;
  const Node* node = nullptr;  // the IR node (its attributes)
  int out[kMaxOutputs] = {-1, -1};
  int in[kMaxInputs] = {-1, -1, -1, -1, -1};
  int n_in = 0, n_out = 0;
  std::size_t ws_offset = 0, ws_bytes = 0;
  double seconds = 0;  // accumulated while profiling
  std::int64_t calls = 0;
  // Operands that are inputs may come with their nonzeros: then sparse_fn may run instead,
  // with the first of them fed sparse enough.
  KernelFn sparse_fn = nullptr;
  int n_sparse = 0;
  int sparse_operand[2] = {-1, -1};
  int sparse_input[2] = {-1, -1};  // the inputs' IR indices
  int last_input = 0;              // which candidate the last run reports
  double last_density = -1;        // its density in the last run (-1: no nonzeros fed)
  bool last_sparse = false;
};

// What a run does before its steps, in schedule order: bind an input's feed, or re-derive a view
// of a feed; then, when a reader needs contiguous memory and the bound view is strided, copy it
// into a staging buffer that the readers use instead.
struct Binding {
  int node = -1;               // IR index
  int slot = -1;               // the value being bound
  int source = -1;             // a view's operand slot; -1 for an input
  Shape shape;                 // the view's resolved shape
  int staging = -1;            // the slot readers use (-1: no reader needs contiguity)
  TensorView buffer;           // the staging buffer
};

struct Plan {
  std::int64_t batch = 0;
  std::byte* arena = nullptr;
  std::size_t arena_bytes = 0, unshared_bytes = 0;
  std::vector<int> first_slot;       // per IR node: the slot of its output 0 (outputs are consecutive)
  std::vector<TensorView> slots;     // every value, then the staging copies
  std::vector<Binding> bindings;
  std::vector<Step> steps;
  ~Plan();
};

// One buffer to place in the arena: live over schedule steps [first, last] inclusive.
struct BufferRequest {
  std::size_t bytes = 0;
  int first = 0, last = 0;
};
// Offsets (64-byte aligned) such that buffers with overlapping lifetimes never overlap in
// memory; returns the arena size. Greedy by size: largest buffers are placed first, each at
// the lowest offset that does not collide with an already placed, simultaneously live one.
std::size_t plan_offsets(const std::vector<BufferRequest>& reqs, std::vector<std::size_t>& offsets);

std::unique_ptr<Plan> make_plan(const Compiled& c, const ParamStore& params, std::int64_t batch);

// ---- execute ---------------------------------------------------------------------------------------------

// The batch size the feeds fix (0 without open dimensions); checks every input is fed with its
// dtype and static shape, and that all open dimensions agree.
std::int64_t batch_of(const Compiled& c, const Graph& g, const Program::Feed* feeds, std::size_t n);
void execute(Plan& p, const Compiled& c, const Graph& g, const Program::Feed* feeds, std::size_t n, const RunSettings& run);

// ---- Graphviz ----------------------------------------------------------------------------------------

// The one DOT writer (lib/dot.cpp), for a graph and for a program's IR: op, name, attributes, dtype
// and shape per node, coloured by role.
void write_dot(std::ostream& os, const Structure& structure, const std::function<const Node&(std::size_t)>& node,
               const char* name);

}  // namespace gg::detail
