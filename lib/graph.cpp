#include <gradgraph/graph.hpp>
#include <gradgraph/program.hpp>

#include "op_list.hpp"
#include "ops/op.hpp"

#include <cmath>

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

std::string Attrs::to_string() const {
  std::string out;
  if (info_) info_->print(bytes_, out);
  return out;
}

bool Attrs::set_number(std::string_view field, double value) { return info_ && info_->set_number(bytes_, field, value); }

const char* Node::op_name() const { return op ? op->name : "?"; }

// ---- values -------------------------------------------------------------------------------------

const Node& Value::node() const {
  if (!valid()) throw GraphError("use of an empty gg::Value");
  const Node& n = graph->node(id);
  if (port < 0 || port >= n.num_outputs)
    throw GraphError("node '" + n.name + "' has no output " + std::to_string(port) + " (it has " + std::to_string(n.num_outputs) + ")");
  return n;
}
Shape Value::shape() const { return node().out(port).shape; }
DType Value::dtype() const { return node().out(port).dtype; }
std::string Value::name() const {
  const Node& n = node();
  return n.num_outputs > 1 ? n.name + ":" + std::to_string(port) : n.name;
}
const char* Value::op_name() const { return node().op_name(); }

// The one door through which nodes are added and renamed (Graph's friend).
struct GraphBuilder {
  static Node& mut(Graph& g, int id) { return g.nodes_[static_cast<std::size_t>(id)]; }
  static bool& backward(Graph& g) { return g.building_backward_; }

  static Value add(Graph& g, Node n, const std::vector<Value>& operands) {
    n.backward = g.building_backward_;
    const int id = g.size();
    g.nodes_.push_back(std::move(n));
    boost::add_vertex(g.structure_);
    for (const Value& v : operands) boost::add_edge(static_cast<std::size_t>(v.id), static_cast<std::size_t>(id), g.structure_);
    return Value{&g, id, 0};
  }
  static Value leaf(Graph& g, const detail::OpDef& op, Node n, DType dtype, const Shape& shape) { return g.add_leaf(op, std::move(n), dtype, shape); }
};

Value Value::named(const std::string& n) const {
  if (!valid()) throw GraphError("use of an empty gg::Value");
  GraphBuilder::mut(*graph, id).name = n;
  return *this;
}

// ---- the graph ----------------------------------------------------------------------------------

Graph::Graph(DType dtype) : dtype_(dtype) {
  if (!is_float(dtype)) throw GraphError(std::string("Graph: the graph's dtype must be float32 or float64, not ") + dtype_name(dtype));
}

const Node& Graph::node(int id) const {
  if (id < 0 || id >= size()) throw GraphError("Graph::node: no node " + std::to_string(id));
  return nodes_[static_cast<std::size_t>(id)];
}

void Graph::check_unique_name(const std::string& name) const {
  if (name.empty()) throw GraphError("graph leaves need a name");
  for (const Node& n : nodes_)
    if (n.name == name && n.op->is_leaf() && n.op->storage != detail::Storage::constant)
      throw GraphError("the graph already has a node named '" + name + "'");
}

Value Graph::add_leaf(const detail::OpDef& op, Node n, DType dtype, const Shape& shape) {
  n.op = &op;
  n.outputs[0] = Port{dtype, shape};
  n.num_outputs = 1;
  return GraphBuilder::add(*this, std::move(n), {});
}

Value Graph::input(const std::string& name, const Shape& shape) { return input(name, shape, dtype_); }

Value Graph::input(const std::string& name, const Shape& shape, DType dtype) {
  check_unique_name(name);
  Node n;
  n.name = name;
  return add_leaf(detail::input_op, std::move(n), dtype, shape);
}

namespace {
void check_persistent(const char* what, const std::string& name, const Shape& shape, const Init& init, DType dtype) {
  if (shape.has_dyn())
    throw GraphError(std::string(what) + " '" + name + "': shape " + to_string(shape) + " has an open (dyn) dimension");
  (void)shape.numel();  // throws for shapes beyond 2^63 elements
  if (!is_float(dtype) && init.kind != InitKind::zeros && init.kind != InitKind::constant)
    throw GraphError(std::string(what) + " '" + name + "': a " + dtype_name(dtype) +
                     " tensor can only be initialised with zeros or a constant");
}
}  // namespace

Value Graph::param(const std::string& name, const Shape& shape, const Init& init) { return param(name, shape, init, dtype_); }

