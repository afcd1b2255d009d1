// The static computation graph.
//
// A Graph holds Nodes (op, typed attributes, name, and for each output a dtype and a static
// shape) in stable storage: a node never moves once added, so references to it stay valid while
// the graph grows. Its structure (an edge from each operand's node to its consumer) is a
// Boost.Graph adjacency_list, used for what Boost.Graph is good at: reachability when a program
// prunes the graph to its fetches, topological order, and Graphviz output.
//
// Node ids only ever grow and an operand always exists before its consumer, so the id order is
// *a* topological order of the whole graph, which gradients() relies on. Programs sort with
// boost::topological_sort, because fusion and parameter updates add constraints of their own.
#pragma once

#include <gradgraph/tensor.hpp>

#include <boost/graph/adjacency_list.hpp>

#include <cstdint>
#include <deque>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace gg {

class Graph;
class Program;
struct CompileOptions;

namespace detail {
struct OpDef;     // what an op is: lib/ops/op.hpp
struct AttrInfo;  // how an attribute struct prints and is set: lib/ops/op.hpp
}  // namespace detail

enum class InitKind : std::uint8_t { zeros, constant, uniform, normal, he_normal, he_uniform, glorot_normal, glorot_uniform };

// How a parameter is filled when a program is created (or re-initialised).
// fan_in/fan_out: 0 means "derive from the shape" (PyTorch's convention for weights stored
// {out, in, ...}: fan_in = product of dims 1.., fan_out = dim 0 * product of dims 2..).
struct Init {
  InitKind kind = InitKind::zeros;
  double a = 0.0;  // constant value, or uniform low, or normal mean
  double b = 0.0;  // uniform high, or normal std
  std::int64_t fan_in = 0, fan_out = 0;
};
Init zeros();
Init constant(double v);
Init uniform(double low, double high);
Init normal(double mean, double std);
Init he_normal(std::int64_t fan_in = 0);   // N(0, 2 / fan_in), the notebook's choice
Init he_uniform(std::int64_t fan_in = 0);  // U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))
Init glorot_normal(std::int64_t fan_in = 0, std::int64_t fan_out = 0);
Init glorot_uniform(std::int64_t fan_in = 0, std::int64_t fan_out = 0);

// A node's typed attributes: one small struct per op (MatMulAttrs, SliceAttrs, ...), defined and
// documented next to the op in lib/ops/<family>.cpp, held here by value in a fixed-size block
// (ggml's op_params, with a type check). Ops read them with as<A>(), which throws on a type
// mismatch; to_string() prints every field by name ("trans_a=false, trans_b=true, alpha=1") for
// errors, DOT labels and checkpoint descriptions.
inline constexpr std::size_t kAttrBytes = 96;
class Attrs {
 public:
  Attrs() = default;
  template <typename A> explicit Attrs(const A& a);  // lib/ops/op.hpp
  template <typename A> const A& as() const;
  template <typename A> A& as();
  const detail::AttrInfo* info() const { return info_; }
  bool empty() const { return info_ == nullptr; }
  std::string to_string() const;
  // Sets the numeric field `field` if the struct has one; returns whether it did.
  bool set_number(std::string_view field, double value);

 private:
  const detail::AttrInfo* info_ = nullptr;
  alignas(8) unsigned char bytes_[kAttrBytes] = {};
};

// Up to two outputs per node (the fused loss writes its gradient and the loss).
inline constexpr int kMaxOutputs = 2;

// One output of a node: its element type and static shape (may hold gg::dyn).
struct Port {
  DType dtype = DType::f32;
  Shape shape;
};

// An operand: output `port` of node `node`.
struct Operand {
  int node = -1;
  int port = 0;
  friend bool operator==(const Operand& a, const Operand& b) { return a.node == b.node && a.port == b.port; }
};

struct Node {
  const detail::OpDef* op = nullptr;
  std::string name;
  std::vector<Operand> inputs;
  int num_outputs = 1;
  Port outputs[kMaxOutputs];
  Attrs attrs;
  Init init;              // param / state
  Tensor value;           // constant
  bool backward = false;  // created by gradients()
  bool fused = false;     // created by the fusion pass

