// Unary elementwise ops on float tensors. Where the derivative is cheapest from the output y, the
// VJP uses y (the forward pass already holds it):
//   neg:        -g                     scale(s):   s g
//   add_scalar: g                      pow(p):     g p x^(p-1)
//   exp:        g y                    log:        g / x
//   sqrt:       g / (2 y)              relu:       g 1[y > 0]   (relu'(0) = 0)
//   sigmoid:    g y (1 - y)            tanh:       g (1 - y^2)
// relu_grad(g, y) = g 1[y > 0] is an op of its own (made by relu's VJP) so that the mask costs
// one pass; it is linear in g (its VJP is itself) and has zero derivative in y almost everywhere.
// add_relu(a, b) = relu(a + b) with broadcasting is made by the fusion rule below: the bias add
// and the activation in one pass over the GEMM output (in place), bit for bit the unfused pair.
// relu_grad_sum_to(g, y) = (relu_grad(g, y), sum_to(relu_grad(g, y), shape)) is made by the
// second rule below: the ReLU mask of the backward pass and the bias gradient summed from it
// (db1 = the row sums of dZ1 {64, m} over the batch) in one pass, bit for bit the unfused pair.
// NaN inputs propagate through every op except relu, which computes x > 0 ? x : 0 and so maps
// NaN to 0 (the comparison is false); a NaN loss still shows it.
#include "fusion.hpp"
#include "kernels.hpp"
#include "onnx.hpp"
#include "op_list.hpp"

#include <cmath>
#include <stdexcept>

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// Elementwise on float tensors.
Value neg(Value a);
Value scale(Value a, double s);        // s * a
Value add_scalar(Value a, double s);   // a + s
Value pow(Value a, double p);          // a^p (a > 0 unless p is a whole number)
Value exp(Value a);
Value log(Value a);
Value sqrt(Value a);
Value relu(Value a);
Value sigmoid(Value a);
Value tanh(Value a);
inline Value operator-(Value a) { return neg(a); }
inline Value operator*(Value a, double s) { return scale(a, s); }
inline Value operator*(double s, Value a) { return scale(a, s); }
inline Value operator/(Value a, double s) { return scale(a, 1.0 / s); }
inline Value operator+(Value a, double s) { return add_scalar(a, s); }
inline Value operator+(double s, Value a) { return add_scalar(a, s); }
inline Value operator-(Value a, double s) { return add_scalar(a, -s); }
inline Value operator-(double s, Value a) { return add_scalar(neg(a), s); }
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

// add_scalar: y = x + value;  pow: y = x^value.
struct ScalarAttrs {
  double value = 0;
  template <typename F> void visit(F&& f) { f("value", value); }
};

Outputs same(const Graph& g, const Node& n) { return Port{require_float(g, n, 0), operand(g, n, 0).shape}; }

Outputs same2(const Graph& g, const Node& n) {
  require_float(g, n, 0);
  const DType t = require_same_dtype(g, n, 0, 1);
  if (operand(g, n, 0).shape != operand(g, n, 1).shape) fail(g, n, "operands must have the same shape");
  return Port{t, operand(g, n, 0).shape};
}

Outputs broadcast2(const Graph& g, const Node& n) {
  require_float(g, n, 0);
  return Port{require_same_dtype(g, n, 0, 1), broadcast_shapes(g, n)};
}

