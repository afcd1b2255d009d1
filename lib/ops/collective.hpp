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

}  // namespace gg::detail
