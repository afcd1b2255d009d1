// ONNX export: a trained network's inference graph as an ONNX model, for other runtimes
// (OpenCV's DNN module, ONNX Runtime, ...).
//
//   gg::Program& p = trainer.eval_program();            // any program of the graph: its weights
//   gg::onnx::export_model(p, {logits, probabilities}, "mnist.onnx",
//                          {.output_names = {"logits", "probabilities"}});
//
// What is exported is the subgraph the outputs depend on, from the graph inputs it reads, in
// inference form: dropout is the identity and batch normalisation uses its running statistics,
// whatever the program's mode. Parameters and states are stored as initializers with their
// current values in the program. Inputs and outputs keep the graph's names, shapes and layout
// (a columns-layout network takes X {784, N}); gg::dyn becomes the symbolic dimension "N".
// Opset 11; float32 graphs give float32 models (float64 ones double, which fewer runtimes run).
// docs/interop.md lists the ops and their ONNX equivalents and how the export was verified.
#pragma once

#include <gradgraph/program.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace gg::onnx {

inline constexpr std::int64_t kOpset = 11;

struct ExportOptions {
  std::vector<std::string> output_names = {};  // one per output; empty: each output's node name
  std::string batch_dim = "N";                 // the symbolic name of every gg::dyn dimension
  std::string graph_name = "gradgraph";
  std::string doc = {};                        // ModelProto.doc_string: what the model is, how to feed it
  std::vector<std::pair<std::string, std::string>> metadata = {};  // ModelProto.metadata_props
};

// What cannot be exported: an op without an ONNX equivalent ("onnx export: op 'argmax' (node
// 'predictions') has no ONNX equivalent"), a part of an op ONNX cannot give (max_pool2d's
// indices), outputs of another graph or a program of another graph.
struct ExportError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The model's bytes (a serialized ModelProto). `values` is any program compiled from the
// outputs' graph: the parameters and states are read from it.
std::string to_bytes(const Program& values, const std::vector<Value>& outputs, const ExportOptions& o = {});
// The same, written atomically to `path` (gg::io::write_file_atomic: a failure leaves an existing
// file as it was). Everything is checked before the file is touched.
void export_model(const Program& values, const std::vector<Value>& outputs, const std::string& path,
                  const ExportOptions& o = {});

}  // namespace gg::onnx
