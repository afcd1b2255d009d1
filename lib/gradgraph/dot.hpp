// Graphviz export of a graph (Boost.Graph's write_graphviz): op, name and shape per node;
// parameters, inputs, forward and backward nodes in different colours.
#pragma once

#include <gradgraph/graph.hpp>

#include <iosfwd>

namespace gg {

void write_dot(const Graph& g, std::ostream& os);

}  // namespace gg
