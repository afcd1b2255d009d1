// ONNX export (lib/gradgraph/onnx.hpp): the inference subgraph of some outputs, written by its
// ops (each op's `onnx` function, in its family file: lib/ops/onnx.hpp says what they see), and
// encoded with the hand-written protobuf writer (lib/io/protobuf.hpp). This file knows no op by
// name (a test checks it): leaves, products and activations all come through their OpDefs.
#include <gradgraph/atomic_file.hpp>
#include <gradgraph/onnx.hpp>

#include "../ops/onnx.hpp"
#include "protobuf.hpp"

#include <array>
#include <map>
#include <set>

namespace gg::detail {

namespace pb = gg::io::protobuf;

int onnx_elem_type(DType t) {
  switch (t) {
    case DType::f32: return 1;
    case DType::u8: return 2;
    case DType::i64: return 7;
    case DType::f64: return 11;
  }
  return 0;
}

OnnxAttr OnnxAttr::integer(std::string name, std::int64_t v) {
  OnnxAttr a;
  a.name = std::move(name), a.kind = Kind::i, a.i = v;
  return a;
}
OnnxAttr OnnxAttr::real(std::string name, float v) {
  OnnxAttr a;
  a.name = std::move(name), a.kind = Kind::f, a.f = v;
  return a;
}
OnnxAttr OnnxAttr::list(std::string name, std::vector<std::int64_t> v) {
  OnnxAttr a;
  a.name = std::move(name), a.kind = Kind::ints, a.ints = std::move(v);
  return a;
}

Tensor reshaped_copy(const Tensor& t, const Shape& s) {
  const Tensor c = t.view().is_contiguous() ? t : Tensor::copy_of(t.view());
  if (s.numel() != c.numel()) throw std::logic_error("reshaped_copy: " + to_string(c.shape()) + " to " + to_string(s));
  return Tensor::copy_of(TensorView(c.data(), c.dtype(), s));
}

Tensor scalar_tensor(double v, DType t) { return Tensor::copy_of(Tensor::from<double>(Shape{}, std::vector<double>{v}), t); }

Tensor transposed_copy(const Tensor& t) { return Tensor::copy_of(t.view().transposed()); }

// ---- encoding: field numbers from onnx.proto (ONNX 1.12) ------------------------------------------

namespace {

std::string encode_attr(const OnnxAttr& a) {
  std::string m;
  pb::put_bytes(m, 1, a.name);  // AttributeProto.name
  switch (a.kind) {
    case OnnxAttr::Kind::f: pb::put_float(m, 2, a.f); break;  // f
    case OnnxAttr::Kind::i: pb::put_int(m, 3, a.i); break;    // i
    case OnnxAttr::Kind::s: pb::put_bytes(m, 4, a.s); break;  // s
    case OnnxAttr::Kind::ints: pb::put_ints(m, 8, a.ints); break;  // ints
  }
  pb::put_int(m, 20, static_cast<std::int64_t>(a.kind));  // type
  return m;
}

std::string encode_node(const OnnxNode& n) {
  std::string m;
  for (const std::string& s : n.inputs) pb::put_bytes(m, 1, s);   // NodeProto.input
  for (const std::string& s : n.outputs) pb::put_bytes(m, 2, s);  // output
  if (!n.name.empty()) pb::put_bytes(m, 3, n.name);               // name
  pb::put_bytes(m, 4, n.op_type);                                 // op_type
  for (const OnnxAttr& a : n.attrs) pb::put_bytes(m, 5, encode_attr(a));  // attribute
  return m;
}

std::string encode_tensor(const OnnxTensor& t) {
  std::string m;
  pb::put_ints(m, 1, t.dims);         // TensorProto.dims
  pb::put_int(m, 2, t.elem_type);     // data_type
  pb::put_bytes(m, 8, t.name);        // name
  pb::put_bytes(m, 9, t.raw);         // raw_data
  return m;
}

std::string encode_value_info(const OnnxValueInfo& v, const std::string& dim_param) {
  std::string shape;
  for (std::int64_t d : v.dims) {
    std::string dim;
    if (d == dyn)
      pb::put_bytes(dim, 2, dim_param);  // TensorShapeProto.Dimension.dim_param
    else
      pb::put_int(dim, 1, d);            // dim_value
    pb::put_bytes(shape, 1, dim);        // TensorShapeProto.dim
  }
  std::string tensor;
  pb::put_int(tensor, 1, v.elem_type);   // TypeProto.Tensor.elem_type
  pb::put_bytes(tensor, 2, shape);       // shape (empty: a scalar)
  std::string type;
  pb::put_bytes(type, 1, tensor);        // TypeProto.tensor_type
  std::string m;
  pb::put_bytes(m, 1, v.name);           // ValueInfoProto.name
  pb::put_bytes(m, 2, type);             // type
  return m;
}

std::string encode_graph(const OnnxModel& model) {
  std::string m;
  for (const OnnxNode& n : model.nodes) pb::put_bytes(m, 1, encode_node(n));                    // GraphProto.node
  pb::put_bytes(m, 2, model.graph_name);                                                           // name
  for (const OnnxTensor& t : model.initializers) pb::put_bytes(m, 5, encode_tensor(t));          // initializer
  for (const OnnxValueInfo& v : model.inputs) pb::put_bytes(m, 11, encode_value_info(v, model.dim_param));   // input
  for (const OnnxValueInfo& v : model.outputs) pb::put_bytes(m, 12, encode_value_info(v, model.dim_param));  // output
  return m;
}

}  // namespace

std::string encode(const OnnxModel& model) {
  std::string m;
  pb::put_int(m, 1, kOnnxIrVersion);                                            // ModelProto.ir_version
  pb::put_bytes(m, 2, model.producer_name);                                     // producer_name
  if (!model.producer_version.empty()) pb::put_bytes(m, 3, model.producer_version);  // producer_version
  if (!model.doc.empty()) pb::put_bytes(m, 6, model.doc);                       // doc_string
  pb::put_bytes(m, 7, encode_graph(model));                                     // graph
  std::string opset;  // the default domain ("", omitted): ai.onnx
  pb::put_int(opset, 2, kOnnxOpset);                                            // OperatorSetIdProto.version
  pb::put_bytes(m, 8, opset);                                                   // opset_import
  for (const auto& [key, value] : model.metadata) {
    std::string e;
    pb::put_bytes(e, 1, key);    // StringStringEntryProto.key
    pb::put_bytes(e, 2, value);  // value
    pb::put_bytes(m, 14, e);     // metadata_props
  }
  return m;
}

// ---- the export ---------------------------------------------------------------------------------

// What the model holds for one graph value: its tensor in either orientation (a name, empty
// until made), or, for a model constant, its value (initializers are made when a name is asked
// for, so a parameter read only through a reshape or a transpose is stored once, as read).
struct Held {
  bool written = false;
  std::string plain, swapped;
  bool constant = false;
  Tensor value;
};

struct OnnxExport {
  Graph& g;
  const Program& values;
  OnnxModel model;
  std::vector<std::array<Held, kMaxOutputs>> held;
  std::vector<std::array<bool, kMaxOutputs>> needed;
  std::set<std::string> names;
  std::map<std::pair<int, int>, std::string> reserved;  // graph outputs' names

