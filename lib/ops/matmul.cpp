// MatMul: C = alpha * batch^batch_power * op(A) op(B), op(X) = X or X^T, rank 2, float.
//
// Transposes never copy: op(X) is X's view with its two strides swapped, handed to BLIS's
// typed gemm, which packs panels itself and takes any row/column strides (so operands may be
// strided feeds: kStrided). alpha is 1 for user nodes; the fusion rules below fold a scale that
// only feeds GEMMs into it, and a scale of a GEMM's result (batch_power carries a mean's 1/m).
//
// VJP, with C = op(A) op(B):  d op(A) = G op(B)^T,  d op(B) = op(A)^T G, transposing back where
// op() transposed; alpha scales both.
#include "fusion.hpp"
#include "op.hpp"
#include "op_list.hpp"

#include <blis.h>

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// C = op(A) op(B), op(X) = X or X^T. Rank-2 float operands; transposes are BLIS strides, never copies.
Value matmul(Value a, Value b, bool trans_a = false, bool trans_b = false);
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

struct MatMulAttrs {
  bool trans_a = false, trans_b = false;  // op(A) = A^T, op(B) = B^T
  double alpha = 1;                       // C = alpha * batch^batch_power * op(A) op(B)
  int batch_power = 0;
  template <typename F> void visit(F&& f) {
    f("trans_a", trans_a), f("trans_b", trans_b), f("alpha", alpha), f("batch_power", batch_power);
  }
};

Outputs infer(const Graph& g, const Node& n) {
  require_float(g, n, 0);
  const DType t = require_same_dtype(g, n, 0, 1);
  const MatMulAttrs& at = n.attrs.as<MatMulAttrs>();
  const Shape& a = operand(g, n, 0).shape;
  const Shape& b = operand(g, n, 1).shape;
  if (a.rank != 2 || b.rank != 2) fail(g, n, "operands must be rank 2");
  const std::int64_t m = at.trans_a ? a[1] : a[0], ka = at.trans_a ? a[0] : a[1];
  const std::int64_t kb = at.trans_b ? b[1] : b[0], nn = at.trans_b ? b[0] : b[1];
  if (ka != kb)
    throw GraphError(std::string("matmul: inner dimensions differ: ") + describe(g, n.inputs[0]) + (at.trans_a ? "^T" : "") +
                     " times " + describe(g, n.inputs[1]) + (at.trans_b ? "^T" : ""));
  return Port{t, Shape{m, nn}};
}

// op(X) as a view: the transpose is a stride swap.
TensorView op_view(const TensorView& v, bool trans) { return trans ? v.transposed() : v; }

template <typename T>
void forward(const KernelArgs& k) {
  const MatMulAttrs& at = k.attrs<MatMulAttrs>();
  TensorView a = op_view(k.in[0], at.trans_a), b = op_view(k.in[1], at.trans_b);
  const TensorView& c = k.out[0];
  const dim_t m = a.shape[0], kk = a.shape[1], n = b.shape[1];
  T alpha = static_cast<T>(batch_factor(at.alpha, at.batch_power, k.batch)), beta = 0;
  if (m == 0 || n == 0) return;
  if (kk == 0) {  // BLIS would scale C by beta; an empty sum is zero
    for (dim_t i = 0; i < m; ++i)
      for (dim_t j = 0; j < n; ++j) data<T>(c)[i * c.strides[0] + j * c.strides[1]] = 0;
    return;
  }
  // Threads per call (not BLIS's global setting). Every call of a program uses the program's
  // thread count: libgomp caches the team of the last parallel region and reuses it when the
  // next one asks for the same size, so steady-state steps allocate nothing (a team of one is
  // never cached, so single-threaded programs do allocate one per GEMM, inside libgomp).
  rntm_t rntm = BLIS_RNTM_INITIALIZER;
  bli_rntm_set_num_threads(k.threads, &rntm);
  if constexpr (std::is_same_v<T, float>)
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, kk, &alpha, data<T>(a), a.strides[0], a.strides[1],
                 data<T>(b), b.strides[0], b.strides[1], &beta, data<T>(c), c.strides[0], c.strides[1], nullptr, &rntm);
  else
    bli_dgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, kk, &alpha, data<T>(a), a.strides[0], a.strides[1],
                 data<T>(b), b.strides[0], b.strides[1], &beta, data<T>(c), c.strides[0], c.strides[1], nullptr, &rntm);
}

