// Internal: an ONNX model as the ops write themselves into it (gg::onnx::export_model,
// lib/io/onnx.cpp).
//
// An op with an ONNX equivalent says so in its family file, next to its kernels: its OpDef's
// `onnx` function gets an OnnxWriter for one node, asks it for the ONNX tensors of the node's
// operands, adds ONNX nodes, and names the tensors that hold the node's outputs. The exporter
// walks the inference subgraph in id order and knows no op by name; an op without the function
// is refused with one error naming the op and the node.
//
// Orientation. ONNX runtimes (OpenCV's DNN module above all) expect the batch first: OpenCV
// refuses a MatMul whose first operand is a constant, and reads a per-row bias of a {64, N}
// tensor as something else. A graph in the columns layout (the notebook's X {784, N} and
// Z1 = W1 X) is full of both. So the writer may hold a rank-2 value *swapped*: its ONNX tensor
// is the value with its two axes exchanged. A product W X is written as the ONNX MatMul
// X^T W^T = (W X)^T and its result held swapped; elementwise ops, softmax and batch norm follow
// their operand's orientation; a Transpose is added only where an op needs the other
// orientation of a computed tensor (constants are stored transposed instead). The notebook's MLP
// becomes Transpose(X), the nodes of a batch-first MLP, and one Transpose back to {10, N}.
#pragma once

#include "op.hpp"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace gg::detail {

// Opset 11: the one OpenCV 4.6's importer was written against (ReduceSum takes its axes as an
// attribute, Dropout is not needed). Softmax is always written over the last axis, where opset
// 11's "flatten to 2-d at axis" and opset 13's "one axis" agree. IR version 6 came with opset 11.
inline constexpr std::int64_t kOnnxOpset = 11;
inline constexpr std::int64_t kOnnxIrVersion = 6;

// ---- the model, as plain data ------------------------------------------------------------------

// TensorProto.DataType of a dtype: FLOAT 1, UINT8 2, INT64 7, DOUBLE 11.
int onnx_elem_type(DType t);

// One attribute of a node: an int, a float, a string or a list of ints (AttributeProto.type 2, 1,
// 3, 7).
struct OnnxAttr {
  enum class Kind : std::uint8_t { f = 1, i = 2, s = 3, ints = 7 };
  std::string name;
  Kind kind = Kind::i;
  float f = 0;
  std::int64_t i = 0;
  std::string s;
  std::vector<std::int64_t> ints;
  static OnnxAttr integer(std::string name, std::int64_t v);
  static OnnxAttr real(std::string name, float v);
  static OnnxAttr list(std::string name, std::vector<std::int64_t> v);
};

struct OnnxNode {
  std::string op_type, name;
  std::vector<std::string> inputs, outputs;
  std::vector<OnnxAttr> attrs;
};

// An initializer: dims and the elements' bytes, little-endian, row-major (TensorProto.raw_data).
struct OnnxTensor {
  std::string name;
  int elem_type = 1;
  std::vector<std::int64_t> dims;
  std::string raw;
};

// A graph input or output; a dim of gg::dyn is written as the model's symbolic dim_param.
struct OnnxValueInfo {
  std::string name;
  int elem_type = 1;
  std::vector<std::int64_t> dims;
};

struct OnnxModel {
  std::string producer_name = "gradgraph", producer_version, graph_name = "gradgraph", doc;
  std::vector<std::pair<std::string, std::string>> metadata;  // ModelProto.metadata_props
  std::string dim_param = "N";                                // the name of every gg::dyn dimension
  std::vector<OnnxNode> nodes;                                // in a topological order
  std::vector<OnnxTensor> initializers;
  std::vector<OnnxValueInfo> inputs, outputs;
};

// The ModelProto's bytes (field numbers of onnx.proto; lib/io/onnx.cpp).
std::string encode(const OnnxModel& m);

// Helpers for constants: a copy of a tensor with another shape of as many elements; a rank-0
// tensor of dtype t (a factor for Mul); a rank-2 tensor transposed (contiguous copies).
Tensor reshaped_copy(const Tensor& t, const Shape& s);
Tensor scalar_tensor(double v, DType t);
Tensor transposed_copy(const Tensor& t);

// ---- what an op's `onnx` function sees -----------------------------------------------------------

struct OnnxExport;  // the export under way (lib/io/onnx.cpp)

class OnnxWriter {
 public:
  OnnxWriter(OnnxExport& x, int id) : x_(x), id_(id) {}

  const Graph& graph() const;
  const Node& node() const;
  Shape in_shape(int i) const;
  // Whether output k is read by the exported graph (an op refuses an output ONNX cannot give).
  bool needed(int k) const;

  // Operand i as an ONNX tensor name, in the graph's orientation or swapped (rank 2: the two
  // axes exchanged). The other orientation of a computed tensor costs a Transpose node.
  std::string in(int i, bool swapped = false);
  // Operand i has a computed tensor only in the swapped orientation: an op that can follow it
  // (elementwise, softmax) writes its output swapped too and saves the Transpose.
  bool held_swapped(int i) const;
  // Operand i is a model constant (a parameter, state, constant or fill, possibly reshaped or
  // transposed): its value, in the graph's orientation.
  bool is_constant(int i) const;
  const Tensor& constant(int i) const;

  // The name of the tensor the op must write output k to, in the orientation asked for.
  std::string out(int k = 0, bool swapped = false);
  // Output k is operand i itself (dropout in inference), or operand i transposed (rank 2), or a
  // model constant: no node.
  void same_as(int k, int i);
  void swapped_of(int k, int i);
  void constant_out(int k, const Tensor& value);

  // Adds a node (named after the graph node).
  void add(const std::string& op_type, std::vector<std::string> inputs, std::vector<std::string> outputs,
           std::vector<OnnxAttr> attrs = {});
  // A fresh name for a tensor between two of the op's nodes.
  std::string temp(const std::string& hint);
  // An initializer holding `value` (Reshape's shape, a scalar factor), under a fresh name.
  std::string initializer(const Tensor& value, const std::string& hint);

  // Leaves: the node is a graph input; the node's value in the program exported from.
  void graph_input();
  TensorView stored() const;

  // Throws the export's error: "onnx export: op 'OP' (node 'NAME') <why>".
  [[noreturn]] void refuse(const std::string& why) const;

 private:
  OnnxExport& x_;
  int id_;
};

}  // namespace gg::detail
