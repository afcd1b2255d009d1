// Internal: what an op is. Each lib/ops/<family>.cpp defines OpDefs (shape inference, forward
// kernels for float and double, vector-Jacobian product) side by side; registry.cpp maps the Op
// enum to them.
#pragma once

#include <gradgraph/graph.hpp>
#include <gradgraph/ops.hpp>

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace gg::detail {

// The most operands an op takes (adam_update: param, grad, m, v, step).
constexpr int kMaxInputs = 5;

struct KernelArgs {
  TensorView out;
  TensorView in[kMaxInputs];
  int n_in = 0;
  const Attrs* attrs = nullptr;
  double scale = 1.0;   // Scale's factor resolved for the planned batch size
  int threads = 1;
};
using KernelFn = void (*)(const KernelArgs&);

// Returns one gradient per input (an invalid Value where none is wanted or defined).
// `out` is the node's own output (so VJPs can reuse it: relu, exp, sigmoid, tanh, softmax).
using VjpFn = std::vector<Value> (*)(Graph& g, const Node& node, Value out, Value grad,
                                     const std::vector<bool>& wanted);
using InferFn = Shape (*)(const Graph& g, const Node& node);

enum OpFlag : std::uint32_t {
  kLeaf = 1u << 0,            // no kernel: input, param, state, constant
  kView = 1u << 1,            // output aliases input 0's memory (no kernel)
  kStrided = 1u << 2,         // kernel accepts strided (non-contiguous) inputs
  kSideEffect = 1u << 3,      // writes persistent storage (parameter updates)
  kNonDifferentiable = 1u << 4,
};

struct OpDef {
  const char* name;
  int arity;                   // -1: any number
  std::uint32_t flags;
  std::uint32_t diff_inputs;   // bit i set: input i is differentiable
  std::uint32_t inplace_inputs;  // bit i set: output may overwrite input i when shapes match
  InferFn infer;
  KernelFn fwd32, fwd64;
  VjpFn vjp;
};

const OpDef& op_def(Op op);
inline const char* op_name(Op op) { return op_def(op).name; }

// ---- helpers shared by op files -------------------------------------------------------------

// "'Z1' {64, dyn}" for error messages.
std::string describe(const Graph& g, int id);
[[noreturn]] void fail(const Graph& g, const Node& n, const std::string& what);

// NumPy broadcasting of two static shapes (dyn == dyn, 1 broadcasts); throws naming both.
Shape broadcast_shapes(const Graph& g, const Node& n);
int normalize_axis(const Graph& g, const Node& n, int axis, int rank);

// View a shape as (outer, n, inner) around `axis`: element (o, k, i) at (o * n + k) * inner + i.
struct Split3 {
  std::int64_t outer = 1, n = 1, inner = 1;
};
Split3 split_at(const Shape& s, int axis);

// Deterministic static partition of [0, n) over the program's threads; runs inline when the
// work is too small to pay for a parallel region.
template <typename F>
void parallel_for(std::int64_t n, int threads, std::int64_t work_per_item, F&& f) {
  // Below this much work a parallel region costs more than it saves (and on a busy machine a
  // descheduled worker can stall it for a whole time slice).
  const std::int64_t kMinWork = 1 << 18;
  if (threads <= 1 || n < 2 || n * work_per_item < kMinWork) {
    f(std::int64_t{0}, n);
    return;
  }
  const int t = static_cast<int>(std::min<std::int64_t>(threads, n));
#pragma omp parallel num_threads(t)
  {
    const int id = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const std::int64_t b = n * id / nt, e = n * (id + 1) / nt;
    if (b < e) f(b, e);
  }
}

// Reductions keep one partial sum per thread (indexed by the OpenMP thread number) and add them
// in thread order, so results are deterministic for a fixed thread count. Programs clamp their
// thread count to this.
constexpr int kMaxThreads = 64;

// Offsets of an N-d index walk, used by the general (slow) broadcast paths.
struct IndexWalker {
  const Shape& shape;
  std::int64_t idx[kMaxRank] = {};
  explicit IndexWalker(const Shape& s) : shape(s) {}
  void next() {
    for (int d = shape.rank - 1; d >= 0; --d) {
      if (++idx[d] < shape.dims[d]) return;
      idx[d] = 0;
    }
  }
};

// Strides of `in` when broadcast to `out` (0 on broadcast dims), aligned from the right.
Strides broadcast_strides(const TensorView& in, const Shape& out);

template <typename T>
T* data(const TensorView& v) {
  return static_cast<T*>(v.data);
}

inline Graph& graph_of(Value v) {
  if (!v.valid()) throw GraphError("use of an empty gg::Value");
  return *v.graph;
}

// Value helpers for VJPs.
inline Value val(Graph& g, int id) { return Value{&g, id}; }
inline Value in(Graph& g, const Node& n, int i) { return Value{&g, n.inputs[static_cast<std::size_t>(i)]}; }
// s * batch^batch_power * v: a scaling whose factor depends on the planned batch size.
Value scale_batch(Value v, double s, int batch_power);
// Number of elements of `shape` outside `axis` as (static part, number of dyn dims): the
// number of examples a loss over `axis` averages over is static * batch^dyn_count.
struct Count {
  double fixed = 1;
  int dyn_count = 0;
};
Count count_except(const Shape& shape, int axis);

// Reduces a broadcast gradient back to the shape of the input it flows into.
Value unbroadcast(Value grad, const Shape& to);

}  // namespace gg::detail