  std::string unique(const std::string& want) {
    std::string n = want;
    for (int k = 2; names.count(n); ++k) n = want + "_" + std::to_string(k);
    names.insert(n);
    return n;
  }

  // A fresh name for a graph value's tensor: a graph output's own name, else the node's.
  std::string value_name(Operand o, bool swapped) {
    const auto it = reserved.find({o.node, o.port});
    if (!swapped && it != reserved.end()) return it->second;
    std::string base = g.node(o.node).name;
    if (o.port > 0) base += ":" + std::to_string(o.port);
    return unique(swapped ? base + "_T" : base);
  }

  void add_initializer(const std::string& name, const Tensor& t) {
    OnnxTensor it;
    it.name = name;
    it.elem_type = onnx_elem_type(t.dtype());
    for (int d = 0; d < t.shape().rank; ++d) it.dims.push_back(t.shape()[d]);
    const Tensor c = t.view().is_contiguous() ? t : Tensor::copy_of(t.view());
    it.raw.assign(static_cast<const char*>(c.data()), byte_size(c.numel(), c.dtype()));
    model.initializers.push_back(std::move(it));
  }

  // The held value of an operand; a leaf is written when first read (so that leaves nobody
  // reads, such as dropout's step counter, stay out of the model).
  Held& operand(Operand o) {
    Held& h = held[static_cast<std::size_t>(o.node)][static_cast<std::size_t>(o.port)];
    if (h.written) return h;
    const Node& n = g.node(o.node);
    OnnxWriter w(*this, o.node);
    if (!n.op->is_leaf()) throw std::logic_error("onnx export: '" + n.name + "' is read before it is written");
    if (!n.op->onnx) w.refuse("has no ONNX equivalent");
    n.op->onnx(w);
    if (!h.written) throw std::logic_error("onnx export: the leaf '" + n.name + "' wrote no value");
    return h;
  }

