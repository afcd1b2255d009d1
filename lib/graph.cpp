#include <gradgraph/graph.hpp>
#include <gradgraph/program.hpp>

#include "ops/op.hpp"

namespace gg {

Init zeros() { return Init{InitKind::zeros, 0, 0, 0, 0}; }
Init constant(double v) { return Init{InitKind::constant, v, 0, 0, 0}; }
Init uniform(double low, double high) { return Init{InitKind::uniform, low, high, 0, 0}; }
Init normal(double mean, double std) { return Init{InitKind::normal, mean, std, 0, 0}; }
Init he_normal(std::int64_t fan_in) { return Init{InitKind::he_normal, 0, 0, fan_in, 0}; }
Init he_uniform(std::int64_t fan_in) { return Init{InitKind::he_uniform, 0, 0, fan_in, 0}; }
Init glorot_normal(std::int64_t fan_in, std::int64_t fan_out) {
  return Init{InitKind::glorot_normal, 0, 0, fan_in, fan_out};
}
Init glorot_uniform(std::int64_t fan_in, std::int64_t fan_out) {
  return Init{InitKind::glorot_uniform, 0, 0, fan_in, fan_out};
}

const Node& Value::node() const {
  if (!valid()) throw GraphError("use of an empty gg::Value");
  return graph->node(id);
}

Value Value::named(const std::string& n) const {
  if (!valid()) throw GraphError("use of an empty gg::Value");
  graph->node_mut(id).name = n;
  return *this;
}

Graph::Graph(DType dtype) : dtype_(dtype) {}

void Graph::check_unique_name(const std::string& name) const {
  if (name.empty()) throw GraphError("graph leaves need a name");
  for (int i = 0; i < size(); ++i) {
    const Node& n = node(i);
    if (n.name == name && (n.op == Op::Input || n.op == Op::Param || n.op == Op::State))
      throw GraphError("the graph already has a node named '" + name + "'");
  }
}

Value Graph::add_leaf(Node n) {
  n.dtype = dtype_;
  n.backward = building_backward;
  auto v = boost::add_vertex(std::move(n), g_);
  return Value{this, static_cast<int>(v)};
}

Value Graph::input(const std::string& name, const Shape& shape) {
  check_unique_name(name);
  Node n;
  n.op = Op::Input;
  n.name = name;
  n.shape = shape;
  return add_leaf(std::move(n));
}

Value Graph::param(const std::string& name, const Shape& shape, const Init& init) {
  check_unique_name(name);
  if (shape.has_dyn()) throw GraphError("param '" + name + "': shape " + to_string(shape) + " has an open (dyn) dimension");
  Node n;
  n.op = Op::Param;
  n.name = name;
  n.shape = shape;
  n.init = init;
  return add_leaf(std::move(n));
}

Value Graph::state(const std::string& name, const Shape& shape, const Init& init) {
  check_unique_name(name);
  if (shape.has_dyn()) throw GraphError("state '" + name + "': shape " + to_string(shape) + " has an open (dyn) dimension");
  Node n;
  n.op = Op::State;
  n.name = name;
  n.shape = shape;
  n.init = init;
  return add_leaf(std::move(n));
}

Value Graph::constant(const Tensor& t, const std::string& name) {
  Node n;
  n.op = Op::Constant;
  n.name = name.empty() ? "const#" + std::to_string(size()) : name;
  n.shape = t.shape();
  n.value = Tensor::copy_of(t.view(), dtype_);
  return add_leaf(std::move(n));
}

Value Graph::scalar(double v) { return fill(Shape{}, v); }

Value Graph::fill(const Shape& shape, double v) {
  Attrs a;
  a.shape = shape;
  a.scalar = v;
  return add_node(Op::Fill, {}, a);
}

Value Graph::add_node(Op op, std::vector<Value> inputs, const Attrs& attrs, const std::string& name) {
  const detail::OpDef& def = detail::op_def(op);
  Node n;
  n.op = op;
  n.attrs = attrs;
  n.dtype = dtype_;
  n.backward = building_backward;
  n.name = name.empty() ? std::string(def.name) + "#" + std::to_string(size()) : name;
  if (def.arity >= 0 && static_cast<int>(inputs.size()) != def.arity)
    throw GraphError(std::string(def.name) + ": expects " + std::to_string(def.arity) + " operands, got " +
                     std::to_string(inputs.size()));
  for (const Value& v : inputs) {
    if (!v.valid()) throw GraphError(std::string(def.name) + ": an operand is an empty gg::Value");
    if (v.graph != this) throw GraphError(std::string(def.name) + ": operand '" + v.name() + "' belongs to another graph");
    n.inputs.push_back(v.id);
  }
  n.shape = def.infer(*this, n);
  auto id = boost::add_vertex(std::move(n), g_);
  for (const Value& v : inputs) boost::add_edge(static_cast<std::size_t>(v.id), id, g_);
  return Value{this, static_cast<int>(id)};
}

std::vector<Value> Graph::params() {
  std::vector<Value> out;
  for (int i = 0; i < size(); ++i)
    if (node(i).op == Op::Param) out.push_back(Value{this, i});
  return out;
}

std::vector<Value> Graph::states() {
  std::vector<Value> out;
  for (int i = 0; i < size(); ++i)
    if (node(i).op == Op::State) out.push_back(Value{this, i});
  return out;
}

Value Graph::find(const std::string& name) {
  for (int i = 0; i < size(); ++i)
    if (node(i).name == name) return Value{this, i};
  throw GraphError("the graph has no node named '" + name + "'");
}

Program Graph::compile(std::initializer_list<Fetch> fetches) { return compile(fetches, CompileOptions{}); }

Program Graph::compile(std::initializer_list<Fetch> fetches, const CompileOptions& opts) {
  std::vector<Value> all;
  for (const Fetch& f : fetches) all.insert(all.end(), f.values.begin(), f.values.end());
  return Program(*this, all, opts);
}

// ---- helpers for op files --------------------------------------------------------------------
namespace detail {

std::string describe(const Graph& g, int id) {
  const Node& n = g.node(id);
  return "'" + n.name + "' " + to_string(n.shape);
}

void fail(const Graph& g, const Node& n, const std::string& what) {
  std::string operands;
  for (std::size_t i = 0; i < n.inputs.size(); ++i) operands += (i ? ", " : "") + describe(g, n.inputs[i]);
  throw GraphError(std::string(op_name(n.op)) + ": " + what + (operands.empty() ? "" : " (operands " + operands + ")"));
}

Shape broadcast_shapes(const Graph& g, const Node& n) {
  const Shape& a = g.node(n.inputs[0]).shape;
  const Shape& b = g.node(n.inputs[1]).shape;
  Shape out;
  out.rank = std::max(a.rank, b.rank);
  for (int i = 0; i < out.rank; ++i) {
    int ia = a.rank - out.rank + i, ib = b.rank - out.rank + i;
    std::int64_t da = ia >= 0 ? a.dims[ia] : 1, db = ib >= 0 ? b.dims[ib] : 1;
    if (da == db || db == 1)
      out.dims[i] = da;
    else if (da == 1)
      out.dims[i] = db;
    else
      throw GraphError(std::string(op_name(n.op)) + ": cannot broadcast " + describe(g, n.inputs[0]) + " with " +
                       describe(g, n.inputs[1]));
  }
  return out;
}

int normalize_axis(const Graph& g, const Node& n, int axis, int rank) {
  int a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank)
    fail(g, n, "axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  return a;
}

Split3 split_at(const Shape& s, int axis) {
  Split3 r;
  for (int i = 0; i < axis; ++i) r.outer *= s.dims[i];
  r.n = s.dims[axis];
  for (int i = axis + 1; i < s.rank; ++i) r.inner *= s.dims[i];
  return r;
}

Strides broadcast_strides(const TensorView& in, const Shape& out) {
  Strides st;
  for (int i = 0; i < out.rank; ++i) {
    int j = in.shape.rank - out.rank + i;
    st.s[i] = (j < 0 || in.shape.dims[j] == 1) ? 0 : in.strides.s[j];
  }
  return st;
}

Value unbroadcast(Value grad, const Shape& to) {
  if (grad.shape() == to) return grad;
  return sum_to(grad, to);
}

}  // namespace detail
}  // namespace gg
