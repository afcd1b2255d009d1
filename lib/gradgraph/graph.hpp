// The static computation graph.
//
// A Graph is a Boost.Graph adjacency_list whose vertices carry a Node (op, attributes, name,
// dtype, static shape) and whose edges run from each operand to its consumer. Node ids are
// vertex indices and only ever grow, so an operand always has a smaller id than its consumer:
// the id order is *a* topological order of the whole graph, which gradients() relies on.
// Programs use boost::topological_sort over the fetched subgraph plus control dependencies.
#pragma once

#include <gradgraph/tensor.hpp>

#include <boost/graph/adjacency_list.hpp>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

namespace gg {

class Graph;
class Program;
struct CompileOptions;

// Every op of the framework. The table in lib/ops/registry.cpp maps each to its OpDef
// (name, arity, differentiable inputs, shape inference, kernels, vector-Jacobian product).
enum class Op : std::uint8_t {
  // leaves
  Input, Param, State, Constant, Fill,
  // linear algebra
  MatMul,
  // elementwise binary (NumPy broadcasting)
  Add, Sub, Mul, Div,
  // elementwise unary
  Neg, Scale, AddScalar, PowScalar, Exp, Log, Sqrt, Relu, Sigmoid, Tanh, ReluGrad,
  // along an axis
  Softmax, LogSoftmax,
  // reductions and broadcasts
  Sum, SumTo, BroadcastTo,
  // shape
  Reshape, Transpose,
  // losses
  SoftmaxCrossEntropy, SoftmaxCrossEntropyGrad,
  // non-differentiable
  Argmax, Equal, Greater,
  // fused (created by the fusion pass, never by users)
  AddRelu, SoftmaxCrossEntropyFused, LossSlot,
  // parameter updates (side effects on persistent storage)
  SgdUpdate, MomentumUpdate, AdamUpdate,
  Count_
};

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

// Op attributes. One plain struct for all ops: each op reads the fields it documents.
struct Attrs {
  int axis = 0;            // Softmax, LogSoftmax, Sum (when !all_axes), Argmax, SCE (class axis)
  bool all_axes = true;    // Sum over every axis
  bool keepdims = false;   // Sum/Argmax
  bool trans_a = false, trans_b = false;  // MatMul
  double scalar = 0.0;     // Scale, AddScalar, PowScalar, Fill, Greater threshold
  double alpha = 1.0;      // MatMul: C = alpha op(A) op(B) (the fusion pass folds scales into it)
  // Scale's factor is scalar * batch^batch_power and MatMul's alpha * batch^batch_power, so a
  // mean over an open dimension divides by the batch size the program is planned for.
  int batch_power = 0;
  Shape shape;             // Reshape / SumTo / BroadcastTo target, Fill shape
  int perm[kMaxRank] = {}; // Transpose
  double lr = 0.0, momentum = 0.0, beta1 = 0.0, beta2 = 0.0, eps = 0.0, weight_decay = 0.0;  // updates
};

struct Node {
  Op op = Op::Input;
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  std::vector<int> inputs;
  Attrs attrs;
  Init init;              // Param / State
  Tensor value;           // Constant
  bool backward = false;  // created by gradients()
  bool fused = false;     // created by the fusion pass
};

using BoostGraph = boost::adjacency_list<boost::vecS, boost::vecS, boost::bidirectionalS, Node>;

// A handle to one node's output. Cheap to copy; valid as long as its Graph lives.
struct Value {
  Graph* graph = nullptr;
  int id = -1;

  bool valid() const { return graph != nullptr && id >= 0; }
  const Node& node() const;
  const Shape& shape() const { return node().shape; }
  const std::string& name() const { return node().name; }
  // Renames the node (names appear in errors, DOT output and checkpoints).
  Value named(const std::string& n) const;
  friend bool operator==(const Value& a, const Value& b) { return a.graph == b.graph && a.id == b.id; }
};

// Build-time errors: shape mismatches, bad attributes, values from different graphs.
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
  explicit Graph(DType dtype = DType::f32);
  Graph(const Graph&) = delete;  // Values point at their graph
  Graph& operator=(const Graph&) = delete;

  DType dtype() const { return dtype_; }

  // Leaves. Shapes may hold gg::dyn (the batch size, fixed when a program is fed).
  Value input(const std::string& name, const Shape& shape);
  Value param(const std::string& name, const Shape& shape, const Init& init = zeros());
  // Persistent, non-trainable program state (optimizer moments, step counters).
  Value state(const std::string& name, const Shape& shape, const Init& init = zeros());
  Value constant(const Tensor& t, const std::string& name = "");
  Value scalar(double v);
  Value fill(const Shape& shape, double v);

  // Adds a node after inferring and checking its shape; throws GraphError naming the op,
  // the operands and their shapes on a mismatch.
  Value add_node(Op op, std::vector<Value> inputs, const Attrs& attrs = {}, const std::string& name = "");

  Program compile(std::initializer_list<Fetch> fetches);
  Program compile(std::initializer_list<Fetch> fetches, const CompileOptions& opts);

  int size() const { return static_cast<int>(boost::num_vertices(g_)); }
  const Node& node(int id) const { return g_[static_cast<std::size_t>(id)]; }
  Node& node_mut(int id) { return g_[static_cast<std::size_t>(id)]; }
  const BoostGraph& boost_graph() const { return g_; }
  Value value(int id) { return Value{this, id}; }
  // Parameters and states in creation order (the order initialisers draw random numbers in).
  std::vector<Value> params();
  std::vector<Value> states();
  Value find(const std::string& name);

  // While set, new nodes are marked as backward nodes (used by gradients()).
  bool building_backward = false;

 private:
  Value add_leaf(Node n);
  void check_unique_name(const std::string& name) const;

  DType dtype_;
  BoostGraph g_;
};

}  // namespace gg
