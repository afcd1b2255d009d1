// Internal: the program's own copy of the fetched subgraph, which the fusion pass rewrites
// without touching the user's graph, and the memory planner's interface.
#pragma once

#include <gradgraph/graph.hpp>

#include "ops/op.hpp"

#include <cstddef>
#include <vector>

namespace gg {

struct IrNode {
  Node node;            // node.inputs hold ir indices
  int graph_id = -1;    // -1 for nodes made by the fusion pass
  bool fetched = false;
  bool dead = false;    // removed by the fusion pass
};

namespace detail {

// Rewrites fusable patterns in place (see fuse.cpp); marks replaced nodes dead.
// Returns the number of rewrites.
int fuse(std::vector<IrNode>& ir);

// One buffer to place in the arena: live over schedule steps [first, last] inclusive.
struct BufferRequest {
  std::size_t bytes = 0;
  int first = 0, last = 0;
};
// Offsets (64-byte aligned) such that buffers with overlapping lifetimes never overlap in
// memory; returns the arena size. Greedy by size: largest buffers are placed first, each at
// the lowest offset that does not collide with an already placed, simultaneously live one.
std::size_t plan_offsets(const std::vector<BufferRequest>& reqs, std::vector<std::size_t>& offsets);

}  // namespace detail
}  // namespace gg