template <typename T> void neg_fwd(const KernelArgs& k) { unary_kernel<T>(k, [](T x) { return -x; }); }
template <typename T> void scale_fwd(const KernelArgs& k) {
  const ScaleAttrs& a = k.attrs<ScaleAttrs>();
  const T s = static_cast<T>(batch_factor(a.factor, a.batch_power, k.batch));
  unary_kernel<T>(k, [s](T x) { return s * x; });
}
template <typename T> void add_scalar_fwd(const KernelArgs& k) {
  const T s = static_cast<T>(k.attrs<ScalarAttrs>().value);
  unary_kernel<T>(k, [s](T x) { return x + s; });
}
template <typename T> void pow_fwd(const KernelArgs& k) {
  const T p = static_cast<T>(k.attrs<ScalarAttrs>().value);
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
template <typename T> T relu_mask(T g, T y) { return y > T(0) ? g : T(0); }
template <typename T> void relu_grad_fwd(const KernelArgs& k) {
  binary_kernel<T>(k, [](T g, T y) { return relu_mask(g, y); });
}

// The target shape of the sum (relu_grad_sum_to's output 1).
struct SumToAttrs {
  Shape shape;
  template <typename F> void visit(F&& f) { f("shape", shape); }
};

Outputs infer_relu_grad_sum_to(const Graph& g, const Node& n) {
  const Port d = same2(g, n).port[0];
  return Outputs(d, Port{d.dtype, n.attrs.as<SumToAttrs>().shape});
}

// Output 0: d = relu_grad(g, y); output 1: sum_to(d, shape), a middle-axis reduction (the rule
// checks). reduce_middle_with asks for each element of d once, in its summation loop: the
// element is masked, stored into output 0 and added, in the order of sum_to's kernel (the same
// function), so both outputs are bitwise those of the two separate kernels, in one pass over
// g and y. Each sum is computed by one thread: no partials, whatever the thread count.
template <typename T> void relu_grad_sum_to_fwd(const KernelArgs& k) {
  const T* g = data<T>(k.in[0]);
  const T* y = data<T>(k.in[1]);
  T* d = data<T>(k.out[0]);  // may be g's buffer (in place): each element is read, then written
  T* sum = data<T>(k.out[1]);
  MiddleRun m;
  if (!middle_run(k.in[0].shape, k.out[1].shape, m))
    throw std::logic_error("relu_grad_sum_to: the sum is not a middle-axis reduction");
  auto value = [=](std::int64_t i) {
    const T v = relu_mask(g[i], y[i]);
    d[i] = v;
    return v;
  };
  if (m.copy) {  // nothing summed (a batch of one): sum_to copies
    for (std::int64_t i = 0; i < m.outer; ++i) sum[i] = value(i);
    return;
  }
  reduce_middle_with<T>(value, sum, m.outer, m.n, m.inner, k.threads);
}

template <typename T> void add_relu_fwd(const KernelArgs& k) {
  binary_kernel<T>(k, [](T a, T b) {
    const T s = a + b;
    return s > T(0) ? s : T(0);
  });
}

using Grads = std::vector<Value>;

Grads neg_vjp(const VjpArgs& a) { return {neg(a.dy())}; }
Grads scale_vjp(const VjpArgs& a) {
  const ScaleAttrs& s = a.attrs<ScaleAttrs>();
  return {scale_batch(a.dy(), s.factor, s.batch_power)};
}
Grads add_scalar_vjp(const VjpArgs& a) { return {a.dy()}; }
Grads pow_vjp(const VjpArgs& a) {
  const double p = a.attrs<ScalarAttrs>().value;
  Value x = a.in(0);
  if (p == 1.0) return {a.dy()};
  if (p == 2.0) return {a.dy() * (x * 2.0)};
  return {a.dy() * scale(pow(x, p - 1.0), p)};
}
Grads exp_vjp(const VjpArgs& a) { return {a.dy() * a.y()}; }
Grads log_vjp(const VjpArgs& a) { return {a.dy() / a.in(0)}; }
Grads sqrt_vjp(const VjpArgs& a) { return {scale(a.dy() / a.y(), 0.5)}; }
Value relu_grad(Value g, Value y);
Grads relu_vjp(const VjpArgs& a) { return {relu_grad(a.dy(), a.y())}; }
Grads sigmoid_vjp(const VjpArgs& a) { return {a.dy() * (a.y() * (1.0 - a.y()))}; }
Grads tanh_vjp(const VjpArgs& a) { return {a.dy() * (1.0 - a.y() * a.y())}; }
Grads relu_grad_vjp(const VjpArgs& a) {
  Grads out(2);
  if (a.wanted[0]) out[0] = relu_grad(a.dy(), a.in(1));
  return out;  // d/dy is zero almost everywhere: no contribution
}
// As for relu(a + b): g' = relu_grad(g, y), da = unbroadcast(g'), db = unbroadcast(g').
Grads add_relu_vjp(const VjpArgs& a) {
  Value gy = relu_grad(a.dy(), a.y());
  Grads out(2);
  if (a.wanted[0]) out[0] = unbroadcast(gy, a.in_shape(0));
  if (a.wanted[1]) out[1] = unbroadcast(gy, a.in_shape(1));
  return out;
}

// ONNX: the elementwise ops of the same names, following their operand's orientation (lib/ops/
// onnx.hpp); scale and add_scalar multiply and add a scalar initializer, pow raises to one.
// ONNX's Relu is max(x, 0), which maps NaN to NaN where ours gives 0: only NaNs differ.
void unary_onnx(OnnxWriter& w, const char* type) {
  const bool swapped = w.held_swapped(0);
  w.add(type, {w.in(0, swapped)}, {w.out(0, swapped)});
}
void with_scalar_onnx(OnnxWriter& w, const char* type, double v) {
  const bool swapped = w.held_swapped(0);
  w.add(type, {w.in(0, swapped), w.initializer(scalar_tensor(v, w.node().out().dtype), "scalar")}, {w.out(0, swapped)});
}
void neg_onnx(OnnxWriter& w) { unary_onnx(w, "Neg"); }
void exp_onnx(OnnxWriter& w) { unary_onnx(w, "Exp"); }
void log_onnx(OnnxWriter& w) { unary_onnx(w, "Log"); }
void sqrt_onnx(OnnxWriter& w) { unary_onnx(w, "Sqrt"); }
void relu_onnx(OnnxWriter& w) { unary_onnx(w, "Relu"); }
void sigmoid_onnx(OnnxWriter& w) { unary_onnx(w, "Sigmoid"); }
void tanh_onnx(OnnxWriter& w) { unary_onnx(w, "Tanh"); }
void scale_onnx(OnnxWriter& w) {
  const ScaleAttrs& a = w.node().attrs.as<ScaleAttrs>();
  if (a.batch_power != 0) w.refuse("has a factor that depends on the batch size (a mean over the open dimension)");
  with_scalar_onnx(w, "Mul", a.factor);
}
void add_scalar_onnx(OnnxWriter& w) { with_scalar_onnx(w, "Add", w.node().attrs.as<ScalarAttrs>().value); }
// x^2 is x * x, as the kernel computes it (and OpenCV 4.6 fuses a Pow and an Add of a scalar
// after it into one layer that adds first: tests/test_onnx_opencv.cpp saw it).
void pow_onnx(OnnxWriter& w) {
  const double p = w.node().attrs.as<ScalarAttrs>().value;
  if (p != 2.0) return with_scalar_onnx(w, "Pow", p);
  const bool swapped = w.held_swapped(0);
  const std::string x = w.in(0, swapped);
  w.add("Mul", {x, x}, {w.out(0, swapped)});
}

}  // namespace

