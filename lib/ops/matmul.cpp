// MatMul: C = alpha * op(A) op(B), op(X) = X or X^T, rank 2.
//
// Transposes never copy: op(X) is X's view with its two strides swapped, handed to BLIS's
// typed gemm, which packs panels itself and takes any row/column strides. alpha is 1 for user
// nodes; the fusion pass folds a Scale that only feeds GEMMs into it (attrs.alpha and
// attrs.batch_power, resolved for the planned batch size into KernelArgs::scale).
#include "op.hpp"

#include <blis.h>

namespace gg {
namespace {

using namespace detail;


Shape infer(const Graph& g, const Node& n) {
  const Shape& a = g.node(n.inputs[0]).shape;
  const Shape& b = g.node(n.inputs[1]).shape;
  if (a.rank != 2 || b.rank != 2) fail(g, n, "operands must be rank 2");
  std::int64_t m = n.attrs.trans_a ? a[1] : a[0], ka = n.attrs.trans_a ? a[0] : a[1];
  std::int64_t kb = n.attrs.trans_b ? b[1] : b[0], nn = n.attrs.trans_b ? b[0] : b[1];
  if (ka != kb)
    throw GraphError(std::string("matmul: inner dimensions differ: ") + describe(g, n.inputs[0]) +
                     (n.attrs.trans_a ? "^T" : "") + " times " + describe(g, n.inputs[1]) + (n.attrs.trans_b ? "^T" : ""));
  return Shape{m, nn};
}

// op(X) as a view: the transpose is a stride swap.
TensorView op_view(const TensorView& v, bool trans) { return trans ? v.transposed() : v; }

template <typename T>
void forward(const KernelArgs& k) {
  TensorView a = op_view(k.in[0], k.attrs->trans_a), b = op_view(k.in[1], k.attrs->trans_b);
  const TensorView& c = k.out;
  const dim_t m = a.shape[0], kk = a.shape[1], n = b.shape[1];
  T alpha = static_cast<T>(k.scale), beta = 0;
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

// With C = op(A) op(B):  d op(A) = G op(B)^T,  d op(B) = op(A)^T G; transposing back where
// op() transposed. alpha (if fused) scales both.
std::vector<Value> vjp(Graph& g, const Node& node, Value, Value grad, const std::vector<bool>& wanted) {
  Value A = in(g, node, 0), B = in(g, node, 1);
  const bool ta = node.attrs.trans_a, tb = node.attrs.trans_b;
  auto mm = [&](Value x, Value y, bool tx, bool ty) {
    Attrs at;
    at.trans_a = tx;
    at.trans_b = ty;
    at.alpha = node.attrs.alpha;
    at.batch_power = node.attrs.batch_power;
    return g.add_node(Op::MatMul, {x, y}, at);
  };
  std::vector<Value> out(2);
  if (wanted[0]) out[0] = ta ? mm(B, grad, tb, true) : mm(grad, B, false, !tb);
  if (wanted[1]) out[1] = tb ? mm(grad, A, true, ta) : mm(A, grad, !ta, false);
  return out;
}

}  // namespace

namespace detail {
extern const OpDef kMatMulDef = {"matmul", 2, kStrided, 0b11, 0, infer, forward<float>, forward<double>, vjp};
}

Value matmul(Value a, Value b, bool trans_a, bool trans_b) {
  Attrs at;
  at.trans_a = trans_a;
  at.trans_b = trans_b;
  return detail::graph_of(a).add_node(Op::MatMul, {a, b}, at);
}

}  // namespace gg