Value gemm(Value x, Value y, MatMulAttrs at);

std::vector<Value> vjp(const VjpArgs& a) {
  const MatMulAttrs& at = a.attrs<MatMulAttrs>();
  Value A = a.in(0), B = a.in(1), G = a.dy();
  const bool ta = at.trans_a, tb = at.trans_b;
  auto mm = [&](Value x, Value y, bool tx, bool ty) { return gemm(x, y, {tx, ty, at.alpha, at.batch_power}); };
  std::vector<Value> out(2);
  if (a.wanted[0]) out[0] = ta ? mm(B, G, tb, true) : mm(G, B, false, !tb);
  if (a.wanted[1]) out[1] = tb ? mm(G, A, true, ta) : mm(A, G, !ta, false);
  return out;
}

}  // namespace

GG_OP(matmul_op) = {.name = "matmul", .arity = 2, .flags = kStrided, .diff_inputs = 0b11,
                    .kernels = {.f32 = forward<float>, .f64 = forward<double>}, .infer = infer, .vjp = vjp};

namespace {

Value gemm(Value x, Value y, MatMulAttrs at) { return make(matmul_op, {x, y}, Attrs(at)); }

// The scale's factor folded into a GEMM's: exact in real arithmetic ((sA)B = s(AB)); in floating
// point BLIS applies it once instead of a separate pass (bitwise equal for powers of two).
void fold(MatMulAttrs& mm, const Node& scale_node) {
  const ScaleAttrs& s = scale_node.attrs.as<ScaleAttrs>();
  mm.alpha *= s.factor;
  mm.batch_power += s.batch_power;
}

// matmul(scale(x), y) and matmul(y, scale(x)) -> matmul with alpha, when every reader of the scale
// is a GEMM and the scale is not fetched. A GEMM reading the scaled value twice gets it twice.
bool fold_scale_into_readers(Rewriter& r, int i) {
  IrNode& sc = r.at(i);
  if (sc.node.op != &scale_op || sc.fetched) return false;
  const std::vector<int> rs = r.readers(i);
  if (rs.empty()) return false;
  for (int x : rs)
    if (r.op(x) != &matmul_op) return false;
  for (int x : rs) {
    Node& mm = r.at(x).node;
    int uses = 0;
    for (Operand& o : mm.inputs)
      if (o.node == i) o = sc.node.inputs[0], ++uses;
    if (uses == 0) continue;  // a second entry for a GEMM already rewritten
    for (int k = 0; k < uses; ++k) fold(mm.attrs.as<MatMulAttrs>(), sc.node);
    mm.fused = true;
  }
  r.kill(i);
  return true;
}

// scale(matmul(x, y)) -> matmul with alpha (it takes the scale's place and name), when the GEMM
// has no other reader and neither is fetched.
bool fold_scale_of_gemm(Rewriter& r, int i) {
  IrNode& sc = r.at(i);
  if (sc.node.op != &scale_op || sc.fetched) return false;
  const int src = sc.node.inputs[0].node;
  IrNode& mm = r.at(src);
  if (mm.node.op != &matmul_op || mm.fetched || r.readers(src).size() != 1) return false;
  Node folded = mm.node;
  fold(folded.attrs.as<MatMulAttrs>(), sc.node);
  folded.name = sc.node.name;
  folded.fused = true;
  sc.node = folded;  // the GEMM's operands come earlier: the order still holds
  r.kill(src);
  return true;
}

}  // namespace

GG_FUSION(fold_scale_into_gemms_rule) = {"fold_scale_into_gemms", 0, fold_scale_into_readers};
GG_FUSION(fold_scale_of_gemm_rule) = {"fold_scale_of_gemm", 0, fold_scale_of_gemm};

}  // namespace detail

Value matmul(Value a, Value b, bool trans_a, bool trans_b) {
  return detail::gemm(a, b, {trans_a, trans_b, 1.0, 0});
}

}  // namespace gg
