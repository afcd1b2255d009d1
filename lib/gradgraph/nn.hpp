// Layer builders: networks in a few lines, on the graph API.
//
//   gg::Value x = g.input("X", {784, gg::dyn});                       // examples as columns
//   gg::Value z = gg::nn::build(gg::nn::parse("dense256,relu,dense128,relu,dense10"), x);
//
// A dense layer makes its weight and bias as parameters named W<k> and b<k> (k counts the dense
// layers of the graph, from 1: the notebook's W1, b1, W2, b2), so checkpoints of the same spec
// line up by name.
#pragma once

#include <gradgraph/graph.hpp>
#include <gradgraph/ops.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace gg::nn {

// Where the examples are: columns ({features, batch}, the notebook's X) or rows ({batch, features}).
enum class Layout : std::uint8_t { columns, rows };
const char* layout_name(Layout l);
Layout parse_layout(std::string_view name);  // "columns" | "rows"; throws std::invalid_argument

enum class Activation : std::uint8_t { none, relu, tanh, sigmoid };
const char* activation_name(Activation a);
Activation parse_activation(std::string_view name);  // "relu" | "tanh" | "sigmoid" | "none"
Value activate(Value x, Activation a);

struct DenseOptions {
  Layout layout = Layout::columns;
  Activation activation = Activation::none;
  Init init = he_normal();  // weights (fan-in from their shape); biases start at zero
  std::string weight_name, bias_name;  // default W<k>, b<k>
};
// columns: act(W x + b), W {units, in}, b {units, 1};  rows: act(x W + b), W {in, units}, b {units}.
Value dense(Value x, std::int64_t units, const DenseOptions& o = {});

// A network as text: comma-separated layers, applied in order.
//   denseN   a dense layer of N units (He-normal weights, zero bias)
//   relu, tanh, sigmoid
// The last layer's outputs are the logits. The convolution layers extend this grammar.
struct Layer {
  enum class Kind : std::uint8_t { dense, activation } kind = Kind::dense;
  std::int64_t units = 0;
  Activation activation = Activation::none;
};
struct Spec {
  std::vector<Layer> layers;
  std::string text() const;  // the canonical text, which parse reads back
  std::int64_t outputs() const;  // units of the last dense layer
};
// Throws std::invalid_argument naming the bad layer and what is accepted.
Spec parse(std::string_view text);
// The spec of an MLP: hidden layers of the given widths, each followed by the activation, then
// a dense layer of `classes` logits: mlp({64}, relu, 10) is "dense64,relu,dense10".
Spec mlp(const std::vector<std::int64_t>& hidden, Activation activation, std::int64_t classes);

// Applies the spec to x; returns the logits (classes along axis 0 for columns, 1 for rows).
Value build(const Spec& spec, Value x, Layout layout = Layout::columns);

}  // namespace gg::nn
