// Dense layers and the text spec of a network (lib/gradgraph/nn.hpp).
#include <gradgraph/nn.hpp>

#include <cctype>
#include <charconv>
#include <sstream>
#include <regex>
#include <stdexcept>

namespace gg::nn {

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::columns: return "columns";
    case Layout::rows: return "rows";
    case Layout::nchw: return "nchw";
  }
  return "?";
}

Layout parse_layout(std::string_view name) {
  for (Layout l : {Layout::columns, Layout::rows, Layout::nchw})
    if (name == layout_name(l)) return l;
  throw std::invalid_argument("layout must be columns, rows or nchw, not '" + printable(name) + "'");
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
  throw std::invalid_argument("activation must be relu, tanh, sigmoid or none, not '" + printable(name) + "'");
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
// 1 + the number of parameters named W<digits> already in the graph: the layer's number.
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
  if (s.rank != 2)
    throw GraphError("dense: the input '" + x.name() + "' has shape " + to_string(s) +
                     "; dense layers take rank 2 (flatten images first)");
  if (o.layout == Layout::nchw) throw GraphError("dense: use the rows layout for a flattened batch");
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

Value conv2d(Value x, std::int64_t channels, const Conv2dOptions& o) {
  if (!x.valid()) throw GraphError("conv2d layer: empty input value");
  Graph& g = *x.graph;
  const Shape s = x.shape();
  if (s.rank != 4)
    throw GraphError("conv2d layer: the input '" + x.name() + "' has shape " + to_string(s) + "; it takes NCHW images");
  if (channels <= 0) throw GraphError("conv2d layer: needs at least one output channel");
  const int k = next_dense_index(g);
  const std::string wn = o.weight_name.empty() ? "W" + std::to_string(k) : o.weight_name;
  const std::string bn = o.bias_name.empty() ? "b" + std::to_string(k) : o.bias_name;
  Value W = g.param(wn, {channels, s[1], o.kernel, o.kernel}, o.init, x.dtype());
  Value b = g.param(bn, {channels}, zeros(), x.dtype());
  return activate(gg::conv2d(x, W, b, o.stride, o.padding, o.dilation), o.activation);
}

Value batch_norm(Value x, const BatchNormOptions& o) {
  if (!x.valid()) throw GraphError("batch_norm layer: empty input value");
  Graph& g = *x.graph;
  const Shape s = x.shape();
  const int axis = o.layout == Layout::columns ? 0 : 1;
  if (s.rank < 2 || (o.layout == Layout::nchw && s.rank != 4))
    throw GraphError("batch_norm layer: the input '" + x.name() + "' has shape " + to_string(s) + ", not " +
                     (o.layout == Layout::nchw ? "NCHW images" : "a rank-2 batch"));
  std::string name = o.name;
  if (name.empty()) {
    static const std::regex gamma("bn[0-9]+/gamma");
    int k = 1;
    for (const Value& p : g.params())
      if (std::regex_match(p.name(), gamma)) ++k;
    name = "bn" + std::to_string(k);
  }
  const Shape c{s[axis]};
  const DType dt = x.dtype();
  Value gamma_ = g.param(name + "/gamma", c, constant(1.0), dt);
  Value beta = g.param(name + "/beta", c, zeros(), dt);
  Value mean = g.state(name + "/running_mean", c, zeros(), dt);
  Value var = g.state(name + "/running_var", c, constant(1.0), dt);
  return gg::batch_norm(x, gamma_, beta, mean, var, axis, o.momentum, o.eps);
}

std::string Layer::text() const {
  auto num = [](double v) {
    std::ostringstream os;
    os << v;
    return os.str();
  };
  switch (kind) {
    case Kind::dense: return "dense" + std::to_string(units);
    case Kind::activation: return activation_name(activation);
    case Kind::conv: {
      std::string t = "conv" + std::to_string(units) + "k" + std::to_string(kernel);
      if (padding) t += "p" + std::to_string(padding);
      if (stride != 1) t += "s" + std::to_string(stride);
      return t;
    }
    case Kind::max_pool:
    case Kind::avg_pool: {
      std::string t = (kind == Kind::max_pool ? "pool" : "avgpool") + std::to_string(kernel);
      if (stride != kernel) t += "s" + std::to_string(stride);
      return t;
    }
    case Kind::global_avg_pool: return "gap";
    case Kind::flatten: return "flatten";
    case Kind::dropout: return "dropout" + num(p);
    case Kind::batch_norm: return "bn";
  }
  return "?";
}

std::string Spec::text() const {
  std::string out;
  for (const Layer& l : layers) {
    if (!out.empty()) out += ',';
    out += l.text();
  }
  return out;
}

std::int64_t Spec::outputs() const {
  for (auto it = layers.rbegin(); it != layers.rend(); ++it)
    if (it->kind == Layer::Kind::dense) return it->units;
  return 0;
}

bool Spec::convolutional() const {
  for (const Layer& l : layers)
    if (l.kind != Layer::Kind::dense && l.kind != Layer::Kind::activation && l.kind != Layer::Kind::dropout &&
        l.kind != Layer::Kind::batch_norm)
      return true;
  return false;
}

namespace {

// Reads "<letter><number>" fields after a layer's name: conv32k3p1 has {"", 32}, {"k", 3}, {"p", 1}.
struct Fields {
  std::vector<std::pair<char, std::string>> items;
};
bool read_fields(std::string_view rest, Fields& f) {
  std::size_t i = 0;
  char key = 0;
  while (i < rest.size()) {
    std::size_t j = i;
    while (j < rest.size() && (std::isdigit(static_cast<unsigned char>(rest[j])) || rest[j] == '.')) ++j;
    if (j == i) return false;
    f.items.emplace_back(key, std::string(rest.substr(i, j - i)));
    if (j == rest.size()) return true;
    key = rest[j];
    if (!std::isalpha(static_cast<unsigned char>(key))) return false;
    i = j + 1;
    if (i == rest.size()) return false;
  }
  return !f.items.empty();
}

std::int64_t whole(const std::string& s, std::int64_t lo, std::int64_t hi) {
  std::int64_t v = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || v < lo || v > hi) throw std::invalid_argument("");
  return v;
}

}  // namespace