  // The tensor of a value in one orientation: made from the other one by a Transpose, or stored
  // transposed for a constant. Orientation is a rank-2 notion: other ranks have only `plain`.
  std::string tensor(Operand o, bool swapped) {
    Held& h = operand(o);
    const Shape s = g.node(o.node).out(o.port).shape;
    if (s.rank != 2) swapped = false;
    std::string& want = swapped ? h.swapped : h.plain;
    if (!want.empty()) return want;
    if (h.constant) {
      const std::string name = value_name(o, swapped);
      add_initializer(name, swapped ? transposed_copy(h.value) : h.value);
      return want = name;
    }
    const std::string& have = swapped ? h.plain : h.swapped;
    if (have.empty()) throw std::logic_error("onnx export: '" + g.node(o.node).name + "' has no tensor");
    const std::string name = value_name(o, swapped);
    model.nodes.push_back(OnnxNode{"Transpose", unique(name + "/transpose"), {have}, {name},
                                   {OnnxAttr::list("perm", {1, 0})}});
    return want = name;
  }
};

// ---- the writer an op sees --------------------------------------------------------------------------

const Graph& OnnxWriter::graph() const { return x_.g; }
const Node& OnnxWriter::node() const { return x_.g.node(id_); }

Shape OnnxWriter::in_shape(int i) const {
  const Operand o = node().inputs.at(static_cast<std::size_t>(i));
  return x_.g.node(o.node).out(o.port).shape;
}

bool OnnxWriter::needed(int k) const { return x_.needed[static_cast<std::size_t>(id_)][static_cast<std::size_t>(k)]; }

std::string OnnxWriter::in(int i, bool swapped) { return x_.tensor(node().inputs.at(static_cast<std::size_t>(i)), swapped); }

bool OnnxWriter::held_swapped(int i) const {
  const Held& h = x_.operand(node().inputs.at(static_cast<std::size_t>(i)));
  return !h.constant && h.plain.empty() && !h.swapped.empty();
}

bool OnnxWriter::is_constant(int i) const { return x_.operand(node().inputs.at(static_cast<std::size_t>(i))).constant; }

const Tensor& OnnxWriter::constant(int i) const {
  const Held& h = x_.operand(node().inputs.at(static_cast<std::size_t>(i)));
  if (!h.constant) throw std::logic_error("onnx export: operand " + std::to_string(i) + " of '" + node().name + "' is not a constant");
  return h.value;
}

std::string OnnxWriter::out(int k, bool swapped) {
  if (node().out(k).shape.rank != 2) swapped = false;
  Held& h = x_.held[static_cast<std::size_t>(id_)][static_cast<std::size_t>(k)];
  h.written = true;
  std::string& name = swapped ? h.swapped : h.plain;
  if (name.empty()) name = x_.value_name(Operand{id_, k}, swapped);
  return name;
}

void OnnxWriter::same_as(int k, int i) {
  x_.held[static_cast<std::size_t>(id_)][static_cast<std::size_t>(k)] = x_.operand(node().inputs.at(static_cast<std::size_t>(i)));
}

void OnnxWriter::swapped_of(int k, int i) {
  const Held src = x_.operand(node().inputs.at(static_cast<std::size_t>(i)));
  if (src.constant) return constant_out(k, transposed_copy(src.value));
  Held& h = x_.held[static_cast<std::size_t>(id_)][static_cast<std::size_t>(k)];
  h.written = true;
  h.plain = src.swapped;
  h.swapped = src.plain;
}

void OnnxWriter::constant_out(int k, const Tensor& value) {
  Held& h = x_.held[static_cast<std::size_t>(id_)][static_cast<std::size_t>(k)];
  h = Held{};
  h.written = true;
  h.constant = true;
  h.value = value;
}

void OnnxWriter::add(const std::string& op_type, std::vector<std::string> inputs, std::vector<std::string> outputs,
                     std::vector<OnnxAttr> attrs) {
  x_.model.nodes.push_back(OnnxNode{op_type, x_.unique(node().name.empty() ? op_type : node().name), std::move(inputs),
                                    std::move(outputs), std::move(attrs)});
}

std::string OnnxWriter::temp(const std::string& hint) { return x_.unique(node().name + "/" + hint); }

std::string OnnxWriter::initializer(const Tensor& value, const std::string& hint) {
  const std::string name = temp(hint);
  x_.add_initializer(name, value);
  return name;
}

void OnnxWriter::graph_input() {
  const Node& n = node();
  Held& h = x_.held[static_cast<std::size_t>(id_)][0];
  h.written = true;
  h.plain = n.name;  // reserved before any op was written: inputs keep their names
  OnnxValueInfo v{n.name, onnx_elem_type(n.out().dtype), {}};
  for (int d = 0; d < n.out().shape.rank; ++d) v.dims.push_back(n.out().shape[d]);
  x_.model.inputs.push_back(std::move(v));
}

TensorView OnnxWriter::stored() const {
  try {
    return x_.values.param(Value{&x_.g, id_, 0});
  } catch (const std::invalid_argument&) {
    refuse("is not in the program exported from (was it added after the program was compiled?)");
  }
}

void OnnxWriter::refuse(const std::string& why) const {
  throw onnx::ExportError("onnx export: op '" + std::string(node().op->name) + "' (node '" + node().name + "') " + why);
}

}  // namespace gg::detail

