// Fused ops, created only by the fusion pass (lib/fuse.cpp) from patterns whose unfused
// results they reproduce bit for bit.
//   add_relu(a, b) = relu(a + b) with broadcasting: the bias add and the activation in one
//   pass over the GEMM output (in place). VJP as for relu(a + b): g' = relu_grad(g, y),
//   da = unbroadcast(g'), db = unbroadcast(g').
#include "kernels.hpp"

namespace gg {
namespace {

using namespace detail;

Shape infer(const Graph& g, const Node& n) { return broadcast_shapes(g, n); }

template <typename T>
void add_relu_fwd(const KernelArgs& k) {
  binary_kernel<T>(k, [](T a, T b) {
    const T s = a + b;
    return s > T(0) ? s : T(0);
  });
}

std::vector<Value> add_relu_vjp(Graph& g, const Node& n, Value y, Value grad, const std::vector<bool>& w) {
  Value gy = g.add_node(Op::ReluGrad, {grad, y});
  std::vector<Value> out(2);
  if (w[0]) out[0] = unbroadcast(gy, g.node(n.inputs[0]).shape);
  if (w[1]) out[1] = unbroadcast(gy, g.node(n.inputs[1]).shape);
  return out;
}

}  // namespace

namespace detail {
extern const OpDef kAddReluDef = {"add_relu", 2, 0, 0b11, 0b11, infer, add_relu_fwd<float>, add_relu_fwd<double>,
                                  add_relu_vjp};
}  // namespace detail

}  // namespace gg
