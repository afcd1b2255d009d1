// Shape ops and leaves.
//   reshape:   a view of the same contiguous memory (no kernel)  dx = reshape(g, shape(x))
//   transpose: a copy with permuted axes                          dx = transpose(g, perm^-1)
//   fill:      a constant of a (possibly open) shape, written when the program is planned
#include "kernels.hpp"

namespace gg {
namespace {

using namespace detail;

Shape infer_leaf(const Graph&, const Node& n) { return n.shape; }

Shape infer_fill(const Graph&, const Node& n) { return n.attrs.shape; }

template <typename T>
void fill_fwd(const KernelArgs& k) {
  const T v = static_cast<T>(k.attrs->scalar);
  T* o = data<T>(k.out);
  for (std::int64_t i = 0, n = k.out.numel(); i < n; ++i) o[i] = v;
}

// Sizes agree when the static parts have equal products and both have as many open dims.
Shape infer_reshape(const Graph& g, const Node& n) {
  const Shape& s = g.node(n.inputs[0]).shape;
  const Shape& t = n.attrs.shape;
  Count a = count_except(s, -1), b = count_except(t, -1);
  if (a.fixed != b.fixed || a.dyn_count != b.dyn_count)
    fail(g, n, "cannot reshape " + to_string(s) + " to " + to_string(t) + " (sizes differ)");
  return t;
}

Shape infer_transpose(const Graph& g, const Node& n) {
  const Shape& s = g.node(n.inputs[0]).shape;
  Shape r = s;
  bool seen[kMaxRank] = {};
  for (int i = 0; i < s.rank; ++i) {
    const int p = n.attrs.perm[i];
    if (p < 0 || p >= s.rank || seen[p]) fail(g, n, "perm is not a permutation of the axes of " + to_string(s));
    seen[p] = true;
    r.dims[i] = s.dims[p];
  }
  return r;
}

template <typename T>
void transpose_fwd(const KernelArgs& k) {
  const TensorView& x = k.in[0];
  const Shape& s = k.out.shape;
  Strides src;  // stride in x of each output axis
  for (int i = 0; i < s.rank; ++i) src.s[i] = x.strides[k.attrs->perm[i]];
  const T* px = data<T>(x);
  T* po = data<T>(k.out);
  if (s.rank == 0) {
    po[0] = px[0];
    return;
  }
  const int last = s.rank - 1;
  const std::int64_t L = s.dims[last], rows = L ? s.numel() / L : 0;
  parallel_for(rows, k.threads, L, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t r = lo; r < hi; ++r) {
      std::int64_t off = 0, rem = r;
      for (int d = last - 1; d >= 0; --d) {
        off += (rem % s.dims[d]) * src[d];
        rem /= s.dims[d];
      }
      for (std::int64_t j = 0; j < L; ++j) po[r * L + j] = px[off + j * src[last]];
    }
  });
}

std::vector<Value> reshape_vjp(Graph& g, const Node& n, Value, Value grad, const std::vector<bool>&) {
  return {reshape(grad, g.node(n.inputs[0]).shape)};
}

std::vector<Value> transpose_vjp(Graph&, const Node& n, Value, Value grad, const std::vector<bool>&) {
  std::vector<int> inv(static_cast<std::size_t>(n.shape.rank));
  for (int i = 0; i < n.shape.rank; ++i) inv[static_cast<std::size_t>(n.attrs.perm[i])] = i;
  return {transpose(grad, inv)};
}

}  // namespace

namespace detail {
extern const OpDef kInputDef = {"input", 0, kLeaf | kNonDifferentiable, 0, 0, infer_leaf, nullptr, nullptr, nullptr};
extern const OpDef kParamDef = {"param", 0, kLeaf, 0, 0, infer_leaf, nullptr, nullptr, nullptr};
extern const OpDef kStateDef = {"state", 0, kLeaf | kNonDifferentiable, 0, 0, infer_leaf, nullptr, nullptr, nullptr};
extern const OpDef kConstantDef = {"constant", 0, kLeaf | kNonDifferentiable, 0, 0, infer_leaf, nullptr, nullptr, nullptr};
extern const OpDef kFillDef = {"fill", 0, kNonDifferentiable, 0, 0, infer_fill, fill_fwd<float>, fill_fwd<double>, nullptr};
extern const OpDef kReshapeDef = {"reshape", 1, kView, 0b1, 0, infer_reshape, nullptr, nullptr, reshape_vjp};
extern const OpDef kTransposeDef = {"transpose", 1, kStrided, 0b1, 0, infer_transpose, transpose_fwd<float>,
                                    transpose_fwd<double>, transpose_vjp};
}  // namespace detail

Value reshape(Value a, const Shape& shape) {
  if (a.shape() == shape) return a;
  Attrs at;
  at.shape = shape;
  return detail::graph_of(a).add_node(Op::Reshape, {a}, at);
}

Value transpose(Value a) { return transpose(a, {1, 0}); }

Value transpose(Value a, std::vector<int> perm) {
  Attrs at;
  if (static_cast<int>(perm.size()) != a.shape().rank)
    throw GraphError("transpose: perm has " + std::to_string(perm.size()) + " axes but '" + a.name() + "' has shape " +
                     to_string(a.shape()));
  for (std::size_t i = 0; i < perm.size(); ++i) at.perm[i] = perm[i];
  return detail::graph_of(a).add_node(Op::Transpose, {a}, at);
}

}  // namespace gg
