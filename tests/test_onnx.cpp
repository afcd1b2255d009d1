// ONNX export: the protobuf writer's bytes, and what gg::onnx::export_model puts in a model, read
// back with a small protobuf reader. That another runtime computes what gradgraph computes is
// tests/test_onnx_opencv.cpp's job (OpenCV's DNN module).
#include "support.hpp"

#include <gradgraph/onnx.hpp>

#include "io/protobuf.hpp"
#include "ops/onnx.hpp"

#include <catch2/catch.hpp>

#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace pb = gg::io::protobuf;
using Catch::Matchers::Contains;
using gg::test::message_of;

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int x : b) s.push_back(static_cast<char>(x));
  return s;
}

std::string varint(std::uint64_t v) {
  std::string s;
  pb::put_varint(s, v);
  return s;
}

// ---- a protobuf reader, enough to read back what the exporter writes ---------------------------

struct Field {
  int number = 0, wire = 0;
  std::uint64_t value = 0;  // varint and fixed32
  std::string bytes;        // length-delimited
};

std::uint64_t read_varint(std::string_view m, std::size_t& at) {
  std::uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    REQUIRE(at < m.size());
    const auto b = static_cast<std::uint8_t>(m[at++]);
    v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
}

std::vector<Field> fields(std::string_view m) {
  std::vector<Field> out;
  for (std::size_t at = 0; at < m.size();) {
    const std::uint64_t key = read_varint(m, at);
    Field f;
    f.number = static_cast<int>(key >> 3), f.wire = static_cast<int>(key & 7);
    if (f.wire == 0) {
      f.value = read_varint(m, at);
    } else if (f.wire == 5) {
      REQUIRE(at + 4 <= m.size());
      std::uint32_t v;
      std::memcpy(&v, m.data() + at, 4);
      f.value = v, at += 4;
    } else {
      REQUIRE(f.wire == 2);
      const std::uint64_t n = read_varint(m, at);
      REQUIRE(at + n <= m.size());
      f.bytes = std::string(m.substr(at, n)), at += n;
    }
    out.push_back(f);
  }
  return out;
}

std::vector<std::string> all(const std::string& m, int number) {
  std::vector<std::string> out;
  for (const Field& f : fields(m))
    if (f.number == number) out.push_back(f.bytes);
  return out;
}
std::string one(const std::string& m, int number) {
  const std::vector<std::string> v = all(m, number);
  REQUIRE(v.size() == 1);
  return v[0];
}
std::vector<std::int64_t> ints(const std::string& m, int number) {
  std::vector<std::int64_t> out;
  for (const Field& f : fields(m))
    if (f.number == number) out.push_back(static_cast<std::int64_t>(f.value));
  return out;
}

struct Node {
  std::string op_type, name;
  std::vector<std::string> inputs, outputs;
  std::map<std::string, std::string> attrs;  // name -> encoded AttributeProto
  std::vector<std::int64_t> attr_ints(const std::string& a) const { return ints(attrs.at(a), 8); }
  std::int64_t attr_int(const std::string& a) const { return ints(attrs.at(a), 3).at(0); }
};
struct Initializer {
  std::vector<std::int64_t> dims;
  int type = 0;
  std::string raw;
};
struct ValueInfo {
  int type = 0;
  std::vector<std::string> dims;  // "784", "N"
};
struct Model {
  std::int64_t ir_version = 0, opset = 0;
  std::string opset_domain = "absent", doc;
  std::vector<Node> nodes;
  std::map<std::string, Initializer> initializers;
  std::vector<std::pair<std::string, ValueInfo>> inputs, outputs;
  std::vector<std::string> op_types() const {
    std::vector<std::string> t;
    for (const Node& n : nodes) t.push_back(n.op_type);
    return t;
  }
  const Node& producer_of(const std::string& tensor) const {
    for (const Node& n : nodes)
      for (const std::string& o : n.outputs)
        if (o == tensor) return n;
    FAIL("no node writes " << tensor);
    return nodes.front();
  }
};

ValueInfo value_info(const std::string& m) {
  const std::string tensor = one(one(m, 2), 1);
  ValueInfo v;
  v.type = static_cast<int>(ints(tensor, 1).at(0));
  for (const std::string& dim : all(one(tensor, 2), 1)) {
    const std::vector<Field> f = fields(dim);
    REQUIRE(f.size() == 1);
    v.dims.push_back(f[0].number == 1 ? std::to_string(f[0].value) : f[0].bytes);
  }
  return v;
}

