// The fusion pass: rewrites the program's copy of the graph so that what a hand-written kernel
// would do in one pass is one step. The rules live with the ops they make (lib/ops/fusion.hpp);
// this pass only offers them the IR: phase by phase, every live node to every rule of the phase.
#include "program_impl.hpp"

#include <algorithm>
#include <stdexcept>

namespace gg::detail {

Rewriter::Rewriter(std::vector<IrNode>& ir) : ir_(ir) { changed(); }

void Rewriter::changed() {
  readers_.assign(ir_.size(), {});
  for (std::size_t i = 0; i < ir_.size(); ++i) {
    if (ir_[i].dead) continue;
    for (const Operand& o : ir_[i].node.inputs) readers_[static_cast<std::size_t>(o.node)].push_back(static_cast<int>(i));
  }
}

void Rewriter::replace(int i, std::initializer_list<Operand> to) {
  IrNode& x = at(i);
  if (static_cast<int>(to.size()) != x.node.num_outputs) throw std::logic_error("Rewriter::replace: one target per output");
  const Operand* target = to.begin();
  for (IrNode& r : ir_) {
    if (r.dead) continue;
    for (Operand& o : r.node.inputs)
      if (o.node == i) o = target[o.port];
  }
  for (int p = 0; p < x.node.num_outputs; ++p) {
    if (x.fetched >> p & 1u) at(target[p].node).fetched |= 1u << target[p].port;
    x.forward[p] = target[p];
  }
  x.fetched = 0;
  x.dead = true;
  changed();
}

void Rewriter::kill(int i) {
  changed();
  if (!readers(i).empty() || fetched(i)) throw std::logic_error("Rewriter::kill: node " + at(i).node.name + " is still used");
  at(i).dead = true;
  changed();
}

int fuse(std::vector<IrNode>& ir) {
  Rewriter r(ir);
  int last_phase = 0, rewrites = 0;
  for (const FusionRule* rule : all_fusion_rules()) last_phase = std::max(last_phase, rule->phase);
  for (int phase = 0; phase <= last_phase; ++phase)
    for (int i = 0; i < r.size(); ++i)
      for (const FusionRule* rule : all_fusion_rules()) {
        if (rule->phase != phase || r.at(i).dead) continue;
        if (rule->apply(r, i)) ++rewrites;
      }
  return rewrites;
}

}  // namespace gg::detail
