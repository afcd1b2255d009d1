// Layer builders: networks in a few lines, on the graph API.
//
//   gg::Value x = g.input("X", {784, gg::dyn});                       // examples as columns
//   gg::Value z = gg::nn::build(gg::nn::parse("dense256,relu,dense128,relu,dense10"), x);
//
//   gg::Value x = g.input("X", {gg::dyn, 1, 28, 28});                 // images, NCHW
//   gg::Value z = gg::nn::build(gg::nn::parse("conv32k3p1,relu,pool2,conv64k3p1,relu,pool2,"
//                                             "flatten,dense128,relu,dropout0.25,dense10"), x,
//                               gg::nn::Layout::nchw);
//
// Dense and convolution layers make their weights and biases as parameters named W<k> and b<k>
// (k counts the layers with weights, from 1: the notebook's W1, b1, W2, b2), so checkpoints of
// the same spec line up by name. Weights are He-normal by fan-in, biases start at zero.
#pragma once

#include <gradgraph/graph.hpp>
#include <gradgraph/ops.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace gg::nn {

// Where the examples are: columns ({features, batch}, the notebook's X), rows ({batch,
// features}), or images ({batch, channels, height, width}: NCHW, for convolutional networks).
enum class Layout : std::uint8_t { columns, rows, nchw };
const char* layout_name(Layout l);
Layout parse_layout(std::string_view name);  // "columns" | "rows" | "nchw"; throws std::invalid_argument

enum class Activation : std::uint8_t { none, relu, tanh, sigmoid };
const char* activation_name(Activation a);
Activation parse_activation(std::string_view name);  // "relu" | "tanh" | "sigmoid" | "none"
Value activate(Value x, Activation a);

struct DenseOptions {
  Layout layout = Layout::columns;  // columns, or rows (also after a flatten of NCHW images)
  Activation activation = Activation::none;
  Init init = he_normal();  // weights (fan-in from their shape); biases start at zero
  std::string weight_name = {}, bias_name = {};  // default W<k>, b<k>
};
// columns: act(W x + b), W {units, in}, b {units, 1};  rows: act(x W + b), W {in, units}, b {units}.
Value dense(Value x, std::int64_t units, const DenseOptions& o = {});

struct Conv2dOptions {
  int kernel = 3, stride = 1, padding = 0, dilation = 1;
  Activation activation = Activation::none;
  Init init = he_normal();  // fan-in C KH KW from the weights' shape {OC, C, KH, KW}
  std::string weight_name = {}, bias_name = {};  // default W<k>, b<k>
};
// act(conv2d(x, W, b)) for NCHW x, W {channels, C, kernel, kernel}, b {channels}.
Value conv2d(Value x, std::int64_t channels, const Conv2dOptions& o = {});

struct BatchNormOptions {
  Layout layout = Layout::nchw;  // the channel axis: 1 for nchw and rows, 0 for columns
  double momentum = 0.1, eps = 1e-5;
  std::string name = {};  // default bn<k>: parameters bn<k>/gamma (ones), bn<k>/beta (zeros), states
                     // bn<k>/running_mean (zeros), bn<k>/running_var (ones)
};
// gg::batch_norm over every axis but the channels, with its parameters and running statistics:
// batch statistics in training programs, running ones in evaluation programs.
Value batch_norm(Value x, const BatchNormOptions& o = {});

// A network as text: comma-separated layers, applied in order.
//   denseN            a dense layer of N units
//   convNkKpPsS       a convolution to N channels, kernel K (default 3), padding P (0), stride S (1)
//   poolK, poolKsS    max pooling over KxK windows, stride S (default K)
//   avgpoolK          average pooling, the same way
//   gap               global average pooling: {N, C, H, W} -> {N, C}
//   flatten           {N, C, H, W} -> {N, C H W}
//   dropoutP          dropout with probability P (0 <= P < 1), the identity in evaluation
//   bn                batch normalisation (per channel for images, per feature for dense layers)
//   relu, tanh, sigmoid
// The last layer's outputs are the logits.
struct Layer {
  enum class Kind : std::uint8_t { dense, activation, conv, max_pool, avg_pool, global_avg_pool, flatten, dropout, batch_norm };
  Kind kind = Kind::dense;
  std::int64_t units = 0;  // dense units, conv channels
  int kernel = 0, stride = 0, padding = 0;
  double p = 0;            // dropout
  Activation activation = Activation::none;
  std::string text() const;
};
struct Spec {
  std::vector<Layer> layers;
  std::string text() const;  // the canonical text, which parse reads back
  std::int64_t outputs() const;  // units of the last dense layer
  bool convolutional() const;    // has a layer that takes images (conv, pooling, flatten)
};
// Throws std::invalid_argument naming the bad layer and what is accepted.
Spec parse(std::string_view text);
// The spec of an MLP: hidden layers of the given widths, each followed by the activation, then
// a dense layer of `classes` logits: mlp({64}, relu, 10) is "dense64,relu,dense10".
Spec mlp(const std::vector<std::int64_t>& hidden, Activation activation, std::int64_t classes);
// The reference CNN: conv32k3p1,relu,pool2,conv64k3p1,relu,pool2,flatten,dense128,relu,dropout0.25,dense10.
Spec reference_cnn(std::int64_t classes = 10);

// Applies the spec to x; returns the logits (classes along axis 0 for columns, 1 otherwise).
// Shapes that do not fit (a kernel larger than the map, a dense layer on images without a
// flatten) throw GraphError naming the layer and the shapes.
Value build(const Spec& spec, Value x, Layout layout = Layout::columns);

}  // namespace gg::nn