Value Graph::param(const std::string& name, const Shape& shape, const Init& init, DType dtype) {
  check_unique_name(name);
  if (!is_float(dtype)) throw GraphError("param '" + name + "': parameters are float32 or float64, not " + dtype_name(dtype));
  check_persistent("param", name, shape, init, dtype);
  Node n;
  n.name = name;
  n.init = init;
  return add_leaf(detail::param_op, std::move(n), dtype, shape);
}

Value Graph::state(const std::string& name, const Shape& shape, const Init& init) { return state(name, shape, init, dtype_); }

Value Graph::state(const std::string& name, const Shape& shape, const Init& init, DType dtype) {
  check_unique_name(name);
  check_persistent("state", name, shape, init, dtype);
  Node n;
  n.name = name;
  n.init = init;
  return add_leaf(detail::state_op, std::move(n), dtype, shape);
}

Value Graph::constant(const Tensor& t, const std::string& name) {
  Node n;
  n.name = name.empty() ? "const#" + std::to_string(size()) : name;
  n.value = Tensor::copy_of(t.view());
  return add_leaf(detail::constant_op, std::move(n), t.dtype(), t.shape());
}

Value Graph::scalar(double v) { return fill(Shape{}, v, dtype_); }
Value Graph::scalar(double v, DType dtype) { return fill(Shape{}, v, dtype); }
Value Graph::fill(const Shape& shape, double v) { return fill(shape, v, dtype_); }

std::vector<Value> Graph::params() {
  std::vector<Value> out;
  for (int i = 0; i < size(); ++i)
    if (node(i).op->flags & detail::kTrainable) out.push_back(Value{this, i, 0});
  return out;
}

std::vector<Value> Graph::states() {
  std::vector<Value> out;
  for (int i = 0; i < size(); ++i)
    if (node(i).op->storage == detail::Storage::persistent && !(node(i).op->flags & detail::kTrainable))
      out.push_back(Value{this, i, 0});
  return out;
}

Value Graph::find(const std::string& name) {
  for (int i = 0; i < size(); ++i)
    if (node(i).name == name) return Value{this, i, 0};
  throw GraphError("the graph has no node named '" + name + "'");
}

Program Graph::compile(std::initializer_list<Fetch> fetches) { return compile(fetches, CompileOptions{}); }

Program Graph::compile(std::initializer_list<Fetch> fetches, const CompileOptions& opts) {
  std::vector<Value> all;
  for (const Fetch& f : fetches) all.insert(all.end(), f.values.begin(), f.values.end());
  return Program(*this, all, opts);
}

std::string describe(const Graph& g, bool include_backward) {
  std::string out;
  for (int i = 0; i < g.size(); ++i) {
    const Node& n = g.node(i);
    if (n.backward && !include_backward) continue;
    out += n.name + " = " + n.op_name() + "(";
    for (std::size_t j = 0; j < n.inputs.size(); ++j) {
      const Node& src = g.node(n.inputs[j].node);
      if (j) out += ", ";
      out += src.name;
      if (src.num_outputs > 1) out.append(":").append(std::to_string(n.inputs[j].port));
    }
    out += ")";
    const std::string a = n.attrs.to_string();
    if (!a.empty()) out += " [" + a + "]";
    out += " ->";
    for (int p = 0; p < n.num_outputs; ++p) {
      out += p ? ", " : " ";
      out += dtype_name(n.out(p).dtype);
      out += ' ';
      out += to_string(n.out(p).shape);
    }
    out += "\n";
  }
  return out;
}

