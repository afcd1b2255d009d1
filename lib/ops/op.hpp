// Internal: what an op is.
//
// An op is one `OpDef`, defined with GG_OP in its family file lib/ops/<family>.cpp next to
// everything else about it: its attribute struct, shape-and-dtype inference, kernels, VJP,
// aliasing and in-place rules, workspace size, and (between #ifdef GG_PUBLIC_API markers) its
// public constructor. lib/ops/gen_ops.py collects the GG_OP definitions into the registry and the
// public blocks into <gradgraph/ops.hpp>; nothing else lists ops. The graph, autodiff, the
// compiler, the planner and the executor read only the OpDef fields below, never an op's name.
#pragma once

#include <gradgraph/graph.hpp>
#include <gradgraph/ops.hpp>
#include <gradgraph/sparse.hpp>

#include <omp.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace gg::detail {

// The most operands an op takes (adam_update: param, grad, m, v, step).
constexpr int kMaxInputs = 5;
// Reductions keep one partial sum per thread (indexed by the OpenMP thread number) and add them
// in thread order, so results are deterministic for a fixed thread count. Programs clamp their
// thread count to this.
constexpr int kMaxThreads = 64;

// ---- typed attributes ---------------------------------------------------------------------------

// A set of axes (bit i: axis i), for reductions over several axes.
struct AxisSet {
  std::uint32_t bits = 0;
  bool has(int axis) const { return (bits >> axis) & 1u; }
  void add(int axis) { bits |= 1u << axis; }
  int count() const { return __builtin_popcount(bits); }
};

// Prints "name=value" pairs; the values of doubles are the shortest text that reads back exactly.
struct AttrPrinter {
  std::string& out;
  void key(const char* name) {
    if (!out.empty()) out += ", ";
    out += name;
    out += '=';
  }
  void operator()(const char* n, const bool& v) { key(n), out += v ? "true" : "false"; }
  void operator()(const char* n, const int& v) { key(n), out += std::to_string(v); }
  void operator()(const char* n, const std::int64_t& v) { key(n), out += std::to_string(v); }
  void operator()(const char* n, const double& v) {
    key(n);
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
  }
  void operator()(const char* n, const Shape& v) { key(n), out += gg::to_string(v); }
  void operator()(const char* n, const DType& v) { key(n), out += dtype_name(v); }
  void operator()(const char* n, const AxisSet& v) {
    key(n);
    out += '{';
    bool first = true;
    for (int i = 0; i < 32; ++i)
      if (v.has(i)) out += (first ? "" : ", ") + std::to_string(i), first = false;
    out += '}';
  }
};

// Sets one numeric field by name (Program::set_learning_rate sets every "lr").
struct AttrSetter {
  std::string_view field;
  double value;
  bool done = false;
  template <typename X>
  void operator()(const char* n, X& x) {
    if constexpr (std::is_arithmetic_v<X> && !std::is_same_v<X, bool>) {
      if (field == n) x = static_cast<X>(value), done = true;
    }
  }
};

// How one attribute struct prints and is set. Attribute structs are trivially copyable, fit in
// kAttrBytes, and list their fields in a member template: void visit(F&& f) { f("axis", axis); }
struct AttrInfo {
  std::size_t size;
  void (*print)(const void* attrs, std::string& out);
  bool (*set_number)(void* attrs, std::string_view field, double value);
};

template <typename A>
inline const AttrInfo kAttrInfo = {
    sizeof(A),
    [](const void* p, std::string& out) {
      A copy;  // visit() is non-const (AttrSetter writes through it): print a copy
      std::memcpy(static_cast<void*>(&copy), p, sizeof(A));
      AttrPrinter pr{out};
      copy.visit(pr);
    },
    [](void* p, std::string_view field, double value) {
      A* a = static_cast<A*>(p);
      AttrSetter s{field, value};
      a->visit(s);
      return s.done;
    },
};