Spec parse(std::string_view text) {
  Spec spec;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(',', start), text.size());
    const std::string_view tok = text.substr(start, end - start);
    const std::string where = "model spec '" + printable(text) + "': layer " + std::to_string(spec.layers.size() + 1) +
                              " '" + printable(tok) + "'";
    Layer l;
    auto named = [&](std::string_view name) { return tok.rfind(name, 0) == 0 && tok.size() > name.size(); };
    try {
      Fields f;
      if (tok == "relu" || tok == "tanh" || tok == "sigmoid") {
        l.kind = Layer::Kind::activation;
        l.activation = parse_activation(tok);
      } else if (tok == "flatten") {
        l.kind = Layer::Kind::flatten;
      } else if (tok == "bn") {
        l.kind = Layer::Kind::batch_norm;
      } else if (tok == "gap") {
        l.kind = Layer::Kind::global_avg_pool;
      } else if (named("dense")) {
        if (!read_fields(tok.substr(5), f) || f.items.size() != 1) throw std::invalid_argument("");
        l.kind = Layer::Kind::dense;
        l.units = whole(f.items[0].second, 1, 1000000);
      } else if (named("conv")) {
        if (!read_fields(tok.substr(4), f)) throw std::invalid_argument("");
        l.kind = Layer::Kind::conv;
        l.kernel = 3, l.stride = 1, l.padding = 0;
        for (const auto& [key, v] : f.items) {
          if (key == 0) l.units = whole(v, 1, 100000);
          else if (key == 'k') l.kernel = static_cast<int>(whole(v, 1, 64));
          else if (key == 'p') l.padding = static_cast<int>(whole(v, 0, 64));
          else if (key == 's') l.stride = static_cast<int>(whole(v, 1, 64));
          else throw std::invalid_argument("");
        }
        if (l.units == 0) throw std::invalid_argument("");
      } else if (named("avgpool") || named("pool")) {
        const bool avg = named("avgpool");
        if (!read_fields(tok.substr(avg ? 7 : 4), f)) throw std::invalid_argument("");
        l.kind = avg ? Layer::Kind::avg_pool : Layer::Kind::max_pool;
        for (const auto& [key, v] : f.items) {
          if (key == 0) l.kernel = static_cast<int>(whole(v, 1, 64));
          else if (key == 's') l.stride = static_cast<int>(whole(v, 1, 64));
          else throw std::invalid_argument("");
        }
        if (l.stride == 0) l.stride = l.kernel;
      } else if (named("dropout")) {
        const std::string v(tok.substr(7));
        std::size_t used = 0;
        l.kind = Layer::Kind::dropout;
        l.p = std::stod(v, &used);
        if (used != v.size() || !(l.p >= 0 && l.p < 1)) throw std::invalid_argument("");
      } else {
        throw std::invalid_argument("");
      }
    } catch (const std::exception&) {
      throw std::invalid_argument(where +
                                  " is not a layer (known: denseN, convNkKpPsS, poolK, poolKsS, avgpoolK, gap, flatten, "
                                  "dropoutP with 0 <= P < 1, bn, relu, tanh, sigmoid)");
    }
    spec.layers.push_back(l);
    start = end + 1;
  }
  if (spec.outputs() == 0) throw std::invalid_argument("model spec '" + printable(text) + "' has no dense layer");
  if (spec.layers.back().kind != Layer::Kind::dense)
    throw std::invalid_argument("model spec '" + printable(text) + "' must end in the dense layer of the logits");
  return spec;
}