namespace gg::onnx {

namespace {

detail::OnnxModel build(const Program& values, const std::vector<Value>& outputs, const ExportOptions& o) {
  if (outputs.empty()) throw ExportError("onnx export: no outputs to export");
  Graph* g = outputs[0].graph;
  for (const Value& v : outputs)
    if (!v.valid() || v.graph != g) throw ExportError("onnx export: the outputs must be values of one graph");
  if (!o.output_names.empty() && o.output_names.size() != outputs.size())
    throw ExportError("onnx export: " + std::to_string(o.output_names.size()) + " output names for " +
                      std::to_string(outputs.size()) + " outputs");
  detail::OnnxExport x{*g, values, {}, {}, {}, {}, {}};
  x.model.dim_param = o.batch_dim;
  x.model.graph_name = o.graph_name;
  x.model.doc = o.doc;
  x.model.metadata = o.metadata;
  const auto n = static_cast<std::size_t>(g->size());
  x.held.resize(n);
  x.needed.assign(n, {});

  // What the outputs read: ids are topological (operands come first), so one pass downwards.
  std::vector<bool> node_needed(n, false);
  for (const Value& v : outputs) {
    node_needed[static_cast<std::size_t>(v.id)] = true;
    x.needed[static_cast<std::size_t>(v.id)][static_cast<std::size_t>(v.port)] = true;
  }
  for (std::size_t id = n; id-- > 0;) {
    if (!node_needed[id]) continue;
    for (const Operand& op : g->node(static_cast<int>(id)).inputs) {
      node_needed[static_cast<std::size_t>(op.node)] = true;
      x.needed[static_cast<std::size_t>(op.node)][static_cast<std::size_t>(op.port)] = true;
    }
  }

  // Graph inputs keep their names; outputs take theirs next (two outputs of one name, or an
  // output named like an input, would make an invalid model).
  for (std::size_t id = 0; id < n; ++id)
    if (node_needed[id] && g->node(static_cast<int>(id)).op->storage == detail::Storage::external)
      x.names.insert(g->node(static_cast<int>(id)).name);
  std::vector<std::string> out_names;
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const std::string name = o.output_names.empty() ? outputs[i].name() : o.output_names[i];
    if (name.empty()) throw ExportError("onnx export: output " + std::to_string(i) + " has an empty name");
    if (x.names.count(name)) throw ExportError("onnx export: the output name '" + name + "' is taken by an input or another output");
    x.names.insert(name);
    x.reserved.emplace(std::make_pair(outputs[i].id, outputs[i].port), name);
    out_names.push_back(name);
  }

  for (std::size_t id = 0; id < n; ++id) {
    const Node& node = g->node(static_cast<int>(id));
    if (!node_needed[id] || node.op->is_leaf()) continue;
    detail::OnnxWriter w(x, static_cast<int>(id));
    if (!node.op->onnx) w.refuse("has no ONNX equivalent");
    node.op->onnx(w);
    for (int k = 0; k < node.num_outputs; ++k)
      if (x.needed[id][static_cast<std::size_t>(k)] && !x.held[id][static_cast<std::size_t>(k)].written)
        throw std::logic_error("onnx export: op '" + std::string(node.op->name) + "' wrote no output " + std::to_string(k));
  }

  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const Value& v = outputs[i];
    const std::string have = x.tensor(v.operand(), false);
    if (have != out_names[i])  // an alias (dropout), a constant or an input: a node must give the output its name
      x.model.nodes.push_back(detail::OnnxNode{"Identity", x.unique(out_names[i] + "/identity"), {have}, {out_names[i]}, {}});
    detail::OnnxValueInfo info{out_names[i], detail::onnx_elem_type(v.dtype()), {}};
    const Shape s = v.shape();
    for (int d = 0; d < s.rank; ++d) info.dims.push_back(s[d]);
    x.model.outputs.push_back(std::move(info));
  }
  return std::move(x.model);
}

}  // namespace

std::string to_bytes(const Program& values, const std::vector<Value>& outputs, const ExportOptions& o) {
  return detail::encode(build(values, outputs, o));
}

void export_model(const Program& values, const std::vector<Value>& outputs, const std::string& path, const ExportOptions& o) {
  const std::string bytes = to_bytes(values, outputs, o);
  io::write_file_atomic(path, [&](std::ostream& os) { os.write(bytes.data(), static_cast<std::streamsize>(bytes.size())); });
}

}  // namespace gg::onnx
