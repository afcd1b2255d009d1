// Dense layers and the text spec of a network (lib/gradgraph/nn.hpp).
#include <gradgraph/nn.hpp>

#include <charconv>
#include <regex>
#include <stdexcept>

namespace gg::nn {

const char* layout_name(Layout l) { return l == Layout::columns ? "columns" : "rows"; }

Layout parse_layout(std::string_view name) {
  if (name == "columns") return Layout::columns;
  if (name == "rows") return Layout::rows;
  throw std::invalid_argument("layout must be columns or rows, not '" + std::string(name) + "'");
}

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::none: return "none";
    case Activation::relu: return "relu";
    case Activation::tanh: return "tanh";
    case Activation::sigmoid: return "sigmoid";
  }
  return "?";
}

Activation parse_activation(std::string_view name) {
  for (Activation a : {Activation::none, Activation::relu, Activation::tanh, Activation::sigmoid})
    if (name == activation_name(a)) return a;
  throw std::invalid_argument("activation must be relu, tanh, sigmoid or none, not '" + std::string(name) + "'");
}

Value activate(Value x, Activation a) {
  switch (a) {
    case Activation::none: return x;
    case Activation::relu: return relu(x);
    case Activation::tanh: return gg::tanh(x);
    case Activation::sigmoid: return sigmoid(x);
  }
  return x;
}

namespace {
// 1 + the number of parameters named W<digits> already in the graph.
int next_dense_index(Graph& g) {
  static const std::regex weight("W[0-9]+");
  int k = 1;
  for (const Value& p : g.params())
    if (std::regex_match(p.name(), weight)) ++k;
  return k;
}
}  // namespace

Value dense(Value x, std::int64_t units, const DenseOptions& o) {
  if (!x.valid()) throw GraphError("dense: empty input value");
  Graph& g = *x.graph;
  const Shape s = x.shape();
  if (s.rank != 2) throw GraphError("dense: the input '" + x.name() + "' has shape " + to_string(s) + "; dense layers take rank 2");
  if (units <= 0) throw GraphError("dense: needs at least one unit, got " + std::to_string(units));
  const std::int64_t in = o.layout == Layout::columns ? s[0] : s[1];
  if (in == dyn)
    throw GraphError("dense: the input '" + x.name() + "' " + to_string(s) + " has an open feature dimension (is the layout " +
                     layout_name(o.layout) + " right?)");
  const int k = next_dense_index(g);
  const std::string wn = o.weight_name.empty() ? "W" + std::to_string(k) : o.weight_name;
  const std::string bn = o.bias_name.empty() ? "b" + std::to_string(k) : o.bias_name;
  const DType dt = x.dtype();
  Value y;
  if (o.layout == Layout::columns) {
    Value W = g.param(wn, {units, in}, o.init, dt);
    Value b = g.param(bn, {units, 1}, zeros(), dt);
    y = matmul(W, x) + b;
  } else {
    // {in, units}: fans from the shape would be swapped, so He/Glorot get the fan-in explicitly.
    Init init = o.init;
    if (init.fan_in == 0) init.fan_in = in;
    if (init.fan_out == 0) init.fan_out = units;
    Value W = g.param(wn, {in, units}, init, dt);
    Value b = g.param(bn, {units}, zeros(), dt);
    y = matmul(x, W) + b;
  }
  return activate(y, o.activation);
}

std::string Spec::text() const {
  std::string out;
  for (const Layer& l : layers) {
    if (!out.empty()) out += ',';
    out += l.kind == Layer::Kind::dense ? "dense" + std::to_string(l.units) : activation_name(l.activation);
  }
  return out;
}

std::int64_t Spec::outputs() const {
  for (auto it = layers.rbegin(); it != layers.rend(); ++it)
    if (it->kind == Layer::Kind::dense) return it->units;
  return 0;
}

Spec parse(std::string_view text) {
  Spec spec;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(',', start), text.size());
    const std::string_view tok = text.substr(start, end - start);
    const std::string where = "model spec '" + std::string(text) + "': layer " + std::to_string(spec.layers.size() + 1) +
                              " '" + std::string(tok) + "'";
    Layer l;
    if (tok.rfind("dense", 0) == 0) {
      const std::string_view n = tok.substr(5);
      std::int64_t units = 0;
      const auto r = std::from_chars(n.data(), n.data() + n.size(), units);
      if (n.empty() || r.ec != std::errc() || r.ptr != n.data() + n.size() || units <= 0 || units > 1000000)
        throw std::invalid_argument(where + ": a dense layer is denseN with 1 <= N <= 1000000 units");
      l.kind = Layer::Kind::dense;
      l.units = units;
    } else if (tok == "relu" || tok == "tanh" || tok == "sigmoid") {
      l.kind = Layer::Kind::activation;
      l.activation = parse_activation(tok);
    } else {
      throw std::invalid_argument(where + " is not a layer (known: denseN, relu, tanh, sigmoid)");
    }
    spec.layers.push_back(l);
    start = end + 1;
  }
  if (spec.outputs() == 0) throw std::invalid_argument("model spec '" + std::string(text) + "' has no dense layer");
  return spec;
}

Spec mlp(const std::vector<std::int64_t>& hidden, Activation activation, std::int64_t classes) {
  Spec s;
  for (std::int64_t h : hidden) {
    s.layers.push_back({Layer::Kind::dense, h, Activation::none});
    if (activation != Activation::none) s.layers.push_back({Layer::Kind::activation, 0, activation});
  }
  s.layers.push_back({Layer::Kind::dense, classes, Activation::none});
  return parse(s.text());  // validates
}

Value build(const Spec& spec, Value x, Layout layout) {
  Value y = x;
  for (const Layer& l : spec.layers) {
    if (l.kind == Layer::Kind::dense) {
      DenseOptions o;
      o.layout = layout;
      y = dense(y, l.units, o);
    } else {
      y = activate(y, l.activation);
    }
  }
  return y;
}

}  // namespace gg::nn
