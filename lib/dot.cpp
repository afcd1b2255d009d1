// Graphviz output (Boost.Graph's write_graphviz), one writer for graphs and programs.
#include <gradgraph/dot.hpp>

#include "program/program_impl.hpp"

#include <boost/graph/graphviz.hpp>

#include <ostream>

namespace gg {
namespace detail {

namespace {

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

struct NodeWriter {
  const std::function<const Node&(std::size_t)>* node;
  void operator()(std::ostream& os, std::size_t v) const {
    const Node& n = (*node)(v);
    const OpDef& d = *n.op;
    const char* fill = "lightblue";  // forward op
    if (d.flags & kTrainable) fill = "gold";
    else if (d.storage == Storage::persistent) fill = "khaki";
    else if (d.is_leaf()) fill = "lightgrey";
    else if (d.writes) fill = "palegreen";
    else if (n.fused) fill = "plum";
    else if (n.backward) fill = "lightcoral";
    const bool leaf = d.is_leaf();
    std::string label = leaf ? "" : std::string(d.name) + "\\n";
    label += escape(n.name);
    const std::string attrs = n.attrs.to_string();
    if (!attrs.empty()) label += "\\n" + escape(attrs);
    for (int p = 0; p < n.num_outputs; ++p)
      label += std::string("\\n") + (n.num_outputs > 1 ? std::to_string(p) + ": " : "") + dtype_name(n.out(p).dtype) + " " +
               to_string(n.out(p).shape);
    os << "[label=\"" << label << "\", fillcolor=" << fill << (leaf ? ", shape=ellipse" : "") << "]";
  }
};

struct GraphWriter {
  void operator()(std::ostream& os) const {
    os << "node [shape=box, style=filled, fontname=\"Helvetica\", fontsize=10];\n"
       << "edge [arrowsize=0.6];\n"
       << "labelloc=t; label=\"gold: parameters, khaki: optimizer state, grey: inputs and constants, blue: forward, "
          "red: backward, plum: fused, green: updates\";\n";
  }
};

}  // namespace

void write_dot(std::ostream& os, const Structure& structure, const std::function<const Node&(std::size_t)>& node,
               const char* /*name*/) {
  boost::write_graphviz(os, structure, NodeWriter{&node}, boost::default_writer(), GraphWriter{});
}

}  // namespace detail

void write_dot(const Graph& g, std::ostream& os) {
  detail::write_dot(os, g.structure(), [&](std::size_t i) -> const Node& { return g.node(static_cast<int>(i)); }, "graph");
}

}  // namespace gg
