// The fusion pass: rewrites the program's copy of the graph so that what a hand-written
// kernel would do in one pass is one step. Each rewrite reproduces the unfused result bit for
// bit (add_relu) or within float rounding (alpha folding: BLIS scales the product once).
//   relu(add(a, b))                 -> add_relu(a, b)       the add has no other reader
//   matmul(scale(x), y) / (y, s(x)) -> matmul with alpha    every reader of the scale is a GEMM
//   scale(matmul(x, y))             -> matmul with alpha    the GEMM has no other reader
//   softmax_cross_entropy(Z, Y) and softmax_cross_entropy_grad(Z, Y, fill)
//                                   -> softmax_cross_entropy_fused(Z, Y, fill), whose extra
//                                      element holds the loss (the loss node becomes a
//                                      loss_slot view of it): one traversal of Z and Y, the
//                                      exponentials computed once, the 1/m inside.
#include "program_ir.hpp"

namespace gg::detail {

namespace {

std::vector<std::vector<int>> readers_of(const std::vector<IrNode>& ir) {
  std::vector<std::vector<int>> r(ir.size());
  for (std::size_t i = 0; i < ir.size(); ++i) {
    if (ir[i].dead) continue;
    for (int j : ir[i].node.inputs) r[static_cast<std::size_t>(j)].push_back(static_cast<int>(i));
  }
  return r;
}

void fold_alpha(Attrs& mm, const Attrs& sc) {
  mm.alpha *= sc.scalar;
  mm.batch_power += sc.batch_power;
}

}  // namespace

int fuse(std::vector<IrNode>& ir) {
  int rewrites = 0;
  auto readers = readers_of(ir);
  for (std::size_t i = 0; i < ir.size(); ++i) {
    IrNode& x = ir[i];
    if (x.dead) continue;
    Node& n = x.node;

    if (n.op == Op::Relu) {
      IrNode& a = ir[static_cast<std::size_t>(n.inputs[0])];
      if (a.node.op == Op::Add && !a.fetched && readers[static_cast<std::size_t>(n.inputs[0])].size() == 1) {
        n.op = Op::AddRelu;
        n.inputs = a.node.inputs;
        n.fused = true;
        a.dead = true;
        ++rewrites;
        readers = readers_of(ir);
      }
      continue;
    }

    if (n.op == Op::Scale && !x.fetched) {
      const auto& rs = readers[i];
      bool all_gemm = !rs.empty();
      for (int r : rs) all_gemm = all_gemm && ir[static_cast<std::size_t>(r)].node.op == Op::MatMul;
      if (all_gemm) {
        for (int r : rs) {
          Node& mm = ir[static_cast<std::size_t>(r)].node;
          // A GEMM reading the scaled value twice (x^T x) gets the factor twice.
          int uses = 0;
          for (int& j : mm.inputs)
            if (j == static_cast<int>(i)) j = n.inputs[0], ++uses;
          for (int k = 0; k < uses; ++k) fold_alpha(mm.attrs, n.attrs);
          mm.fused = true;
        }
        x.dead = true;
        ++rewrites;
        readers = readers_of(ir);
        continue;
      }
      const std::size_t src = static_cast<std::size_t>(n.inputs[0]);
      IrNode& mm = ir[src];
      if (mm.node.op == Op::MatMul && !mm.fetched && readers[src].size() == 1) {
        Node folded = mm.node;
        fold_alpha(folded.attrs, n.attrs);
        folded.name = n.name;
        folded.fused = true;
        n = folded;  // the GEMM takes the scale's place (its operands come earlier: order holds)
        mm.dead = true;
        ++rewrites;
        readers = readers_of(ir);
      }
    }
  }
  // Loss and gradient of the same softmax cross-entropy in one kernel. Only with the plain
  // seed (a fill) as incoming gradient, so the loss can never be an ancestor of the kernel.
  for (std::size_t i = 0; i < ir.size(); ++i) {
    IrNode& gr = ir[i];
    if (gr.dead || gr.node.op != Op::SoftmaxCrossEntropyGrad) continue;
    if (ir[static_cast<std::size_t>(gr.node.inputs[2])].node.op != Op::Fill) continue;
    for (std::size_t j = 0; j < ir.size(); ++j) {
      IrNode& loss = ir[j];
      if (loss.dead || loss.node.op != Op::SoftmaxCrossEntropy) continue;
      if (loss.node.inputs[0] != gr.node.inputs[0] || loss.node.inputs[1] != gr.node.inputs[1] ||
          loss.node.attrs.axis != gr.node.attrs.axis)
        continue;
      gr.node.op = Op::SoftmaxCrossEntropyFused;
      gr.node.fused = true;
      loss.node.op = Op::LossSlot;
      loss.node.inputs = {static_cast<int>(i)};
      loss.node.fused = true;
      ++rewrites;
      break;
    }
  }
  return rewrites;
}

}  // namespace gg::detail