// ---- building nodes -------------------------------------------------------------------------------
namespace detail {

Value make(const OpDef& op, const std::vector<Value>& operands, const Attrs& attrs, const std::string& name) {
  if (op.arity >= 0 && static_cast<int>(operands.size()) != op.arity)
    throw GraphError(std::string(op.name) + ": expects " + std::to_string(op.arity) + " operands, got " +
                     std::to_string(operands.size()));
  if (operands.size() > static_cast<std::size_t>(kMaxInputs))
    throw GraphError(std::string(op.name) + ": at most " + std::to_string(kMaxInputs) + " operands");
  Graph* g = nullptr;
  for (const Value& v : operands) {
    if (!v.valid()) throw GraphError(std::string(op.name) + ": an operand is an empty gg::Value");
    if (g && v.graph != g) throw GraphError(std::string(op.name) + ": operand '" + v.name() + "' belongs to another graph");
    g = v.graph;
    if (v.port < 0 || v.port >= v.node().num_outputs)
      throw GraphError(std::string(op.name) + ": operand '" + v.node().name + "' has no output " + std::to_string(v.port));
  }
  if (!g) throw GraphError(std::string(op.name) + ": needs an operand to know its graph");
  Node n;
  n.op = &op;
  n.attrs = attrs;
  n.name = name.empty() ? std::string(op.name) + "#" + std::to_string(g->size()) : name;
  for (const Value& v : operands) n.inputs.push_back(v.operand());
  const Outputs outs = op.infer(*g, n);
  if (outs.count != op.outputs) throw std::logic_error(std::string(op.name) + ": inference returned a wrong number of outputs");
  n.num_outputs = outs.count;
  for (int p = 0; p < outs.count; ++p) n.outputs[p] = outs.port[p];
  return GraphBuilder::add(*g, std::move(n), operands);
}

Value make(const OpDef& op, std::initializer_list<Value> operands, const Attrs& attrs, const std::string& name) {
  return make(op, std::vector<Value>(operands), attrs, name);
}

std::vector<Value> outputs_of(Value v) {
  std::vector<Value> out;
  for (int p = 0; p < v.node().num_outputs; ++p) out.push_back(Value{v.graph, v.id, p});
  return out;
}

BackwardScope::BackwardScope(Graph& gr) : g(gr), saved(GraphBuilder::backward(gr)) { GraphBuilder::backward(g) = true; }
BackwardScope::~BackwardScope() { GraphBuilder::backward(g) = saved; }

const Port& operand(const Graph& g, const Node& n, int i) {
  const Operand& o = n.inputs[static_cast<std::size_t>(i)];
  return g.node(o.node).out(o.port);
}

std::string describe(const Graph& g, Operand o) {
  const Node& n = g.node(o.node);
  const Port& p = n.out(o.port);
  std::string out = "'" + n.name;
  if (n.num_outputs > 1) out.append(":").append(std::to_string(o.port));
  out += "' ";
  out += dtype_name(p.dtype);
  out += ' ';
  out += to_string(p.shape);
  return out;
}

void fail(const Graph& g, const Node& n, const std::string& what) {
  std::string operands;
  for (std::size_t i = 0; i < n.inputs.size(); ++i) operands += (i ? ", " : "") + describe(g, n.inputs[i]);
  const std::string attrs = n.attrs.to_string();
  throw GraphError(std::string(n.op->name) + ": " + what + (operands.empty() ? "" : " (operands " + operands + ")") +
                   (attrs.empty() ? "" : " [" + attrs + "]"));
}

DType require_float(const Graph& g, const Node& n, int i) {
  const DType t = operand(g, n, i).dtype;
  if (!is_float(t))
    fail(g, n, "operand " + describe(g, n.inputs[static_cast<std::size_t>(i)]) + " must be float32 or float64");
  return t;
}

DType require_same_dtype(const Graph& g, const Node& n, int i, int j) {
  const DType a = operand(g, n, i).dtype, b = operand(g, n, j).dtype;
  if (a != b)
    throw GraphError(std::string(n.op->name) + ": dtypes differ: " + describe(g, n.inputs[static_cast<std::size_t>(i)]) +
                     " and " + describe(g, n.inputs[static_cast<std::size_t>(j)]) + " (convert one with gg::cast)");
  return a;
}

Shape broadcast_shapes(const Graph& g, const Node& n) {
  const Shape& a = operand(g, n, 0).shape;
  const Shape& b = operand(g, n, 1).shape;
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
      throw GraphError(std::string(n.op->name) + ": cannot broadcast " + describe(g, n.inputs[0]) + " with " +
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

double batch_factor(double s, int batch_power, std::int64_t batch) {
  return batch_power == 0 ? s : s * std::pow(static_cast<double>(batch), batch_power);
}

bool Layout::contiguous() const { return is_contiguous(shape, strides); }

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

Count count_except(const Shape& shape, int axis) {
  Count c;
  for (int i = 0; i < shape.rank; ++i) {
    if (i == axis) continue;
    if (shape.dims[i] == dyn)
      ++c.dyn_count;
    else
      c.fixed *= static_cast<double>(shape.dims[i]);
  }
  return c;
}

}  // namespace detail
}  // namespace gg