Model read_model(const std::string& bytes) {
  Model m;
  m.ir_version = ints(bytes, 1).at(0);
  const std::string opset = one(bytes, 8);
  m.opset = ints(opset, 2).at(0);
  if (!all(opset, 1).empty()) m.opset_domain = one(opset, 1);
  if (!all(bytes, 6).empty()) m.doc = one(bytes, 6);
  const std::string graph = one(bytes, 7);
  for (const std::string& n : all(graph, 1)) {
    Node node;
    node.inputs = all(n, 1), node.outputs = all(n, 2), node.name = one(n, 3), node.op_type = one(n, 4);
    for (const std::string& a : all(n, 5)) node.attrs[one(a, 1)] = a;
    m.nodes.push_back(node);
  }
  for (const std::string& t : all(graph, 5))
    m.initializers[one(t, 8)] = Initializer{ints(t, 1), static_cast<int>(ints(t, 2).at(0)), one(t, 9)};
  for (const std::string& v : all(graph, 11)) m.inputs.emplace_back(one(v, 1), value_info(v));
  for (const std::string& v : all(graph, 12)) m.outputs.emplace_back(one(v, 1), value_info(v));
  return m;
}

std::vector<float> floats_of(const Initializer& t) {
  REQUIRE(t.type == 1);
  std::vector<float> v(t.raw.size() / 4);
  std::memcpy(v.data(), t.raw.data(), t.raw.size());
  return v;
}

// The notebook's network, forward only, and an evaluation program holding its weights.
struct Notebook {
  gg::Graph g{gg::f32};
  gg::Value X = g.input("X", {784, gg::dyn});
  gg::Value W1 = g.param("W1", {64, 784}, gg::he_normal()), b1 = g.param("b1", {64, 1}, gg::uniform(-1, 1));
  gg::Value W2 = g.param("W2", {10, 64}, gg::he_normal()), b2 = g.param("b2", {10, 1}, gg::uniform(-1, 1));
  gg::Value Z2 = gg::matmul(W2, gg::relu(gg::matmul(W1, X) + b1)) + b2;
  gg::Value P = gg::softmax(Z2, 0);
  gg::Program p{g, {Z2, P}, {.training = false}};
};

}  // namespace

// ---- the wire format --------------------------------------------------------------------------------

TEST_CASE("a varint holds 7 bits per byte, least significant group first, the high bit on all but the last", "[onnx][protobuf]") {
  CHECK(varint(0) == bytes({0x00}));
  CHECK(varint(1) == bytes({0x01}));
  CHECK(varint(127) == bytes({0x7f}));
  CHECK(varint(128) == bytes({0x80, 0x01}));
  CHECK(varint(300) == bytes({0xac, 0x02}));
  CHECK(varint(16383) == bytes({0xff, 0x7f}));
  CHECK(varint(16384) == bytes({0x80, 0x80, 0x01}));
  CHECK(varint((1ull << 32) - 1) == bytes({0xff, 0xff, 0xff, 0xff, 0x0f}));
  CHECK(varint(~0ull) == bytes({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}));
}

TEST_CASE("a negative integer field is its 64-bit two's complement: ten bytes", "[onnx][protobuf]") {
  std::string m;
  pb::put_int(m, 1, -1);
  CHECK(m == bytes({0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}));
}

TEST_CASE("a key is the field number shifted by 3 with the wire type; a float is 4 little-endian bytes", "[onnx][protobuf]") {
  std::string m;
  pb::put_int(m, 20, 2);        // AttributeProto.type = INT: key 20 << 3 | 0 = 160, two bytes
  pb::put_float(m, 2, 1.0f);    // key 2 << 3 | 5
  pb::put_bytes(m, 1, "axis");  // key 1 << 3 | 2, then the length
  pb::put_ints(m, 8, std::vector<std::int64_t>{1, 300});  // unpacked: one key per value
  CHECK(m == bytes({0xa0, 0x01, 0x02, 0x15, 0x00, 0x00, 0x80, 0x3f, 0x0a, 0x04, 'a', 'x', 'i', 's', 0x40, 0x01, 0x40, 0xac, 0x02}));
}

