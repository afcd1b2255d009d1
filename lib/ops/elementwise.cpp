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
#include "onnx.hpp"

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

// ONNX: Add, Sub, Mul, Div, which broadcast as NumPy does, as these ops do. A rank-2 result
// follows a computed operand held swapped (a product of the columns layout, lib/ops/onnx.hpp):
// the other operand is then turned too, which for a constant is free (a bias {64, 1} is stored
// {1, 64}, a vector {k} as the column {k, 1}); a computed vector cannot be turned, so then the
// swapped operand pays a Transpose instead. Leading extents of 1 of a constant are dropped when
// the other operand has the result's rank (broadcasting puts them back): OpenCV reads an Add of
// a constant {64} to an {N, 64} tensor as a bias per channel, but {1, 64} as something else.
// A division by a constant is a Mul by its reciprocal (stored so): OpenCV 4.6 miscomputes a Div
// by a constant vector in tests/test_onnx_opencv.cpp's graph (alone it is right), and gets the
// Mul right; x * (1 / c) differs from x / c by a rounding at most.
void binary_onnx(OnnxWriter& w, const char* type, bool reciprocal = false) {
  const int r = w.node().out().shape.rank;
  bool swapped = false;
  for (int i = 0; i < 2 && r == 2; ++i)
    if (!w.is_constant(i) && w.in_shape(i).rank == 2 && w.held_swapped(i)) swapped = true;
  for (int i = 0; i < 2 && swapped; ++i)
    if (!w.is_constant(i) && w.in_shape(i).rank == 1 && w.in_shape(i)[0] != 1) swapped = false;
  std::vector<std::string> in;
  for (int i = 0; i < 2; ++i) {
    if (!w.is_constant(i)) {
      in.push_back(w.in(i, swapped));
      continue;
    }
    Tensor c = w.constant(i);
    Shape s = c.shape();
    bool changed = false;
    if (reciprocal && i == 1) {
      Tensor d = Tensor::copy_of(c, DType::f64);  // 1 / c correctly rounded to c's dtype
      for (std::int64_t k = 0; k < d.numel(); ++k) d.ptr<double>()[k] = 1.0 / d.ptr<double>()[k];
      c = Tensor::copy_of(d, c.dtype());
      changed = true;
    }
    if (swapped && s.rank == 2) c = transposed_copy(c), changed = true;
    if (swapped && s.rank == 1) c = reshaped_copy(c, Shape{s[0], 1}), changed = true;
    s = c.shape();
    if (w.in_shape(1 - i).rank == r && s.rank > 1 && s[0] == 1) {
      int lead = 0;
      while (lead < s.rank - 1 && s[lead] == 1) ++lead;
      c = reshaped_copy(c, Shape::of(s.dims + lead, s.rank - lead)), changed = true;
    }
    const Operand o = w.node().inputs[static_cast<std::size_t>(i)];
    in.push_back(changed ? w.initializer(c, w.graph().node(o.node).name) : w.in(i));
  }
  w.add(type, in, {w.out(0, swapped)});
}
void add_onnx(OnnxWriter& w) { binary_onnx(w, "Add"); }
void sub_onnx(OnnxWriter& w) { binary_onnx(w, "Sub"); }
void mul_onnx(OnnxWriter& w) { binary_onnx(w, "Mul"); }
void div_onnx(OnnxWriter& w) {
  if (w.is_constant(1) && !w.is_constant(0))
    binary_onnx(w, "Mul", true);
  else
    binary_onnx(w, "Div");
}

}  // namespace

GG_OP(add_op) = {.name = "add", .arity = 2, .diff_inputs = 0b11, .inplace = 0b11,
                 .kernels = {.f32 = add_fwd<float>, .f64 = add_fwd<double>}, .infer = infer, .vjp = add_vjp,
                 .onnx = add_onnx};
GG_OP(sub_op) = {.name = "sub", .arity = 2, .diff_inputs = 0b11, .inplace = 0b11,
                 .kernels = {.f32 = sub_fwd<float>, .f64 = sub_fwd<double>}, .infer = infer, .vjp = sub_vjp,
                 .onnx = sub_onnx};
GG_OP(mul_op) = {.name = "mul", .arity = 2, .diff_inputs = 0b11, .inplace = 0b11,
                 .kernels = {.f32 = mul_fwd<float>, .f64 = mul_fwd<double>}, .infer = infer, .vjp = mul_vjp,
                 .onnx = mul_onnx};
GG_OP(div_op) = {.name = "div", .arity = 2, .diff_inputs = 0b11, .inplace = 0b11,
                 .kernels = {.f32 = div_fwd<float>, .f64 = div_fwd<double>}, .infer = infer, .vjp = div_vjp,
                 .onnx = div_onnx};

}  // namespace detail

Value add(Value a, Value b) { return detail::make(detail::add_op, {a, b}); }
Value sub(Value a, Value b) { return detail::make(detail::sub_op, {a, b}); }
Value mul(Value a, Value b) { return detail::make(detail::mul_op, {a, b}); }
Value div(Value a, Value b) { return detail::make(detail::div_op, {a, b}); }

}  // namespace gg
