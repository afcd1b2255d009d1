// Leaves: the nodes without operands. Graph's own methods construct them (graph.hpp).
//   input     fed by every run (the caller's memory; a view may be strided)
//   param     trainable, persistent: initialised when a program is created, saved in checkpoints
//   state     persistent, not trainable (optimizer moments, step counters)
//   constant  a tensor copied into the graph
//   fill      a tensor of one value, possibly of an open shape: written once, when a program is
//             planned for a batch size (the seed of gradients(), zero gradients)
#include "kernels.hpp"
#include "onnx.hpp"

namespace gg {
namespace detail {
namespace {

// Leaves get their outputs from the Graph method that makes them.
Outputs infer_leaf(const Graph&, const Node& n) { return n.outputs[0]; }

// Every element of a fill.
struct FillAttrs {
  Shape shape;
  double value = 0;
  template <typename F> void visit(F&& f) { f("shape", shape), f("value", value); }
};

template <typename T>
void fill_kernel(const KernelArgs& k) {
  const T v = static_cast<T>(k.attrs<FillAttrs>().value);
  T* o = data<T>(k.out[0]);
  for (std::int64_t i = 0, n = k.out[0].numel(); i < n; ++i) o[i] = v;
}

// ONNX: inputs are the model's inputs (named, the open dimension symbolic); params and states
// are initializers holding their values in the program exported from, constants their tensor, a
// fill of a static shape its elements.
void input_onnx(OnnxWriter& w) { w.graph_input(); }
void stored_onnx(OnnxWriter& w) { w.constant_out(0, Tensor::copy_of(w.stored())); }
void constant_onnx(OnnxWriter& w) { w.constant_out(0, w.node().value); }
void fill_onnx(OnnxWriter& w) {
  const Port& p = w.node().out();
  if (p.shape.has_dyn()) w.refuse("has an open (dyn) shape, which an ONNX constant cannot have");
  const std::vector<double> values(static_cast<std::size_t>(p.shape.numel()), w.node().attrs.as<FillAttrs>().value);
  w.constant_out(0, Tensor::copy_of(Tensor::from<double>(p.shape, values), p.dtype));
}

}  // namespace

GG_OP(input_op) = {.name = "input", .flags = kNonDifferentiable, .storage = Storage::external, .infer = infer_leaf,
                   .onnx = input_onnx};
GG_OP(param_op) = {.name = "param", .flags = kTrainable, .storage = Storage::persistent, .infer = infer_leaf,
                   .onnx = stored_onnx};
GG_OP(state_op) = {.name = "state", .flags = kNonDifferentiable, .storage = Storage::persistent, .infer = infer_leaf,
                   .onnx = stored_onnx};
GG_OP(constant_op) = {.name = "constant", .flags = kNonDifferentiable, .storage = Storage::constant, .infer = infer_leaf,
                      .onnx = constant_onnx};
GG_OP(fill_op) = {
    .name = "fill",
    .flags = kNonDifferentiable | kOnce,
    .kernels = {fill_kernel<float>, fill_kernel<double>, fill_kernel<std::int64_t>, fill_kernel<std::uint8_t>},
    .infer = infer_leaf,
    .onnx = fill_onnx,
};

}  // namespace detail

Value Graph::fill(const Shape& shape, double v, DType dtype) {
  Node n;
  n.name = "fill#" + std::to_string(size());
  n.attrs = Attrs(detail::FillAttrs{shape, v});
  return add_leaf(detail::fill_op, std::move(n), dtype, shape);
}

}  // namespace gg
