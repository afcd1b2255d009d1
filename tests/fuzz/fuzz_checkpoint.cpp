// libFuzzer harness for the safetensors checkpoint loader (gg::io::parse_safetensors, what
// load_safetensors runs on a file's bytes). For an input that loads:
//   - every tensor goes through Program::set_param into a compiled 2-layer MLP whose parameters are
//     named as mnist-train names them (W1 {784, 64} ... here W1 {4, 3}, b1 {3}, W2 {3, 2}, b2 {2}),
//     in float32 and in float64: a wrong name, dtype or shape must throw std::invalid_argument (the
//     documented error), and a tensor that is taken must read back bit for bit;
//   - a save/load round trip (write_safetensors, then parse_safetensors) must give the same names,
//     dtypes, shapes, bytes and metadata, bit for bit;
//   - its metadata goes through gg::train::rebuild, which builds the network a checkpoint was saved
//     from (what mnist-eval and mnist-predict do with --load): it documents std::runtime_error.
// The documented load error is exactly std::runtime_error; anything else is a finding.
#include "fuzz.hpp"

#include <gradgraph/gradgraph.hpp>
#include <gradgraph/safetensors.hpp>

#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <typeinfo>

namespace {

struct Mlp {
  gg::Graph g;
  gg::Program p;
  explicit Mlp(gg::DType dtype) : g(dtype), p(build(g)) {}
  static gg::Program build(gg::Graph& g) {
    gg::Value x = g.input("x", {gg::dyn, 4});
    gg::Value h = gg::relu(gg::matmul(x, g.param("W1", {4, 3})) + g.param("b1", {3}));
    gg::Value y = gg::matmul(h, g.param("W2", {3, 2})) + g.param("b2", {2});
    return g.compile({y});
  }
};

bool same_bytes(const gg::TensorView& a, const gg::TensorView& b) {
  if (a.dtype != b.dtype || a.shape != b.shape) return false;
  gg::Tensor ca = gg::Tensor::copy_of(a), cb = gg::Tensor::copy_of(b);  // row-major, contiguous
  std::size_t n = static_cast<std::size_t>(ca.numel()) * gg::dtype_size(ca.dtype());
  return n == 0 || std::memcmp(ca.data(), cb.data(), n) == 0;
}

void set_params(Mlp& m, const gg::io::SafetensorsFile& f) {
  for (const auto& [name, t] : f.tensors) {
    try {
      m.p.set_param(name, t.view());
    } catch (const std::invalid_argument&) {
      continue;  // not a parameter of this program, or another dtype or shape: documented
    } catch (const std::exception& e) {
      gg::fuzz::unexpected("Program::set_param", e);
    }
    if (!same_bytes(m.p.param(name), t.view())) gg::fuzz::finding("set_param did not store the tensor bit for bit", name.c_str());
  }
}

void round_trip(const gg::io::SafetensorsFile& f) {
  std::vector<std::pair<std::string, gg::TensorView>> views;
  for (const auto& [name, t] : f.tensors) views.emplace_back(name, t.view());
  std::ostringstream os;
  try {
    gg::io::write_safetensors(os, views, f.metadata);
  } catch (const std::exception& e) {
    gg::fuzz::unexpected("write_safetensors of a file that loaded", e);
  }
  const std::string bytes = os.str();
  gg::io::SafetensorsFile back;
  try {
    back = gg::io::parse_safetensors("<round trip>", {reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()});
  } catch (const std::exception& e) {
    gg::fuzz::unexpected("parse_safetensors of what write_safetensors wrote", e);
  }
  if (back.metadata != f.metadata) gg::fuzz::finding("the round trip changed the metadata");
  if (back.tensors.size() != f.tensors.size()) gg::fuzz::finding("the round trip changed the number of tensors");
  for (std::size_t i = 0; i < f.tensors.size(); ++i) {
    if (back.tensors[i].first != f.tensors[i].first) gg::fuzz::finding("the round trip changed a name or the order");
    if (!same_bytes(back.tensors[i].second.view(), f.tensors[i].second.view()))
      gg::fuzz::finding("the round trip changed a tensor", f.tensors[i].first.c_str());
  }
}

void rebuild(const gg::io::SafetensorsFile& f) {
  try {
    gg::train::rebuild(gg::train::CheckpointInfo{f.metadata});
  } catch (const std::runtime_error& e) {
    if (std::strchr(e.what(), '\n')) gg::fuzz::finding("a rebuild error of more than one line", e.what());
  } catch (const std::exception& e) {
    gg::fuzz::unexpected("gg::train::rebuild", e);
  }
}

}  // namespace

extern "C" int GG_FUZZ_ENTRY(const std::uint8_t* data, std::size_t size) {
  static Mlp f32(gg::f32), f64(gg::f64);
  gg::io::SafetensorsFile f;
  try {
    f = gg::io::parse_safetensors("<fuzz>", {data, size});
  } catch (const std::exception& e) {
    if (typeid(e) != typeid(std::runtime_error)) gg::fuzz::unexpected("parse_safetensors", e);
    if (std::strchr(e.what(), '\n')) gg::fuzz::finding("a load error of more than one line", e.what());
    return 0;
  }
  set_params(f32, f);
  set_params(f64, f);
  round_trip(f);
  rebuild(f);
  return 0;
}
