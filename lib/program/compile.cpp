// Compile, once per program: prune the graph to what the fetches need (Boost.Graph reachability),
// copy that subgraph into the program's own IR, fuse it, add the ordering that in-place writes
// need, and sort it (Boost.Graph topological sort).
#include "program_impl.hpp"

#include <boost/graph/breadth_first_search.hpp>
#include <boost/graph/reverse_graph.hpp>
#include <boost/graph/topological_sort.hpp>

#include <deque>

namespace gg::detail {

namespace {

// Marks every vertex the search reaches.
struct Reached : boost::default_bfs_visitor {
  std::vector<char>* seen;
  template <typename V, typename G>
  void discover_vertex(V v, const G&) const {
    (*seen)[static_cast<std::size_t>(v)] = 1;
  }
};

// The fetched nodes and every node they depend on: a breadth-first search of the reversed graph.
std::vector<char> needed_by(const Graph& g, const std::vector<Value>& fetches) {
  const std::size_t n = static_cast<std::size_t>(g.size());
  std::vector<char> seen(n, 0);
  std::vector<std::size_t> sources;
  for (const Value& v : fetches) sources.push_back(static_cast<std::size_t>(v.id));
  const auto reversed = boost::make_reverse_graph(g.structure());
  std::vector<boost::default_color_type> color(n, boost::white_color);
  boost::queue<std::size_t> queue;
  Reached vis;
  vis.seen = &seen;
  boost::breadth_first_search(reversed, sources.begin(), sources.end(), queue, vis,
                              boost::make_iterator_property_map(color.begin(), boost::get(boost::vertex_index, reversed)));
  return seen;
}

// The node whose memory a value is: follows pure views (aliases without a kernel) to their source.
std::vector<int> storage_roots(const std::vector<IrNode>& ir) {
  std::vector<int> root(ir.size());
  for (std::size_t i = 0; i < ir.size(); ++i) {
    const OpDef& d = *ir[i].node.op;
    root[i] = d.is_pure_view() ? root[static_cast<std::size_t>(ir[i].node.inputs[static_cast<std::size_t>(d.alias)].node)]
                               : static_cast<int>(i);
  }
  return root;
}

}  // namespace

Compiled compile(const Graph& g, const std::vector<Value>& fetches, bool fuse_on) {
  if (fetches.empty()) throw GraphError("compile: nothing to fetch");
  for (const Value& v : fetches)
    if (!v.valid() || v.graph != &g) throw GraphError("compile: a fetched value belongs to another graph");
  const int n = g.size();
  const std::vector<char> needed = needed_by(g, fetches);

  // The program's own copy of the subgraph, in id order (a topological order).
  std::vector<IrNode> ir;
  std::vector<int> to_ir(static_cast<std::size_t>(n), -1);
  for (int i = 0; i < n; ++i) {
    if (!needed[static_cast<std::size_t>(i)]) continue;
    IrNode x;
    x.node = g.node(i);
    for (Operand& o : x.node.inputs) o.node = to_ir[static_cast<std::size_t>(o.node)];
    x.graph_id = i;
    to_ir[static_cast<std::size_t>(i)] = static_cast<int>(ir.size());
    ir.push_back(std::move(x));
  }
  for (const Value& v : fetches) ir[static_cast<std::size_t>(to_ir[static_cast<std::size_t>(v.id)])].fetched |= 1u << v.port;
  if (fuse_on) fuse(ir);

  // Order with Boost.Graph: data edges, plus an edge from every other reader of a value that an
  // op writes in place (an update writes its parameter and state) to that op, so that the write
  // comes after every read of the old value. Readers through views of the value count too.
  const std::size_t m = ir.size();
  const std::vector<int> root = storage_roots(ir);
  boost::adjacency_list<boost::vecS, boost::vecS, boost::directedS> dag(m);
  for (std::size_t i = 0; i < m; ++i) {
    if (ir[i].dead) continue;
    for (const Operand& o : ir[i].node.inputs) boost::add_edge(static_cast<std::size_t>(o.node), i, dag);
  }
  std::vector<int> writer(m, -1);
  for (std::size_t u = 0; u < m; ++u) {
    const OpDef& d = *ir[u].node.op;
    if (ir[u].dead || d.writes == 0) continue;
    for (std::size_t k = 0; k < ir[u].node.inputs.size(); ++k) {
      if (!(d.writes >> k & 1u)) continue;
      const int target = root[static_cast<std::size_t>(ir[u].node.inputs[k].node)];
      const IrNode& t = ir[static_cast<std::size_t>(target)];
      if (t.node.op->storage == Storage::external || t.node.op->storage == Storage::constant)
        throw GraphError("compile: '" + ir[u].node.name + "' would write '" + t.node.name + "', an " + t.node.op->name +
                         " (only parameters, states and computed values can be written)");
      int& w = writer[static_cast<std::size_t>(target)];
      if (w >= 0 && w != static_cast<int>(u))
        throw GraphError("compile: '" + t.node.name + "' is written by two ops ('" + ir[static_cast<std::size_t>(w)].node.name +
                         "' and '" + ir[u].node.name + "')");
      w = static_cast<int>(u);
      for (std::size_t r = 0; r < m; ++r) {
        if (r == u || ir[r].dead) continue;
        for (const Operand& o : ir[r].node.inputs)
          if (root[static_cast<std::size_t>(o.node)] == target) {
            boost::add_edge(r, u, dag);
            break;
          }
      }
    }
  }
  std::vector<std::size_t> rev;
  try {
    boost::topological_sort(dag, std::back_inserter(rev));
  } catch (const boost::not_a_dag&) {
    throw GraphError("compile: the program's dependencies form a cycle");
  }

  Compiled c;
  std::vector<int> new_index(m, -1);
  for (auto it = rev.rbegin(); it != rev.rend(); ++it) {
    if (ir[*it].dead) continue;
    new_index[*it] = static_cast<int>(c.ir.size());
    c.ir.push_back(ir[*it]);
  }
  for (IrNode& x : c.ir)
    for (Operand& o : x.node.inputs) o.node = new_index[static_cast<std::size_t>(o.node)];

  // Where each graph value lives now: fusion may have moved it to another node's output.
  c.graph_to_ir.assign(static_cast<std::size_t>(n), {});
  for (auto& a : c.graph_to_ir) a.fill(Operand{-1, 0});
  for (std::size_t i = 0; i < m; ++i) {
    if (ir[i].graph_id < 0) continue;
    for (int p = 0; p < ir[i].node.num_outputs; ++p) {
      Operand o{static_cast<int>(i), p};
      while (o.node >= 0 && ir[static_cast<std::size_t>(o.node)].dead) o = ir[static_cast<std::size_t>(o.node)].forward[o.port];
      if (o.node >= 0) c.graph_to_ir[static_cast<std::size_t>(ir[i].graph_id)][static_cast<std::size_t>(p)] = {new_index[static_cast<std::size_t>(o.node)], o.port};
    }
  }
  for (const Value& v : fetches)
    if (c.graph_to_ir[static_cast<std::size_t>(v.id)][static_cast<std::size_t>(v.port)].node < 0)
      throw std::logic_error("compile: fetched node '" + v.name() + "' was fused away");
  for (std::size_t i = 0; i < c.ir.size(); ++i) {
    const Node& x = c.ir[i].node;
    if (x.op->storage == Storage::external) c.inputs.push_back(static_cast<int>(i));
    for (int p = 0; p < x.num_outputs; ++p) c.has_dyn = c.has_dyn || x.out(p).shape.has_dyn();
  }
  return c;
}

}  // namespace gg::detail