GG_OP(neg_op) = {.name = "neg", .arity = 1, .diff_inputs = 0b1, .inplace = 0b1,
                .kernels = {.f32 = neg_fwd<float>, .f64 = neg_fwd<double>}, .infer = same, .vjp = neg_vjp,
                .onnx = neg_onnx};
GG_OP(scale_op) = {.name = "scale", .arity = 1, .diff_inputs = 0b1, .inplace = 0b1,
                  .kernels = {.f32 = scale_fwd<float>, .f64 = scale_fwd<double>}, .infer = same, .vjp = scale_vjp,
                  .onnx = scale_onnx};
GG_OP(add_scalar_op) = {.name = "add_scalar", .arity = 1, .diff_inputs = 0b1, .inplace = 0b1,
                       .kernels = {.f32 = add_scalar_fwd<float>, .f64 = add_scalar_fwd<double>}, .infer = same, .vjp = add_scalar_vjp,
                       .onnx = add_scalar_onnx};
GG_OP(pow_op) = {.name = "pow", .arity = 1, .diff_inputs = 0b1, .inplace = 0b1,
                .kernels = {.f32 = pow_fwd<float>, .f64 = pow_fwd<double>}, .infer = same, .vjp = pow_vjp,
                .onnx = pow_onnx};
GG_OP(exp_op) = {.name = "exp", .arity = 1, .diff_inputs = 0b1, .inplace = 0b1,
                .kernels = {.f32 = exp_fwd<float>, .f64 = exp_fwd<double>}, .infer = same, .vjp = exp_vjp,
                .onnx = exp_onnx};
GG_OP(log_op) = {.name = "log", .arity = 1, .diff_inputs = 0b1, .inplace = 0b1,
                .kernels = {.f32 = log_fwd<float>, .f64 = log_fwd<double>}, .infer = same, .vjp = log_vjp,
                .onnx = log_onnx};
GG_OP(sqrt_op) = {.name = "sqrt", .arity = 1, .diff_inputs = 0b1, .inplace = 0b1,
                 .kernels = {.f32 = sqrt_fwd<float>, .f64 = sqrt_fwd<double>}, .infer = same, .vjp = sqrt_vjp,
                 .onnx = sqrt_onnx};
GG_OP(relu_op) = {.name = "relu", .arity = 1, .diff_inputs = 0b1, .inplace = 0b1,
                 .kernels = {.f32 = relu_fwd<float>, .f64 = relu_fwd<double>}, .infer = same, .vjp = relu_vjp,
                 .onnx = relu_onnx};
GG_OP(sigmoid_op) = {.name = "sigmoid", .arity = 1, .diff_inputs = 0b1, .inplace = 0b1,
                    .kernels = {.f32 = sigmoid_fwd<float>, .f64 = sigmoid_fwd<double>}, .infer = same, .vjp = sigmoid_vjp,
                    .onnx = sigmoid_onnx};
GG_OP(tanh_op) = {.name = "tanh", .arity = 1, .diff_inputs = 0b1, .inplace = 0b1,
                 .kernels = {.f32 = tanh_fwd<float>, .f64 = tanh_fwd<double>}, .infer = same, .vjp = tanh_vjp,
                 .onnx = tanh_onnx};