Spec mlp(const std::vector<std::int64_t>& hidden, Activation activation, std::int64_t classes) {
  auto dense_layer = [](std::int64_t units) {
    Layer l;
    l.units = units;
    return l;
  };
  Spec s;
  for (std::int64_t h : hidden) {
    s.layers.push_back(dense_layer(h));
    if (activation != Activation::none) {
      Layer a;
      a.kind = Layer::Kind::activation;
      a.activation = activation;
      s.layers.push_back(a);
    }
  }
  s.layers.push_back(dense_layer(classes));
  return parse(s.text());  // validates
}

Spec reference_cnn(std::int64_t classes) {
  return parse("conv32k3p1,relu,pool2,conv64k3p1,relu,pool2,flatten,dense128,relu,dropout0.25,dense" +
               std::to_string(classes));
}

Value build(const Spec& spec, Value x, Layout layout) {
  Value y = x;
  // Images stay NCHW until a flatten or a global pool; dense layers then work on rows.
  Layout flat = layout == Layout::nchw ? Layout::rows : layout;
  for (std::size_t i = 0; i < spec.layers.size(); ++i) {
    const Layer& l = spec.layers[i];
    const bool images = y.shape().rank == 4;
    auto need_images = [&] {
      if (!images)
        throw GraphError("model layer " + std::to_string(i + 1) + " '" + l.text() + "' takes NCHW images, its input '" +
                         y.name() + "' has shape " + to_string(y.shape()));
    };
    switch (l.kind) {
      case Layer::Kind::dense: {
        if (images)
          throw GraphError("model layer " + std::to_string(i + 1) + " '" + l.text() + "': the input " + to_string(y.shape()) +
                           " is images; flatten them first");
        DenseOptions o;
        o.layout = flat;
        y = dense(y, l.units, o);
        break;
      }
      case Layer::Kind::activation: y = activate(y, l.activation); break;
      case Layer::Kind::conv: {
        need_images();
        Conv2dOptions o;
        o.kernel = l.kernel, o.stride = l.stride, o.padding = l.padding;
        y = conv2d(y, l.units, o);
        break;
      }
      case Layer::Kind::max_pool: need_images(); y = max_pool2d(y, l.kernel, l.stride); break;
      case Layer::Kind::avg_pool: need_images(); y = avg_pool2d(y, l.kernel, l.stride); break;
      case Layer::Kind::global_avg_pool: need_images(); y = global_avg_pool(y); break;
      case Layer::Kind::flatten: need_images(); y = flatten(y); break;
      case Layer::Kind::dropout: y = dropout(y, l.p); break;
      case Layer::Kind::batch_norm: {
        BatchNormOptions o;
        o.layout = images ? Layout::nchw : flat;
        y = batch_norm(y, o);
        break;
      }
    }
  }
  return y;
}

}  // namespace gg::nn