// Attributes shared by two families. scale: y = factor * batch^batch_power * x; the power
// resolves a mean over the open batch dimension when the program is planned (0 for user
// scales). The GEMM fusion rules (matmul.cpp) fold it into matmul's alpha.
struct ScaleAttrs {
  double factor = 1;
  int batch_power = 0;
  template <typename F> void visit(F&& f) { f("factor", factor), f("batch_power", batch_power); }
};

// sgd_update and momentum_update (update.cpp); the GEMM family folds a plain SGD update into the
// weight gradient's GEMM (matmul.cpp). Every "lr" field is what Program::set_learning_rate sets.
struct SgdAttrs {
  double lr = 0, momentum = 0, weight_decay = 0;
  bool nesterov = false;
  template <typename F> void visit(F&& f) {
    f("lr", lr), f("momentum", momentum), f("weight_decay", weight_decay), f("nesterov", nesterov);
  }
};

}  // namespace gg::detail

namespace gg {

template <typename A>
Attrs::Attrs(const A& a) : info_(&detail::kAttrInfo<A>) {
  static_assert(std::is_trivially_copyable_v<A>, "attribute structs must be trivially copyable");
  static_assert(sizeof(A) <= kAttrBytes, "attribute struct larger than kAttrBytes");
  static_assert(alignof(A) <= 8, "attribute struct over-aligned");
  std::memcpy(bytes_, static_cast<const void*>(&a), sizeof(A));
}

template <typename A>
const A& Attrs::as() const {
  if (info_ != &detail::kAttrInfo<A>) throw std::logic_error("Attrs::as: the node holds another attribute type");
  return *reinterpret_cast<const A*>(bytes_);
}

template <typename A>
A& Attrs::as() {
  if (info_ != &detail::kAttrInfo<A>) throw std::logic_error("Attrs::as: the node holds another attribute type");
  return *reinterpret_cast<A*>(bytes_);
}

}  // namespace gg

namespace gg::detail {

// ---- kernels ------------------------------------------------------------------------------------

// What a kernel receives. Operands and outputs are views of program memory; outputs are
// contiguous unless the op aliases an operand. `batch` is the size the program is planned for
// (factors such as a mean's 1/m are resolved from it); `workspace` is the op's declared scratch.
struct KernelArgs {
  TensorView out[kMaxOutputs];
  TensorView in[kMaxInputs];
  int n_in = 0, n_out = 0;
  const Node* node = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  std::int64_t batch = 0;
  int threads = 1;
  bool training = true;    // the program's mode (CompileOptions::training)
  std::uint64_t seed = 0;  // the program's seed (CompileOptions::seed), for ops that draw random numbers
  // Examples of the global batch before the ones fed (Program::set_examples_before): ops that
  // draw per example draw for the global example, as one process fed the whole batch would.
  std::int64_t examples_before = 0;
  // The ranks of a data-parallel run this program is one of (CompileOptions::ranks), or null:
  // batch norm's training statistics are summed across them.
  Communicator* ranks = nullptr;
  // For an op's sparse kernels: operand `sparse_operand` (an input) has the same values as `sparse`.
  const SparseMatrix* sparse = nullptr;
  int sparse_operand = -1;

