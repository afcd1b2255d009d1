// Unary elementwise ops. Where the derivative is cheapest from the output y, the VJP uses y
// (the forward pass already holds it):
//   neg:        -g                     scale(s):   s g
//   add_scalar: g                      pow(p):     g p x^(p-1)
//   exp:        g y                    log:        g / x
//   sqrt:       g / (2 y)              relu:       g 1[y > 0]   (relu'(0) = 0)
//   sigmoid:    g y (1 - y)            tanh:       g (1 - y^2)
// relu_grad(g, y) = g 1[y > 0] is an op of its own so that the mask costs one pass; it is
// linear in g (its VJP is itself) and has zero derivative in y almost everywhere.
// NaN inputs propagate through every op except relu, which computes x > 0 ? x : 0 and so maps
// NaN to 0 (the comparison is false); a NaN loss still shows it.
#include "kernels.hpp"

#include <cmath>

namespace gg {
namespace {

using namespace detail;

Shape same_shape(const Graph& g, const Node& n) { return g.node(n.inputs[0]).shape; }

Shape same_shape2(const Graph& g, const Node& n) {
  const Shape& a = g.node(n.inputs[0]).shape;
  const Shape& b = g.node(n.inputs[1]).shape;
  if (a != b) fail(g, n, "operands must have the same shape");
  return a;
}

template <typename T> void neg_fwd(const KernelArgs& k) { unary_kernel<T>(k, [](T x) { return -x; }); }
template <typename T> void scale_fwd(const KernelArgs& k) {
  const T s = static_cast<T>(k.scale);
  unary_kernel<T>(k, [s](T x) { return s * x; });
}
template <typename T> void add_scalar_fwd(const KernelArgs& k) {
  const T s = static_cast<T>(k.attrs->scalar);
  unary_kernel<T>(k, [s](T x) { return x + s; });
}
template <typename T> void pow_fwd(const KernelArgs& k) {
  const T p = static_cast<T>(k.attrs->scalar);
  if (p == T(2))
    unary_kernel<T>(k, [](T x) { return x * x; });
  else
    unary_kernel<T>(k, [p](T x) { return std::pow(x, p); });
}
template <typename T> void exp_fwd(const KernelArgs& k) { unary_kernel<T>(k, [](T x) { return std::exp(x); }); }
template <typename T> void log_fwd(const KernelArgs& k) { unary_kernel<T>(k, [](T x) { return std::log(x); }); }
template <typename T> void sqrt_fwd(const KernelArgs& k) { unary_kernel<T>(k, [](T x) { return std::sqrt(x); }); }
template <typename T> void relu_fwd(const KernelArgs& k) { unary_kernel<T>(k, [](T x) { return x > T(0) ? x : T(0); }); }
// Branch on the sign so that exp never overflows.
template <typename T> void sigmoid_fwd(const KernelArgs& k) {
  unary_kernel<T>(k, [](T x) {
    if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
    T e = std::exp(x);
    return e / (T(1) + e);
  });
}
template <typename T> void tanh_fwd(const KernelArgs& k) { unary_kernel<T>(k, [](T x) { return std::tanh(x); }); }
template <typename T> void relu_grad_fwd(const KernelArgs& k) {
  binary_kernel<T>(k, [](T g, T y) { return y > T(0) ? g : T(0); });
}

using Vjp = std::vector<Value>;
using W = const std::vector<bool>&;

Vjp neg_vjp(Graph&, const Node&, Value, Value g, W) { return {neg(g)}; }
Vjp scale_vjp(Graph&, const Node& n, Value, Value g, W) { return {scale_batch(g, n.attrs.scalar, n.attrs.batch_power)}; }
Vjp add_scalar_vjp(Graph&, const Node&, Value, Value g, W) { return {g}; }
Vjp pow_vjp(Graph& gr, const Node& n, Value, Value g, W) {
  const double p = n.attrs.scalar;
  Value x = in(gr, n, 0);
  if (p == 1.0) return {g};
  if (p == 2.0) return {g * (x * 2.0)};
  return {g * scale(pow(x, p - 1.0), p)};
}
Vjp exp_vjp(Graph&, const Node&, Value y, Value g, W) { return {g * y}; }
Vjp log_vjp(Graph& gr, const Node& n, Value, Value g, W) { return {g / in(gr, n, 0)}; }
Vjp sqrt_vjp(Graph&, const Node&, Value y, Value g, W) { return {scale(g / y, 0.5)}; }
Vjp relu_vjp(Graph& gr, const Node&, Value y, Value g, W) { return {gr.add_node(Op::ReluGrad, {g, y})}; }
Vjp sigmoid_vjp(Graph&, const Node&, Value y, Value g, W) { return {g * (y * (1.0 - y))}; }
Vjp tanh_vjp(Graph&, const Node&, Value y, Value g, W) { return {g * (1.0 - y * y)}; }
Vjp relu_grad_vjp(Graph& gr, const Node& n, Value, Value g, W w) {
  Vjp out(2);
  if (w[0]) out[0] = gr.add_node(Op::ReluGrad, {g, in(gr, n, 1)});
  return out;  // d/dy is zero almost everywhere: no contribution
}

#define GG_UNARY(def, nm, fwd, vjpf) \
  extern const OpDef def = {nm, 1, 0, 0b1, 0b1, same_shape, fwd<float>, fwd<double>, vjpf};

}  // namespace

namespace detail {
GG_UNARY(kNegDef, "neg", neg_fwd, neg_vjp)
GG_UNARY(kScaleDef, "scale", scale_fwd, scale_vjp)
GG_UNARY(kAddScalarDef, "add_scalar", add_scalar_fwd, add_scalar_vjp)
GG_UNARY(kPowDef, "pow", pow_fwd, pow_vjp)
GG_UNARY(kExpDef, "exp", exp_fwd, exp_vjp)
GG_UNARY(kLogDef, "log", log_fwd, log_vjp)
GG_UNARY(kSqrtDef, "sqrt", sqrt_fwd, sqrt_vjp)
GG_UNARY(kReluDef, "relu", relu_fwd, relu_vjp)
GG_UNARY(kSigmoidDef, "sigmoid", sigmoid_fwd, sigmoid_vjp)
GG_UNARY(kTanhDef, "tanh", tanh_fwd, tanh_vjp)
extern const OpDef kReluGradDef = {"relu_grad", 2, 0, 0b01, 0b01, same_shape2, relu_grad_fwd<float>,
                                   relu_grad_fwd<double>, relu_grad_vjp};

Value scale_batch(Value v, double s, int batch_power) {
  Attrs a;
  a.scalar = s;
  a.batch_power = batch_power;
  return graph_of(v).add_node(Op::Scale, {v}, a);
}
}  // namespace detail

namespace {
Value unary(Op op, Value a, double s = 0) {
  Attrs at;
  at.scalar = s;
  return detail::graph_of(a).add_node(op, {a}, at);
}
}  // namespace

Value neg(Value a) { return unary(Op::Neg, a); }
Value scale(Value a, double s) { return unary(Op::Scale, a, s); }
Value add_scalar(Value a, double s) { return unary(Op::AddScalar, a, s); }
Value pow(Value a, double p) { return unary(Op::PowScalar, a, p); }
Value exp(Value a) { return unary(Op::Exp, a); }
Value log(Value a) { return unary(Op::Log, a); }
Value sqrt(Value a) { return unary(Op::Sqrt, a); }
Value relu(Value a) { return unary(Op::Relu, a); }
Value sigmoid(Value a) { return unary(Op::Sigmoid, a); }
Value tanh(Value a) { return unary(Op::Tanh, a); }

}  // namespace gg