TEST_CASE("a one-node ONNX model encodes to the bytes onnx.proto prescribes", "[onnx][protobuf]") {
  gg::detail::OnnxModel m;
  m.graph_name = "g";
  m.nodes.push_back({"Relu", "relu", {"x"}, {"y"}, {}});
  m.inputs.push_back({"x", 1, {gg::dyn}});
  m.outputs.push_back({"y", 1, {gg::dyn}});
  // ValueInfoProto {name, type {tensor_type {elem_type 1, shape {dim {dim_param "N"}}}}}
  auto info = [](char name) { return bytes({0x0a, 0x01, name, 0x12, 0x0b, 0x0a, 0x09, 0x08, 0x01, 0x12, 0x05, 0x0a, 0x03, 0x12, 0x01, 'N'}); };
  const std::string node = bytes({0x0a, 0x01, 'x', 0x12, 0x01, 'y', 0x1a, 0x04, 'r', 'e', 'l', 'u', 0x22, 0x04, 'R', 'e', 'l', 'u'});
  const std::string graph = bytes({0x0a, 0x12}) + node + bytes({0x12, 0x01, 'g', 0x5a, 0x10}) + info('x') + bytes({0x62, 0x10}) + info('y');
  REQUIRE(graph.size() == 0x3b);
  const std::string want = bytes({0x08, 0x06, 0x12, 0x09}) + "gradgraph" + bytes({0x3a, 0x3b}) + graph + bytes({0x42, 0x02, 0x10, 0x0b});
  CHECK(gg::detail::encode(m) == want);
}

// ---- what a model holds --------------------------------------------------------------------------------

TEST_CASE("a model declares IR version 6 and opset 11 of the default domain", "[onnx]") {
  Notebook nb;
  const Model m = read_model(gg::onnx::to_bytes(nb.p, {nb.Z2}));
  CHECK(m.ir_version == 6);
  CHECK(m.opset == 11);
  CHECK(m.opset_domain == "absent");
  CHECK(gg::onnx::kOpset == 11);
}

TEST_CASE("the notebook's MLP exports batch first: a Transpose in, products with the weights transposed, a Transpose out",
          "[onnx]") {
  Notebook nb;
  const Model m = read_model(gg::onnx::to_bytes(nb.p, {nb.Z2}, {.output_names = {"logits"}}));
  CHECK(m.op_types() == std::vector<std::string>{"Transpose", "MatMul", "Add", "Relu", "MatMul", "Add", "Transpose"});
  // (W1 X)^T = X^T W1^T: the data first, the weights second, stored {784, 64}.
  const Node& z1 = m.nodes[1];
  CHECK(z1.inputs[0] == m.nodes[0].outputs[0]);
  CHECK(m.initializers.at(z1.inputs[1]).dims == std::vector<std::int64_t>{784, 64});
  // The bias {64, 1} of the {64, N} product is the {64} of the {N, 64} one.
  CHECK(m.initializers.at(m.nodes[2].inputs[1]).dims == std::vector<std::int64_t>{64});
  CHECK(m.nodes.back().outputs[0] == "logits");
  CHECK(m.nodes.back().attr_ints("perm") == std::vector<std::int64_t>{1, 0});
}

TEST_CASE("inputs and outputs keep the graph's names, dtypes and layout, the open dimension as 'N'", "[onnx]") {
  Notebook nb;
  const Model m = read_model(gg::onnx::to_bytes(nb.p, {nb.Z2, nb.P}, {.output_names = {"logits", "probabilities"}}));
  REQUIRE(m.inputs.size() == 1);
  CHECK(m.inputs[0].first == "X");
  CHECK(m.inputs[0].second.type == 1);
  CHECK(m.inputs[0].second.dims == std::vector<std::string>{"784", "N"});
  REQUIRE(m.outputs.size() == 2);
  CHECK(m.outputs[0].first == "logits");
  CHECK(m.outputs[1].first == "probabilities");
  CHECK(m.outputs[1].second.dims == std::vector<std::string>{"10", "N"});
}

TEST_CASE("the open dimension takes the name asked for", "[onnx]") {
  Notebook nb;
  const Model m = read_model(gg::onnx::to_bytes(nb.p, {nb.Z2}, {.batch_dim = "batch"}));
  CHECK(m.inputs[0].second.dims == std::vector<std::string>{"784", "batch"});
}

