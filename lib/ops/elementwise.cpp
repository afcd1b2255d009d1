// Binary elementwise ops with NumPy broadcasting: add, sub, mul, div. Both operands have the same
// float dtype (gg::cast converts).
//
// Gradients flow back through the broadcast: each operand's VJP is summed over the dimensions
// it was broadcast along (unbroadcast -> sum_to), so its shape equals the operand's.
//   add: da = g,        db = g
//   sub: da = g,        db = -g
//   mul: da = g b,      db = g a
//   div: da = g / b,    db = -g a / b^2 = -(g y) / b   (y = a / b, already computed)
#include "kernels.hpp"

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// Elementwise with NumPy broadcasting; both operands of one float dtype.
Value add(Value a, Value b);
Value sub(Value a, Value b);
Value mul(Value a, Value b);
Value div(Value a, Value b);
inline Value operator+(Value a, Value b) { return add(a, b); }
inline Value operator-(Value a, Value b) { return sub(a, b); }
inline Value operator*(Value a, Value b) { return mul(a, b); }
inline Value operator/(Value a, Value b) { return div(a, b); }
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

Outputs infer(const Graph& g, const Node& n) {
  require_float(g, n, 0);
  const DType t = require_same_dtype(g, n, 0, 1);
  return Port{t, broadcast_shapes(g, n)};
}

template <typename T> void add_fwd(const KernelArgs& k) { binary_kernel<T>(k, [](T a, T b) { return a + b; }); }
template <typename T> void sub_fwd(const KernelArgs& k) { binary_kernel<T>(k, [](T a, T b) { return a - b; }); }
template <typename T> void mul_fwd(const KernelArgs& k) { binary_kernel<T>(k, [](T a, T b) { return a * b; }); }
template <typename T> void div_fwd(const KernelArgs& k) { binary_kernel<T>(k, [](T a, T b) { return a / b; }); }

std::vector<Value> add_vjp(const VjpArgs& a) {
  std::vector<Value> out(2);
  if (a.wanted[0]) out[0] = unbroadcast(a.dy(), a.in_shape(0));
  if (a.wanted[1]) out[1] = unbroadcast(a.dy(), a.in_shape(1));
  return out;
}

std::vector<Value> sub_vjp(const VjpArgs& a) {
  std::vector<Value> out(2);
  if (a.wanted[0]) out[0] = unbroadcast(a.dy(), a.in_shape(0));
  if (a.wanted[1]) out[1] = unbroadcast(neg(a.dy()), a.in_shape(1));
  return out;
}

std::vector<Value> mul_vjp(const VjpArgs& a) {
  std::vector<Value> out(2);
  if (a.wanted[0]) out[0] = unbroadcast(a.dy() * a.in(1), a.in_shape(0));
  if (a.wanted[1]) out[1] = unbroadcast(a.dy() * a.in(0), a.in_shape(1));
  return out;
}

std::vector<Value> div_vjp(const VjpArgs& a) {
  std::vector<Value> out(2);
  if (a.wanted[0]) out[0] = unbroadcast(a.dy() / a.in(1), a.in_shape(0));
  if (a.wanted[1]) out[1] = unbroadcast(neg(a.dy() * a.y() / a.in(1)), a.in_shape(1));
  return out;
}

}  // namespace

GG_OP(add_op) = {.name = "add", .arity = 2, .diff_inputs = 0b11, .inplace = 0b11,
                 .kernels = {.f32 = add_fwd<float>, .f64 = add_fwd<double>}, .infer = infer, .vjp = add_vjp};
GG_OP(sub_op) = {.name = "sub", .arity = 2, .diff_inputs = 0b11, .inplace = 0b11,
                 .kernels = {.f32 = sub_fwd<float>, .f64 = sub_fwd<double>}, .infer = infer, .vjp = sub_vjp};
GG_OP(mul_op) = {.name = "mul", .arity = 2, .diff_inputs = 0b11, .inplace = 0b11,
                 .kernels = {.f32 = mul_fwd<float>, .f64 = mul_fwd<double>}, .infer = infer, .vjp = mul_vjp};
GG_OP(div_op) = {.name = "div", .arity = 2, .diff_inputs = 0b11, .inplace = 0b11,
                 .kernels = {.f32 = div_fwd<float>, .f64 = div_fwd<double>}, .infer = infer, .vjp = div_vjp};

}  // namespace detail

Value add(Value a, Value b) { return detail::make(detail::add_op, {a, b}); }
Value sub(Value a, Value b) { return detail::make(detail::sub_op, {a, b}); }
Value mul(Value a, Value b) { return detail::make(detail::mul_op, {a, b}); }
Value div(Value a, Value b) { return detail::make(detail::div_op, {a, b}); }

}  // namespace gg