  template <typename A> const A& attrs() const { return node->attrs.as<A>(); }
};
using KernelFn = void (*)(const KernelArgs&);

// Kernels by dtype; which dtype selects them is OpDef::kernel_key.
struct Kernels {
  KernelFn f32 = nullptr, f64 = nullptr, i64 = nullptr, u8 = nullptr;
  KernelFn for_dtype(DType t) const {
    switch (t) {
      case DType::f32: return f32;
      case DType::f64: return f64;
      case DType::i64: return i64;
      case DType::u8: return u8;
    }
    return nullptr;
  }
  bool any() const { return f32 || f64 || i64 || u8; }
};

// ---- inference, views, gradients ----------------------------------------------------------------

// The outputs an op infers for a node: dtype and shape each.
struct Outputs {
  Port port[kMaxOutputs];
  int count = 1;
  Outputs(Port p) : port{p} {}  // NOLINT: one output is the common case
  Outputs(Port a, Port b) : port{a, b}, count(2) {}
};
using InferFn = Outputs (*)(const Graph& g, const Node& n);

// Where a view's elements are, relative to its operand's buffer (in elements).
struct Layout {
  Shape shape;
  Strides strides;
  std::int64_t offset = 0;
  bool contiguous() const;
};
// A view op maps its operand's layout to its output's; returns false when it cannot (a reshape
// of non-contiguous memory). Pure arithmetic: the executor calls it on every run for views of
// feeds, so it must not allocate.
using ViewFn = bool (*)(const Node& n, const Layout& in, const Shape& out_shape, Layout& out);

// Scratch bytes a kernel needs for the resolved shapes of its operands (im2col, say).
using WorkspaceFn = std::size_t (*)(const Node& n, const Shape* in_shapes, int n_in);
// The same for the sparse kernels, with operand `sparse_operand` the sparse one and its nonzeros
// grouped along its axis `major`.
using SparseWorkspaceFn = std::size_t (*)(const Node& n, const Shape* in_shapes, int n_in, int sparse_operand, int major);

// What a VJP sees: the node, its outputs, the gradient arriving at each output (invalid where
// none arrives), and which operands want a gradient. It returns one Value per operand (invalid
// where none is wanted or defined), each of its operand's shape and dtype.
struct VjpArgs {
  Graph& g;
  const Node& node;
  int id;
  Value out[kMaxOutputs];
  Value grad[kMaxOutputs];
  bool wanted[kMaxInputs] = {};

  Value y() const { return out[0]; }
  Value dy() const { return grad[0]; }
  Value in(int i) const { return Value{&g, node.inputs[static_cast<std::size_t>(i)].node, node.inputs[static_cast<std::size_t>(i)].port}; }
  Shape in_shape(int i) const { return in(i).shape(); }
  template <typename A> const A& attrs() const { return node.attrs.as<A>(); }
};
using VjpFn = std::vector<Value> (*)(const VjpArgs& a);

// Writes a node into an ONNX model through the writer's view of it (lib/ops/onnx.hpp).
class OnnxWriter;
using OnnxFn = void (*)(OnnxWriter& w);

// ---- the op definition ---------------------------------------------------------------------------

enum OpFlag : std::uint32_t {
  kNonDifferentiable = 1u << 0,  // gradients stop here (argmax, comparisons, updates)
  kStrided = 1u << 1,            // the kernel (or view) reads non-contiguous operands
  kInternal = 1u << 2,           // created only by passes (autodiff, fusion, optimizers): no public constructor
  kOnce = 1u << 3,               // operand-free; its kernel runs once, when a program is planned
  kTrainable = 1u << 4,          // a parameter: Graph::params() lists it, gradients flow into it
};

// Where an op's output lives.
enum class Storage : std::uint8_t {
  computed,    // planned program memory (an arena buffer), or an alias of an operand
  external,    // the caller's memory, bound by each run (inputs)
  persistent,  // the parameter store, kept between runs and saved in checkpoints (params, states)
  constant,    // the node's own tensor
};

struct OpDef {
  const char* name;
  int arity = 0;                    // operands; -1: any number
  int outputs = 1;
  std::uint32_t flags = 0;
  Storage storage = Storage::computed;
  std::uint32_t diff_inputs = 0;    // bit i: operand i can receive a gradient
  std::uint32_t inplace = 0;        // bit i: output 0 may overwrite operand i (same bytes, dying)
  std::uint32_t writes = 0;         // bit i: the kernel writes operand i (updates, all-reduce)
  int alias = -1;                   // output 0 is operand `alias`'s memory (viewed through `view`)
  ViewFn view = nullptr;            // with alias: the layout of the output; null: the same layout
  Kernels kernels = {};             // none: a leaf, or a pure view (alias without kernel)
  int kernel_key = -1;              // the operand whose dtype picks the kernel; -1: output 0
  InferFn infer = nullptr;
  WorkspaceFn workspace = nullptr;
  VjpFn vjp = nullptr;
  // The op's ONNX equivalent (gg::onnx::export_model); null: it has none, and exporting a graph
  // that uses it is refused naming the op.
  OnnxFn onnx = nullptr;
  // Kernels for when an operand that is a program input is fed with its nonzeros too
  // (Program::Feed::sparse) and is at most CompileOptions::sparse_density dense; bit i of
  // `sparse_operands`: operand i may be the sparse one. The planner reserves their workspace
  // where an input is such an operand; each run picks these or `kernels` from the feed.
  Kernels sparse_kernels = {};
  std::uint32_t sparse_operands = 0;
  SparseWorkspaceFn sparse_workspace = nullptr;