  const Port& out(int port = 0) const { return outputs[port]; }
  const char* op_name() const;
};

// Structure only: nodes live in the Graph's stable storage, indexed by vertex number.
using Structure = boost::adjacency_list<boost::vecS, boost::vecS, boost::bidirectionalS>;

// A handle to one output of one node. Cheap to copy; valid as long as its Graph lives. Every
// accessor returns by value or refers to stable node storage, so nothing it hands out is
// invalidated when the graph grows.
struct Value {
  Graph* graph = nullptr;
  int id = -1;
  int port = 0;

  bool valid() const { return graph != nullptr && id >= 0; }
  const Node& node() const;
  Shape shape() const;
  DType dtype() const;
  std::string name() const;
  const char* op_name() const;
  Operand operand() const { return Operand{id, port}; }
  // Renames the node (names appear in errors, DOT output and checkpoints).
  Value named(const std::string& n) const;
  friend bool operator==(const Value& a, const Value& b) {
    return a.graph == b.graph && a.id == b.id && a.port == b.port;
  }
};

// Build-time errors: shape and dtype mismatches, bad attributes, values from different graphs.
struct GraphError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// What `compile` accepts: single values and lists of values, mixed: g.compile({loss, grads}).
struct Fetch {
  std::vector<Value> values;
  Fetch(Value v) : values{v} {}
  Fetch(const std::vector<Value>& vs) : values(vs) {}
};

class Graph {
 public:
  // `dtype` is the graph's float type: the default of inputs, params and fills made without an
  // explicit one. Nodes carry their own dtypes; float32 and float64 never mix without gg::cast.
  explicit Graph(DType dtype = DType::f32);
  Graph(const Graph&) = delete;  // Values point at their graph
  Graph& operator=(const Graph&) = delete;

  DType dtype() const { return dtype_; }

  // Leaves. Shapes may hold gg::dyn (the batch size, fixed when a program is fed).
  Value input(const std::string& name, const Shape& shape);
  Value input(const std::string& name, const Shape& shape, DType dtype);
  // Trainable, persistent, float. Set given values with Program::set_param after compiling.
  Value param(const std::string& name, const Shape& shape, const Init& init = zeros());
  Value param(const std::string& name, const Shape& shape, const Init& init, DType dtype);
  // Persistent, non-trainable program state (optimizer moments, step counters).
  Value state(const std::string& name, const Shape& shape, const Init& init = zeros());
  Value state(const std::string& name, const Shape& shape, const Init& init, DType dtype);
  // A copy of `t`, with t's dtype.
  Value constant(const Tensor& t, const std::string& name = "");
  Value scalar(double v);
  Value scalar(double v, DType dtype);
  Value fill(const Shape& shape, double v);
  Value fill(const Shape& shape, double v, DType dtype);

  Program compile(std::initializer_list<Fetch> fetches);
  Program compile(std::initializer_list<Fetch> fetches, const CompileOptions& opts);

  int size() const { return static_cast<int>(nodes_.size()); }
  // A reference into stable storage: valid for the graph's lifetime.
  const Node& node(int id) const;
  const Structure& structure() const { return structure_; }
  Value value(int id, int port = 0) { return Value{this, id, port}; }
  // Parameters and states in creation order (the order initialisers draw random numbers in).
  std::vector<Value> params();
  std::vector<Value> states();
  Value find(const std::string& name);

 private:
  friend struct GraphBuilder;  // lib/graph.cpp: the one door through which nodes are added
  friend class Program;        // holds lifetime_ weakly, to refuse to run once the graph is gone
  Value add_leaf(const detail::OpDef& op, Node n, DType dtype, const Shape& shape);
  void check_unique_name(const std::string& name) const;

  DType dtype_;
  std::deque<Node> nodes_;  // stable: a deque never moves its elements when it grows
  Structure structure_;
  bool building_backward_ = false;
  std::shared_ptr<const int> lifetime_ = std::make_shared<const int>(0);  // expires with the graph
};

// One line per node ("Z1 = add(matmul#6, b1) -> float32 {64, dyn}"), attributes included:
// what checkpoints store as the network's description. Backward nodes only if asked.
std::string describe(const Graph& g, bool include_backward = false);

}  // namespace gg
