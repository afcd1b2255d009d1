// What collective.cpp shares with the fusion that writes a gradient GEMM straight into its
// all-reduce buffer (gemm_pack, matmul.cpp): the pack's attributes.
#pragma once

#include "kernels.hpp"

#include <cstdint>

namespace gg::detail {

struct PackAttrs {
  std::int64_t offset = 0;  // where in the flat buffer the value goes
  template <typename F> void visit(F&& f) { f("offset", offset); }
};

extern const OpDef pack_op;

// x itself, marked as computed from this rank's shard alone where the global batch's value would
// need a sum across ranks that the graph does not have: its kernel refuses to run in a training
// program with ranks (CompileOptions::ranks), so that such a program fails with a message instead
// of computing something else than one process would. Its one user, named in the message:
// batch_norm's second derivatives (norm.cpp).
Value rank_local(Value x);

}  // namespace gg::detail