  bool is_leaf() const { return storage != Storage::computed; }
  bool is_pure_view() const { return alias >= 0 && !kernels.any(); }
};

// Defines an op with external linkage in namespace gg::detail, where gen_ops.py finds it:
//   GG_OP(relu_op) = {.name = "relu", .arity = 1, ...};
#define GG_OP(var) extern const ::gg::detail::OpDef var; const ::gg::detail::OpDef var

// Every op, in name order (generated from the GG_OP definitions).
std::span<const OpDef* const> all_ops();
const OpDef* find_op(std::string_view name);

// ---- building nodes -------------------------------------------------------------------------------

// Adds a node after checking its operands and running the op's inference; throws GraphError
// naming the op, the operands and their shapes on a mismatch. The only way nodes are added:
// public constructors in the family files call it with their own op.
Value make(const OpDef& op, std::initializer_list<Value> operands, const Attrs& attrs = {}, const std::string& name = "");
Value make(const OpDef& op, const std::vector<Value>& operands, const Attrs& attrs = {}, const std::string& name = "");
// All outputs of a multi-output node.
std::vector<Value> outputs_of(Value v);

// While it lives, new nodes of `g` are marked as backward nodes (gradients()).
struct BackwardScope {
  Graph& g;
  bool saved;
  explicit BackwardScope(Graph& gr);
  ~BackwardScope();
};

// ---- helpers for inference --------------------------------------------------------------------------

const Port& operand(const Graph& g, const Node& n, int i);
// "'Z1' float32 {64, dyn}" for error messages.
std::string describe(const Graph& g, Operand o);
[[noreturn]] void fail(const Graph& g, const Node& n, const std::string& what);
// Operand i must be float32 or float64 (names the op and the operand otherwise).
DType require_float(const Graph& g, const Node& n, int i);
// Operands i and j must have the same dtype ("use gg::cast" otherwise).
DType require_same_dtype(const Graph& g, const Node& n, int i, int j);
// NumPy broadcasting of operands 0 and 1 (dyn == dyn, 1 broadcasts); throws naming both.
Shape broadcast_shapes(const Graph& g, const Node& n);
int normalize_axis(const Graph& g, const Node& n, int axis, int rank);

// ---- helpers for kernels ------------------------------------------------------------------------------

// View a shape as (outer, n, inner) around `axis`: element (o, k, i) at (o * n + k) * inner + i.
struct Split3 {
  std::int64_t outer = 1, n = 1, inner = 1;
};
Split3 split_at(const Shape& s, int axis);

// s * batch^batch_power: a factor that depends on the batch size a program is planned for (the
// 1/m of a mean over examples), the same arithmetic wherever it is resolved.
double batch_factor(double s, int batch_power, std::int64_t batch);

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

// ---- helpers for VJPs ------------------------------------------------------------------------------

// s * batch^batch_power * v as a node (see batch_factor).
Value scale_batch(Value v, double s, int batch_power);
// Number of elements of `shape` outside `axis` as (static part, number of dyn dims): the
// number of examples a loss over `axis` averages over is static * batch^dyn_count.
struct Count {
  double fixed = 1;
  int dyn_count = 0;
};
Count count_except(const Shape& shape, int axis);
// Reduces a broadcast gradient back to the shape of the operand it flows into.
Value unbroadcast(Value grad, const Shape& to);

}  // namespace gg::detail