TEST_CASE("a softmax over the classes of a {classes, N} tensor runs over the last axis of the transposed one", "[onnx]") {
  Notebook nb;
  const Model m = read_model(gg::onnx::to_bytes(nb.p, {nb.P}, {.output_names = {"probabilities"}}));
  const Node& s = m.producer_of(m.producer_of("probabilities").inputs[0]);
  CHECK(s.op_type == "Softmax");
  CHECK(s.attr_int("axis") == 1);
  CHECK(m.producer_of(s.inputs[0]).op_type == "Add");
}

TEST_CASE("parameters are stored with their values in the program exported from", "[onnx]") {
  Notebook nb;
  gg::Tensor w2(gg::f32, {10, 64});
  for (std::int64_t i = 0; i < w2.numel(); ++i) w2.ptr<float>()[i] = static_cast<float>(i);
  nb.p.set_param(nb.W2, w2);
  const Model m = read_model(gg::onnx::to_bytes(nb.p, {nb.Z2}));
  const std::vector<float> stored = floats_of(m.initializers.at("W2_T"));  // W2^T {64, 10}
  REQUIRE(stored.size() == 640);
  CHECK(stored[0] == 0.0f);
  CHECK(stored[1] == 64.0f);   // row 0 of W2^T is column 0 of W2
  CHECK(stored[10] == 1.0f);
}

TEST_CASE("a batch-first dense network exports without a Transpose, the weights as they are", "[onnx]") {
  gg::Graph g(gg::f32);
  gg::Value x = g.input("X", {gg::dyn, 784});
  gg::Value z = gg::nn::build(gg::nn::parse("dense32,tanh,dense10"), x, gg::nn::Layout::rows);
  gg::Program p(g, {z}, {.training = false});
  const Model m = read_model(gg::onnx::to_bytes(p, {z}, {.output_names = {"logits"}}));
  CHECK(m.op_types() == std::vector<std::string>{"MatMul", "Add", "Tanh", "MatMul", "Add"});
  CHECK(m.initializers.at("W1").dims == std::vector<std::int64_t>{784, 32});
  CHECK(m.inputs[0].second.dims == std::vector<std::string>{"N", "784"});
}

TEST_CASE("dropout is the identity: no node, and its step counter stays out of the model", "[onnx]") {
  gg::Graph g(gg::f32);
  gg::Value x = g.input("X", {gg::dyn, 20});
  gg::Value z = gg::nn::build(gg::nn::parse("dense16,relu,dropout0.5,dense4"), x, gg::nn::Layout::rows);
  gg::Program p(g, {z}, {.training = false});
  const Model m = read_model(gg::onnx::to_bytes(p, {z}));
  CHECK(m.op_types() == std::vector<std::string>{"MatMul", "Add", "Relu", "MatMul", "Add"});
  CHECK(m.initializers.count("dropout1/step") == 0);
  CHECK(m.initializers.size() == 4);
}

TEST_CASE("batch norm exports in inference form with the program's running statistics", "[onnx]") {
  gg::Graph g(gg::f32);
  gg::Value x = g.input("X", {gg::dyn, 3, 8, 8});
  gg::Value z = gg::nn::build(gg::nn::parse("conv4k3p1,bn,relu,flatten,dense2"), x, gg::nn::Layout::nchw);
  gg::Program p(g, {z}, {.training = false});
  p.set_param("bn1/running_mean", gg::Tensor::from<float>({4}, {1, 2, 3, 4}));
  const Model m = read_model(gg::onnx::to_bytes(p, {z}));
  CHECK(m.op_types() == std::vector<std::string>{"Conv", "Add", "BatchNormalization", "Relu", "Flatten", "MatMul", "Add"});
  const Node& bn = m.nodes[2];
  CHECK(bn.inputs[3] == "bn1/running_mean");
  CHECK(floats_of(m.initializers.at("bn1/running_mean")) == std::vector<float>{1, 2, 3, 4});
  CHECK(m.nodes[0].attr_ints("pads") == std::vector<std::int64_t>{1, 1, 1, 1});
}

