// Binary elementwise ops with NumPy broadcasting: add, sub, mul, div.
//
// Gradients flow back through the broadcast: each operand's VJP is summed over the dimensions
// it was broadcast along (unbroadcast -> SumTo), so its shape equals the operand's.
//   add: da = g,        db = g
//   sub: da = g,        db = -g
//   mul: da = g b,      db = g a
//   div: da = g / b,    db = -g a / b^2 = -(g y) / b   (y = a / b, already computed)
#include "kernels.hpp"

namespace gg {
namespace {

using namespace detail;

Shape infer(const Graph& g, const Node& n) { return broadcast_shapes(g, n); }

template <typename T> void add_fwd(const KernelArgs& k) { binary_kernel<T>(k, [](T a, T b) { return a + b; }); }
template <typename T> void sub_fwd(const KernelArgs& k) { binary_kernel<T>(k, [](T a, T b) { return a - b; }); }
template <typename T> void mul_fwd(const KernelArgs& k) { binary_kernel<T>(k, [](T a, T b) { return a * b; }); }
template <typename T> void div_fwd(const KernelArgs& k) { binary_kernel<T>(k, [](T a, T b) { return a / b; }); }

std::vector<Value> add_vjp(Graph& g, const Node& n, Value, Value grad, const std::vector<bool>& w) {
  std::vector<Value> out(2);
  if (w[0]) out[0] = unbroadcast(grad, g.node(n.inputs[0]).shape);
  if (w[1]) out[1] = unbroadcast(grad, g.node(n.inputs[1]).shape);
  return out;
}

std::vector<Value> sub_vjp(Graph& g, const Node& n, Value, Value grad, const std::vector<bool>& w) {
  std::vector<Value> out(2);
  const Shape sb = g.node(n.inputs[1]).shape;  // a copy: adding nodes may move the graph's storage
  if (w[0]) out[0] = unbroadcast(grad, g.node(n.inputs[0]).shape);
  if (w[1]) out[1] = unbroadcast(neg(grad), sb);
  return out;
}

std::vector<Value> mul_vjp(Graph& g, const Node& n, Value, Value grad, const std::vector<bool>& w) {
  std::vector<Value> out(2);
  Value a = in(g, n, 0), b = in(g, n, 1);
  const Shape sa = a.shape(), sb = b.shape();  // copies: adding nodes may move the graph's storage
  if (w[0]) out[0] = unbroadcast(grad * b, sa);
  if (w[1]) out[1] = unbroadcast(grad * a, sb);
  return out;
}

std::vector<Value> div_vjp(Graph& g, const Node& n, Value y, Value grad, const std::vector<bool>& w) {
  std::vector<Value> out(2);
  Value a = in(g, n, 0), b = in(g, n, 1);
  const Shape sa = a.shape(), sb = b.shape();  // copies: adding nodes may move the graph's storage
  if (w[0]) out[0] = unbroadcast(grad / b, sa);
  if (w[1]) out[1] = unbroadcast(neg(grad * y / b), sb);
  return out;
}

}  // namespace

namespace detail {
extern const OpDef kAddDef = {"add", 2, 0, 0b11, 0b11, infer, add_fwd<float>, add_fwd<double>, add_vjp};
extern const OpDef kSubDef = {"sub", 2, 0, 0b11, 0b11, infer, sub_fwd<float>, sub_fwd<double>, sub_vjp};
extern const OpDef kMulDef = {"mul", 2, 0, 0b11, 0b11, infer, mul_fwd<float>, mul_fwd<double>, mul_vjp};
extern const OpDef kDivDef = {"div", 2, 0, 0b11, 0b11, infer, div_fwd<float>, div_fwd<double>, div_vjp};
}  // namespace detail

Value add(Value a, Value b) { return detail::graph_of(a).add_node(Op::Add, {a, b}); }
Value sub(Value a, Value b) { return detail::graph_of(a).add_node(Op::Sub, {a, b}); }
Value mul(Value a, Value b) { return detail::graph_of(a).add_node(Op::Mul, {a, b}); }
Value div(Value a, Value b) { return detail::graph_of(a).add_node(Op::Div, {a, b}); }

}  // namespace gg
