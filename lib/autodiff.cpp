#include <gradgraph/autodiff.hpp>

#include "ops/op.hpp"

namespace gg {

namespace {

// Marks nodes created while it lives as backward nodes.
struct BackwardScope {
  Graph& g;
  bool saved;
  explicit BackwardScope(Graph& gr) : g(gr), saved(gr.building_backward) { g.building_backward = true; }
  ~BackwardScope() { g.building_backward = saved; }
};

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
  Graph& g = *y.graph;
  Value seed;
  {
    BackwardScope scope(g);
    seed = g.scalar(1.0);
  }
  return gradients(y, xs, seed);
}

std::vector<Value> gradients(Value y, const std::vector<Value>& xs, Value seed) {
  if (!y.valid() || !seed.valid()) throw GraphError("gradients: empty loss or seed value");
  Graph& g = *y.graph;
  if (seed.graph != &g) throw GraphError("gradients: the seed belongs to another graph");
  if (seed.shape() != y.shape())
    throw GraphError("gradients: seed " + detail::describe(g, seed.id) + " does not match " + detail::describe(g, y.id));
  const int n = y.id + 1;  // only y's ancestors matter, and they all have smaller ids

  // need[i]: i depends (through differentiable operands) on some x, and y depends on i.
  std::vector<char> from_x(static_cast<std::size_t>(n), 0), to_y(static_cast<std::size_t>(n), 0);
  for (const Value& x : xs) {
    if (!x.valid() || x.graph != &g) throw GraphError("gradients: a value to differentiate by belongs to another graph");
    if (x.id < n) from_x[static_cast<std::size_t>(x.id)] = 1;
  }
  for (int i = 0; i < n; ++i) {
    const Node& nd = g.node(i);
    const detail::OpDef& def = detail::op_def(nd.op);
    for (std::size_t j = 0; j < nd.inputs.size(); ++j)
      if ((def.diff_inputs >> j & 1u) && from_x[static_cast<std::size_t>(nd.inputs[j])]) from_x[static_cast<std::size_t>(i)] = 1;
  }
  to_y[static_cast<std::size_t>(y.id)] = 1;
  for (int i = n - 1; i >= 0; --i) {
    if (!to_y[static_cast<std::size_t>(i)]) continue;
    for (int j : g.node(i).inputs) to_y[static_cast<std::size_t>(j)] = 1;
  }
  auto need = [&](int i) { return from_x[static_cast<std::size_t>(i)] && to_y[static_cast<std::size_t>(i)]; };

  std::vector<std::vector<Value>> contrib(static_cast<std::size_t>(n));
  std::vector<Value> grad(static_cast<std::size_t>(n));
  contrib[static_cast<std::size_t>(y.id)].push_back(seed);
  BackwardScope scope(g);
  for (int i = n - 1; i >= 0; --i) {
    auto& parts = contrib[static_cast<std::size_t>(i)];
    if (!need(i) || parts.empty()) continue;
    Value gi = accumulate(parts);
    grad[static_cast<std::size_t>(i)] = gi;
    const Node node = g.node(i);  // a copy: adding nodes may move the graph's storage
    const detail::OpDef& def = detail::op_def(node.op);
    if (def.flags & detail::kLeaf) continue;
    std::vector<bool> wanted(node.inputs.size());
    bool any = false;
    for (std::size_t j = 0; j < node.inputs.size(); ++j) {
      wanted[j] = (def.diff_inputs >> j & 1u) && need(node.inputs[j]);
      any = any || wanted[j];
    }
    if (!any) continue;
    if (!def.vjp) throw GraphError(std::string("gradients: op ") + def.name + " has no gradient");
    std::vector<Value> r = def.vjp(g, node, Value{&g, i}, gi, wanted);
    for (std::size_t j = 0; j < node.inputs.size(); ++j) {
      if (!wanted[j] || j >= r.size() || !r[j].valid()) continue;
      const Shape want = g.node(node.inputs[j]).shape;
      if (r[j].shape() != want)
        throw std::logic_error(std::string("gradients: VJP of ") + def.name + " returned " + to_string(r[j].shape()) +
                               " for an operand of shape " + to_string(want));
      contrib[static_cast<std::size_t>(node.inputs[j])].push_back(r[j]);
    }
  }
  std::vector<Value> out;
  for (const Value& x : xs) {
    Value gx = x.id < n ? grad[static_cast<std::size_t>(x.id)] : Value{};
    out.push_back(gx.valid() ? gx : g.fill(x.shape(), 0.0));
  }
  return out;
}

}  // namespace gg
