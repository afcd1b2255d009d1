// What collective.cpp shares with the fusion that writes a gradient GEMM straight into its
// all-reduce buffer (gemm_pack, matmul.cpp): the pack's attributes and where a pack writes.
#pragma once

#include "kernels.hpp"

#include <cstdint>

namespace gg::detail {

struct PackAttrs {
  std::int64_t offset = 0;
  bool weighted = false;          // times the shard's batch size
  std::int64_t communicator = 0;  // whose staging memory, if it has any, takes the values
  template <typename F> void visit(F&& f) { f("offset", offset), f("weighted", weighted), f("communicator", communicator); }
};

// The communicator travels as its address: attributes are plain bytes, and the program that
// holds the node must not outlive it (Communicator's contract).
inline Communicator& communicator_at(std::int64_t address) {
  return *reinterpret_cast<Communicator*>(static_cast<std::intptr_t>(address));
}

// Where a pack into the flat buffer `f` (the kernel's operand 0) writes its values: the
// communicator's staging memory when it has some (then unweighted: sum_staged weighs), else f;
// `weight` is what the values are multiplied by.
template <typename T>
T* pack_destination(const KernelArgs& k, const PackAttrs& a, T& weight) {
  void* staged = communicator_at(a.communicator).staging(k.in[0].numel(), k.in[0].dtype);
  weight = a.weighted && !staged && k.batch > 0 ? static_cast<T>(k.batch) : T(1);
  return (staged ? static_cast<T*>(staged) : data<T>(k.in[0])) + a.offset;
}

extern const OpDef pack_op;

}  // namespace gg::detail
