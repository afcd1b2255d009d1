// Internal: the program's private copy of a graph, and the fusion rules that rewrite it.
//
// A fusion rule lives in the family file of the op it produces (add_relu's rule in unary.cpp,
// the GEMM alpha folds in matmul.cpp, the fused loss in loss.cpp) and is defined with
// GG_FUSION, collected by gen_ops.py like the ops. The pass (lib/program/fuse.cpp) knows no rule
// by name: it offers each live node to every rule of a phase, in phase order. A rule may only
// replace values whose intermediate results nobody else reads or fetches, so the program
// computes the same values with fewer passes.
#pragma once

#include "op.hpp"

#include <cstdint>
#include <span>
#include <vector>

namespace gg::detail {

struct IrNode {
  Node node;                          // operands are IR indices
  int graph_id = -1;                  // -1 for nodes made by a pass
  std::uint32_t fetched = 0;          // bit p: output p is fetched (pinned, lives to the end of a run)
  bool dead = false;                  // replaced by a rewrite
  Operand forward[kMaxOutputs] = {};  // for a dead node: where each output's value now lives
};

// What a rule sees of the IR.
class Rewriter {
 public:
  explicit Rewriter(std::vector<IrNode>& ir);

  int size() const { return static_cast<int>(ir_.size()); }
  IrNode& at(int i) { return ir_[static_cast<std::size_t>(i)]; }
  const OpDef* op(int i) const { return ir_[static_cast<std::size_t>(i)].node.op; }
  // The live nodes reading node i (any output), once per operand slot.
  const std::vector<int>& readers(int i) const { return readers_[static_cast<std::size_t>(i)]; }
  bool fetched(int i) const { return ir_[static_cast<std::size_t>(i)].fetched != 0; }
  // Node i is computed no more; its outputs now live at `to[port]` (uses and fetches move).
  void replace(int i, std::initializer_list<Operand> to);
  // Node i is computed no more, and nothing reads or fetches it.
  void kill(int i);
  // Recomputes readers after a rule changed operands directly.
  void changed();

 private:
  std::vector<IrNode>& ir_;
  std::vector<std::vector<int>> readers_;
};

struct FusionRule {
  const char* name;
  int phase;                           // rules of phase 0 run over the whole program before phase 1
  bool (*apply)(Rewriter& r, int i);   // rewrites around node i; true if it changed something
};

#define GG_FUSION(var) extern const ::gg::detail::FusionRule var; const ::gg::detail::FusionRule var

// Every rule (generated from the GG_FUSION definitions).
std::span<const FusionRule* const> all_fusion_rules();

}  // namespace gg::detail
