// Reverse mode as a graph transformation: gradients() appends the backward nodes to the graph.
#include <gradgraph/autodiff.hpp>

#include "ops/op.hpp"

#include <array>

namespace gg {

namespace {

// Fan-out: the contributions to one value's gradient are added (left to right).
Value accumulate(const std::vector<Value>& parts) {
  Value acc = parts[0];
  for (std::size_t i = 1; i < parts.size(); ++i) acc = acc + parts[i];
  return acc;
}

}  // namespace

std::vector<Value> gradients(Value y, const std::vector<Value>& xs) {
  if (!y.valid()) throw GraphError("gradients: empty loss value");
  if (y.shape().rank != 0)
    throw GraphError("gradients: '" + y.name() + "' has shape " + to_string(y.shape()) +
                     "; differentiate a scalar (e.g. sum or mean it) or pass a seed of that shape");
  if (!is_float(y.dtype())) throw GraphError("gradients: '" + y.name() + "' is " + dtype_name(y.dtype()) + ", not a float");
  Graph& g = *y.graph;
  Value seed;
  {
    detail::BackwardScope scope(g);
    seed = g.scalar(1.0, y.dtype());
  }
  return gradients(y, xs, seed);
}

std::vector<Value> gradients(Value y, const std::vector<Value>& xs, Value seed) {
  if (!y.valid() || !seed.valid()) throw GraphError("gradients: empty loss or seed value");
  Graph& g = *y.graph;
  if (seed.graph != &g) throw GraphError("gradients: the seed belongs to another graph");
  if (seed.shape() != y.shape() || seed.dtype() != y.dtype())
    throw GraphError("gradients: seed " + detail::describe(g, seed.operand()) + " does not match " +
                     detail::describe(g, y.operand()));
  const int n = y.id + 1;  // only y's ancestors matter, and they all have smaller ids

  // need(i): i depends (through differentiable float operands) on some x, and y depends on i.
  std::vector<char> from_x(static_cast<std::size_t>(n), 0), to_y(static_cast<std::size_t>(n), 0);
  for (const Value& x : xs) {
    if (!x.valid() || x.graph != &g) throw GraphError("gradients: a value to differentiate by belongs to another graph");
    if (!is_float(x.dtype()))
      throw GraphError("gradients: cannot differentiate with respect to " + detail::describe(g, x.operand()) +
                       ", an integer tensor");
    if (x.id < n) from_x[static_cast<std::size_t>(x.id)] = 1;
  }
  auto differentiable = [&](const Node& nd, std::size_t j) {
    return (nd.op->diff_inputs >> j & 1u) && is_float(g.node(nd.inputs[j].node).out(nd.inputs[j].port).dtype);
  };
  for (int i = 0; i < n; ++i) {
    const Node& nd = g.node(i);
    for (std::size_t j = 0; j < nd.inputs.size(); ++j)
      if (differentiable(nd, j) && from_x[static_cast<std::size_t>(nd.inputs[j].node)]) from_x[static_cast<std::size_t>(i)] = 1;
  }
  to_y[static_cast<std::size_t>(y.id)] = 1;
  for (int i = n - 1; i >= 0; --i) {
    if (!to_y[static_cast<std::size_t>(i)]) continue;
    for (const Operand& o : g.node(i).inputs) to_y[static_cast<std::size_t>(o.node)] = 1;
  }
  auto need = [&](int i) { return from_x[static_cast<std::size_t>(i)] && to_y[static_cast<std::size_t>(i)]; };

  // Contributions to each output of each node, and the accumulated gradients.
  using PerPort = std::array<std::vector<Value>, kMaxOutputs>;
  std::vector<PerPort> contrib(static_cast<std::size_t>(n));
  std::vector<std::array<Value, kMaxOutputs>> grad(static_cast<std::size_t>(n));
  contrib[static_cast<std::size_t>(y.id)][static_cast<std::size_t>(y.port)].push_back(seed);
  detail::BackwardScope scope(g);
  for (int i = n - 1; i >= 0; --i) {
    if (!need(i)) continue;
    const Node& node = g.node(i);  // stable storage: valid while VJPs add nodes
    bool any_grad = false;
    for (int p = 0; p < node.num_outputs; ++p) {
      auto& parts = contrib[static_cast<std::size_t>(i)][static_cast<std::size_t>(p)];
      if (parts.empty()) continue;
      grad[static_cast<std::size_t>(i)][static_cast<std::size_t>(p)] = accumulate(parts);
      any_grad = true;
    }
    if (!any_grad || node.op->is_leaf()) continue;
    detail::VjpArgs args{g, node, i, {}, {}, {}};
    bool any = false;
    for (std::size_t j = 0; j < node.inputs.size(); ++j) {
      args.wanted[j] = differentiable(node, j) && need(node.inputs[j].node);
      any = any || args.wanted[j];
    }
    if (!any) continue;
    if (!node.op->vjp) throw GraphError(std::string("gradients: op ") + node.op->name + " has no gradient");
    for (int p = 0; p < node.num_outputs; ++p) {
      args.out[p] = Value{&g, i, p};
      args.grad[p] = grad[static_cast<std::size_t>(i)][static_cast<std::size_t>(p)];
    }
    const std::vector<Value> r = node.op->vjp(args);
    for (std::size_t j = 0; j < node.inputs.size(); ++j) {
      if (!args.wanted[j] || j >= r.size() || !r[j].valid()) continue;
      const Port& want = g.node(node.inputs[j].node).out(node.inputs[j].port);
      if (r[j].shape() != want.shape || r[j].dtype() != want.dtype)
        throw std::logic_error(std::string("gradients: VJP of ") + node.op->name + " returned " + dtype_name(r[j].dtype()) +
                               " " + to_string(r[j].shape()) + " for an operand " + dtype_name(want.dtype) + " " +
                               to_string(want.shape));
      contrib[static_cast<std::size_t>(node.inputs[j].node)][static_cast<std::size_t>(node.inputs[j].port)].push_back(r[j]);
    }
  }
  std::vector<Value> out;
  for (const Value& x : xs) {
    Value gx = x.id < n ? grad[static_cast<std::size_t>(x.id)][static_cast<std::size_t>(x.port)] : Value{};
    out.push_back(gx.valid() ? gx : g.fill(x.shape(), 0.0, x.dtype()));
  }
  return out;
}

}  // namespace gg
