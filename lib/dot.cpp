#include <gradgraph/dot.hpp>

#include "ops/op.hpp"

#include <boost/graph/graphviz.hpp>

#include <ostream>

namespace gg {

namespace {

struct NodeWriter {
  const Graph* g;
  void operator()(std::ostream& os, std::size_t v) const {
    const Node& n = g->node(static_cast<int>(v));
    const char* fill = "lightblue";  // forward op
    if (n.op == Op::Param) fill = "gold";
    else if (n.op == Op::State) fill = "khaki";
    else if (n.op == Op::Input || n.op == Op::Constant) fill = "lightgrey";
    else if (n.backward) fill = "lightcoral";
    else if (detail::op_def(n.op).flags & detail::kSideEffect) fill = "palegreen";
    const bool leaf = detail::op_def(n.op).flags & detail::kLeaf;
    os << "[label=\"" << (leaf ? "" : std::string(detail::op_name(n.op)) + "\\n") << n.name << "\\n" << to_string(n.shape)
       << "\", fillcolor=" << fill << (leaf ? ", shape=ellipse" : "") << "]";
  }
};

struct GraphWriter {
  void operator()(std::ostream& os) const {
    os << "node [shape=box, style=filled, fontname=\"Helvetica\", fontsize=10];\n"
       << "edge [arrowsize=0.6];\n"
       << "labelloc=t; label=\"gold: parameters, khaki: optimizer state, grey: inputs, blue: forward, red: backward, green: updates\";\n";
  }
};

}  // namespace

void write_dot(const Graph& g, std::ostream& os) {
  boost::write_graphviz(os, g.boost_graph(), NodeWriter{&g}, boost::default_writer(), GraphWriter{});
}

}  // namespace gg