GG_OP(relu_grad_op) = {.name = "relu_grad", .arity = 2, .flags = kInternal, .diff_inputs = 0b01, .inplace = 0b01,
                       .kernels = {.f32 = relu_grad_fwd<float>, .f64 = relu_grad_fwd<double>}, .infer = same2,
                       .vjp = relu_grad_vjp};
GG_OP(relu_grad_sum_to_op) = {.name = "relu_grad_sum_to", .arity = 2, .outputs = 2,
                              .flags = kInternal | kNonDifferentiable, .inplace = 0b01,
                              .kernels = {.f32 = relu_grad_sum_to_fwd<float>, .f64 = relu_grad_sum_to_fwd<double>},
                              .infer = infer_relu_grad_sum_to};
GG_OP(add_relu_op) = {.name = "add_relu", .arity = 2, .flags = kInternal, .diff_inputs = 0b11, .inplace = 0b11,
                      .kernels = {.f32 = add_relu_fwd<float>, .f64 = add_relu_fwd<double>}, .infer = broadcast2,
                      .vjp = add_relu_vjp};

namespace {
Value relu_grad(Value g, Value y) { return make(relu_grad_op, {g, y}); }

// relu(add(a, b)) -> add_relu(a, b), when nobody else reads or fetches the add. The relu node
// becomes the add_relu (it keeps its name and readers).
bool fuse_add_relu(Rewriter& r, int i) {
  IrNode& x = r.at(i);
  if (x.node.op != &relu_op) return false;
  const int a = x.node.inputs[0].node;
  if (r.op(a) != &add_op || r.fetched(a) || r.readers(a).size() != 1) return false;
  x.node.op = &add_relu_op;
  x.node.inputs = r.at(a).node.inputs;
  x.node.fused = true;
  r.kill(a);  // nothing reads it any more
  return true;
}
}  // namespace

GG_FUSION(add_relu_rule) = {"add_relu", 0, fuse_add_relu};

namespace {
// relu_grad(g, y) read by sum_to(., shape) that sums trailing dimensions into row sums (db1 =
// sum_to(dZ1 {64, dyn}, {64, 1}): the bias gradient of the features x examples layout, summed
// over the batch) -> relu_grad_sum_to(g, y), whose output 0 is the relu_grad's value (its other
// readers, such as the dW1 GEMM, and its fetches stay) and output 1 the sum (every use and fetch
// of the sum_to moves there). Not for column sums ({dyn, 64} -> {64}, the rows layout): their
// kernel runs one thread per 64 output columns, so fused, the mask would lose the threads the
// separate relu_grad has (measured slower). Phase 2: after unpool_relu_grad (phase 1) has moved
// CNN masks before their unpooling.
bool fuse_relu_grad_sum_to(Rewriter& r, int i) {
  IrNode& rg = r.at(i);
  if (rg.node.op != &relu_grad_op) return false;
  for (const int j : r.readers(i)) {
    const Node& sm = r.at(j).node;
    MiddleRun m;
    if (sm.op != &sum_to_op || !(sm.inputs[0] == Operand{i, 0}) || sm.out().dtype != rg.node.out().dtype ||
        !middle_run(rg.node.out().shape, sm.out().shape, m) || m.copy || m.inner != 1)
      continue;
    rg.node.op = &relu_grad_sum_to_op;
    rg.node.num_outputs = 2;
    rg.node.outputs[1] = sm.outputs[0];
    rg.node.attrs = Attrs(SumToAttrs{sm.out().shape});
    rg.node.fused = true;
    r.replace(j, {Operand{i, 1}});
    return true;
  }
  return false;
}
}  // namespace

GG_FUSION(relu_grad_sum_to_rule) = {"relu_grad_sum_to", 2, fuse_relu_grad_sum_to};

Value scale_batch(Value v, double s, int batch_power) { return make(scale_op, {v}, Attrs(ScaleAttrs{s, batch_power})); }

}  // namespace detail

Value neg(Value a) { return detail::make(detail::neg_op, {a}); }
Value scale(Value a, double s) { return detail::make(detail::scale_op, {a}, Attrs(detail::ScaleAttrs{s, 0})); }
Value add_scalar(Value a, double s) { return detail::make(detail::add_scalar_op, {a}, Attrs(detail::ScalarAttrs{s})); }
Value pow(Value a, double p) { return detail::make(detail::pow_op, {a}, Attrs(detail::ScalarAttrs{p})); }
Value exp(Value a) { return detail::make(detail::exp_op, {a}); }
Value log(Value a) { return detail::make(detail::log_op, {a}); }
Value sqrt(Value a) { return detail::make(detail::sqrt_op, {a}); }
Value relu(Value a) { return detail::make(detail::relu_op, {a}); }
Value sigmoid(Value a) { return detail::make(detail::sigmoid_op, {a}); }
Value tanh(Value a) { return detail::make(detail::tanh_op, {a}); }

}  // namespace gg