TEST_CASE("batch norm over the features of a {features, N} tensor runs on the transposed one", "[onnx]") {
  gg::Graph g(gg::f32);
  gg::Value x = g.input("X", {20, gg::dyn});
  gg::Value z = gg::nn::build(gg::nn::parse("dense16,bn,relu,dense4"), x, gg::nn::Layout::columns);
  gg::Program p(g, {z}, {.training = false});
  const Model m = read_model(gg::onnx::to_bytes(p, {z}));
  CHECK(m.op_types() == std::vector<std::string>{"Transpose", "MatMul", "Add", "BatchNormalization", "Relu", "MatMul", "Add", "Transpose"});
}

TEST_CASE("an op without an ONNX equivalent is refused with one error naming the op and the node", "[onnx]") {
  Notebook nb;
  gg::Value predictions = gg::argmax(nb.Z2, 0).named("predictions");
  gg::Program p(nb.g, {predictions}, {.share_params_with = &nb.p, .training = false});
  const std::string msg = message_of<gg::onnx::ExportError>([&] { gg::onnx::to_bytes(p, {predictions}); });
  CHECK(msg == "onnx export: op 'argmax' (node 'predictions') has no ONNX equivalent");
}

TEST_CASE("a gradient is refused: the backward ops have no ONNX equivalent", "[onnx]") {
  gg::test::MlpWithGrads mlp(gg::f32, 6, 4, 3);
  gg::Program p(mlp.g, mlp.fetches());
  const std::string msg = message_of<gg::onnx::ExportError>([&] { gg::onnx::to_bytes(p, {mlp.grads[0]}); });
  CHECK_THAT(msg, Contains("onnx export: op '") && Contains("has no ONNX equivalent"));
}

TEST_CASE("max pooling's indices are refused: ONNX's count over the whole tensor", "[onnx]") {
  gg::Graph g(gg::f32);
  gg::Value x = g.input("X", {gg::dyn, 1, 4, 4});
  gg::Value y = gg::max_pool2d(x, 2).named("pool");
  gg::Value indices{y.graph, y.id, 1};
  gg::Program p(g, {y}, {.training = false});
  const std::string msg = message_of<gg::onnx::ExportError>([&] { gg::onnx::to_bytes(p, {indices}); });
  CHECK_THAT(msg, Contains("op 'max_pool2d' (node 'pool') is read for its indices"));
}

TEST_CASE("output names must differ from each other and from the inputs'", "[onnx]") {
  Notebook nb;
  CHECK_THAT(message_of<gg::onnx::ExportError>([&] { gg::onnx::to_bytes(nb.p, {nb.Z2, nb.P}, {.output_names = {"y", "y"}}); }),
             Contains("the output name 'y' is taken"));
  CHECK_THAT(message_of<gg::onnx::ExportError>([&] { gg::onnx::to_bytes(nb.p, {nb.Z2}, {.output_names = {"X"}}); }),
             Contains("the output name 'X' is taken"));
}

TEST_CASE("a refused export leaves an existing file as it was", "[onnx][io]") {
  gg::test::TempDir dir;
  const std::string path = dir / "m.onnx";
  Notebook nb;
  gg::onnx::export_model(nb.p, {nb.Z2}, path);
  const std::string before = gg::test::slurp(path);
  CHECK(before == gg::onnx::to_bytes(nb.p, {nb.Z2}));
  gg::Value predictions = gg::argmax(nb.Z2, 0);
  gg::Program p(nb.g, {predictions}, {.share_params_with = &nb.p, .training = false});
  CHECK_THROWS_AS(gg::onnx::export_model(p, {predictions}, path), gg::onnx::ExportError);
  CHECK(gg::test::slurp(path) == before);
  CHECK(dir.entries() == 1);  // no temporary file left behind
}

TEST_CASE("a parameter added after the program was compiled is refused by name", "[onnx]") {
  gg::Graph g(gg::f32);
  gg::Value x = g.input("X", {gg::dyn, 3});
  gg::Program p(g, {gg::relu(x)}, {.training = false});
  gg::Value w = g.param("late", {3, 2});
  gg::Value y = gg::matmul(x, w);
  CHECK_THAT(message_of<gg::onnx::ExportError>([&] { gg::onnx::to_bytes(p, {y}); }),
             Contains("op 'param' (node 'late') is not in the program exported from"));
}
