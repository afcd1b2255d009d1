#include <gradgraph/init.hpp>

#include <cmath>

namespace gg {

namespace {
// PyTorch's convention for weights stored {out, in, kernel...}.
void fans(const Shape& s, std::int64_t& fan_in, std::int64_t& fan_out) {
  if (s.rank == 0) {
    fan_in = fan_out = 1;
    return;
  }
  if (s.rank == 1) {
    fan_in = fan_out = s[0];
    return;
  }
  std::int64_t receptive = 1;
  for (int i = 2; i < s.rank; ++i) receptive *= s[i];
  fan_in = s[1] * receptive;
  fan_out = s[0] * receptive;
}
}  // namespace

void initialize(const Init& init, const TensorView& out, Generator& rng) {
  if (!out.is_contiguous()) throw std::invalid_argument("initialize: the target must be contiguous");
  std::int64_t fin = 0, fout = 0;
  fans(out.shape, fin, fout);
  if (init.fan_in > 0) fin = init.fan_in;
  if (init.fan_out > 0) fout = init.fan_out;
  const std::int64_t n = out.numel();
  if (!is_float(out.dtype) && init.kind != InitKind::zeros && init.kind != InitKind::constant)
    throw std::invalid_argument(std::string("initialize: a ") + dtype_name(out.dtype) + " tensor takes zeros or a constant");
  auto put = [&](std::int64_t i, double v) {
    switch (out.dtype) {
      case DType::f32: static_cast<float*>(out.data)[i] = static_cast<float>(v); break;
      case DType::f64: static_cast<double*>(out.data)[i] = v; break;
      case DType::i64: static_cast<std::int64_t*>(out.data)[i] = static_cast<std::int64_t>(v); break;
      case DType::u8: static_cast<std::uint8_t*>(out.data)[i] = static_cast<std::uint8_t>(v); break;
    }
  };
  switch (init.kind) {
    case InitKind::zeros:
      for (std::int64_t i = 0; i < n; ++i) put(i, 0.0);
      break;
    case InitKind::constant:
      for (std::int64_t i = 0; i < n; ++i) put(i, init.a);
      break;
    case InitKind::uniform:
      for (std::int64_t i = 0; i < n; ++i) put(i, init.a + (init.b - init.a) * rng.uniform());
      break;
    case InitKind::normal:
      for (std::int64_t i = 0; i < n; ++i) put(i, init.a + init.b * rng.normal());
      break;
    case InitKind::he_normal: {
      // randn * sqrt(2 / fan_in): the same double operations as the notebook's NumPy code.
      const double s = std::sqrt(2.0 / static_cast<double>(fin));
      for (std::int64_t i = 0; i < n; ++i) put(i, rng.normal() * s);
      break;
    }
    case InitKind::he_uniform: {
      const double b = std::sqrt(6.0 / static_cast<double>(fin));
      for (std::int64_t i = 0; i < n; ++i) put(i, (2.0 * rng.uniform() - 1.0) * b);
      break;
    }
    case InitKind::glorot_normal: {
      const double s = std::sqrt(2.0 / static_cast<double>(fin + fout));
      for (std::int64_t i = 0; i < n; ++i) put(i, rng.normal() * s);
      break;
    }
    case InitKind::glorot_uniform: {
      const double b = std::sqrt(6.0 / static_cast<double>(fin + fout));
      for (std::int64_t i = 0; i < n; ++i) put(i, (2.0 * rng.uniform() - 1.0) * b);
      break;
    }
  }
}

}  // namespace gg
