#include <gradgraph/tensor.hpp>

#include <cstdlib>
#include <cstring>
#include <new>

namespace gg {

Shape::Shape(std::initializer_list<std::int64_t> d) : Shape(std::span<const std::int64_t>(d.begin(), d.size())) {}

Shape::Shape(std::span<const std::int64_t> d) {
  if (d.size() > static_cast<std::size_t>(kMaxRank))
    throw std::invalid_argument("Shape: rank " + std::to_string(d.size()) + " exceeds the maximum of " +
                                std::to_string(kMaxRank));
  for (std::int64_t x : d) {
    if (x < 0 && x != dyn) throw std::invalid_argument("Shape: negative dimension " + std::to_string(x));
    dims[rank++] = x;
  }
}

namespace {
// The one place extents are multiplied. A zero extent makes the element count 0, but the strides
// of the other extents are still their products ({0, 2^32, 2^32} has a stride of 2^64), so the
// product without the zeros must fit as well: a shape is accepted whatever the order of its dims.
std::int64_t checked_product(const Shape& s) {
  std::int64_t strides = 1;
  bool zero = false;
  for (int i = 0; i < s.rank; ++i) {
    if (s.dims[i] == dyn) throw std::logic_error("Shape::numel on a shape with an open (dyn) dimension");
    if (s.dims[i] < 0) throw std::invalid_argument("Shape " + to_string(s) + " has a negative dimension");
    if (s.dims[i] == 0) {
      zero = true;
      continue;
    }
    if (__builtin_mul_overflow(strides, s.dims[i], &strides))
      throw std::overflow_error("Shape " + to_string(s) + " has more than 2^63 elements (or strides past 2^63)");
  }
  return zero ? 0 : strides;
}
}  // namespace

std::int64_t Shape::numel() const { return checked_product(*this); }

bool Shape::has_dyn() const {
  for (int i = 0; i < rank; ++i)
    if (dims[i] == dyn) return true;
  return false;
}

Shape Shape::resolved(std::int64_t batch) const {
  Shape s = *this;
  for (int i = 0; i < rank; ++i)
    if (s.dims[i] == dyn) s.dims[i] = batch;
  return s;
}

bool operator==(const Shape& a, const Shape& b) {
  if (a.rank != b.rank) return false;
  for (int i = 0; i < a.rank; ++i)
    if (a.dims[i] != b.dims[i]) return false;
  return true;
}

std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20 || c == 0x7f) {
      static const char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += ch;
    }
  }
  return out;
}

std::string to_string(const Shape& s) {
  std::string out = "{";
  for (int i = 0; i < s.rank; ++i) {
    if (i) out += ", ";
    out += s.dims[i] == dyn ? std::string("dyn") : std::to_string(s.dims[i]);
  }
  return out + "}";
}

Strides contiguous_strides(const Shape& s) {
  Strides st;
  std::int64_t acc = 1;
  for (int i = s.rank - 1; i >= 0; --i) {
    st.s[i] = acc;
    // Wrapping here is undefined behaviour and a wrong stride; checked_product reports it by name.
    if (__builtin_mul_overflow(acc, s.dims[i], &acc)) (void)checked_product(s);
  }
  return st;
}

TensorView::TensorView(void* p, DType t, const Shape& s) : data(p), dtype(t), shape(s), strides(contiguous_strides(s)) {}
TensorView::TensorView(void* p, DType t, const Shape& s, const Strides& st) : data(p), dtype(t), shape(s), strides(st) {}

bool is_contiguous(const Shape& shape, const Strides& strides) {
  std::int64_t acc = 1;
  for (int i = shape.rank - 1; i >= 0; --i) {
    if (shape.dims[i] != 1 && strides.s[i] != acc) return false;
    acc *= shape.dims[i];
  }
  return true;
}

bool TensorView::is_contiguous() const { return gg::is_contiguous(shape, strides); }

namespace {
std::int64_t offset_of(const TensorView& v, std::initializer_list<std::int64_t> idx) {
  if (static_cast<int>(idx.size()) != v.shape.rank)
    throw std::out_of_range("TensorView: " + std::to_string(idx.size()) + " indices for a tensor of shape " +
                            to_string(v.shape));
  std::int64_t off = 0;
  int i = 0;
  for (std::int64_t x : idx) {
    if (x < 0 || x >= v.shape.dims[i])
      throw std::out_of_range("TensorView: index " + std::to_string(x) + " out of range for dimension " +
                              std::to_string(i) + " of " + to_string(v.shape));
    off += x * v.strides.s[i++];
  }
  return off;
}
}  // namespace

namespace {
double load(const void* data, DType t, std::int64_t i) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(data)[i];
    case DType::f64: return static_cast<const double*>(data)[i];
    case DType::i64: return static_cast<double>(static_cast<const std::int64_t*>(data)[i]);
    case DType::u8: return static_cast<const std::uint8_t*>(data)[i];
  }
  return 0;
}

void store(void* data, DType t, std::int64_t i, double v) {
  switch (t) {
    case DType::f32: static_cast<float*>(data)[i] = static_cast<float>(v); break;
    case DType::f64: static_cast<double*>(data)[i] = v; break;
    case DType::i64: static_cast<std::int64_t*>(data)[i] = static_cast<std::int64_t>(v); break;
    case DType::u8: static_cast<std::uint8_t*>(data)[i] = static_cast<std::uint8_t>(v); break;
  }
}
}  // namespace

double TensorView::at(std::initializer_list<std::int64_t> idx) const { return load(data, dtype, offset_of(*this, idx)); }

void TensorView::set(std::initializer_list<std::int64_t> idx, double v) const { store(data, dtype, offset_of(*this, idx), v); }

double TensorView::flat(std::int64_t i) const { return load(data, dtype, i); }

TensorView TensorView::slice_leading(std::int64_t begin, std::int64_t end) const {
  if (shape.rank == 0 || begin < 0 || end < begin || end > shape.dims[0])
    throw std::out_of_range("slice_leading: [" + std::to_string(begin) + ", " + std::to_string(end) +
                            ") out of range for shape " + to_string(shape));
  TensorView v = *this;
  v.data = static_cast<std::byte*>(data) + begin * strides.s[0] * static_cast<std::int64_t>(dtype_size(dtype));
  v.shape.dims[0] = end - begin;
  return v;
}

TensorView TensorView::slice_trailing(std::int64_t begin, std::int64_t end) const {
  int last = shape.rank - 1;
  if (shape.rank == 0 || begin < 0 || end < begin || end > shape.dims[last])
    throw std::out_of_range("slice_trailing: [" + std::to_string(begin) + ", " + std::to_string(end) +
                            ") out of range for shape " + to_string(shape));
  TensorView v = *this;
  v.data = static_cast<std::byte*>(data) + begin * strides.s[last] * static_cast<std::int64_t>(dtype_size(dtype));
  v.shape.dims[last] = end - begin;
  return v;
}

TensorView TensorView::transposed() const {
  if (shape.rank != 2) throw std::invalid_argument("transposed: needs a rank-2 view, got " + to_string(shape));
  TensorView v = *this;
  std::swap(v.shape.dims[0], v.shape.dims[1]);
  std::swap(v.strides.s[0], v.strides.s[1]);
  return v;
}

void* aligned_alloc64(std::size_t bytes) {
  std::size_t n = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, n ? n : 64);
  if (!p) throw std::bad_alloc();
  return p;
}

void aligned_free(void* p) { std::free(p); }

std::size_t byte_size(std::int64_t numel, DType t) {
  std::size_t bytes = 0;
  if (numel < 0 || __builtin_mul_overflow(static_cast<std::size_t>(numel), dtype_size(t), &bytes) ||
      bytes > (std::size_t{1} << 62))
    throw std::overflow_error(std::to_string(numel) + " " + dtype_name(t) + " elements do not fit in memory");
  return bytes;
}

std::size_t checked_bytes(const Shape& s, DType t) {
  if (s.has_dyn()) throw std::invalid_argument("cannot size shape " + to_string(s) + ": it has an open (dyn) dimension");
  const std::int64_t n = s.numel();
  try {
    return byte_size(n, t);
  } catch (const std::overflow_error&) {
    throw std::overflow_error("shape " + to_string(s) + " of " + dtype_name(t) + " does not fit in memory (more than 2^62 bytes)");
  }
}

Tensor::Tensor(DType t, const Shape& s) {
  if (s.has_dyn()) throw std::invalid_argument("Tensor: cannot allocate shape " + to_string(s) + " with a dyn dimension");
  const std::size_t bytes = checked_bytes(s, t);
  auto* p = static_cast<std::byte*>(aligned_alloc64(bytes));
  std::memset(p, 0, bytes);
  storage_ = std::shared_ptr<std::byte>(p, [](std::byte* q) { aligned_free(q); });
  view_ = TensorView(p, t, s);
}

void copy(const TensorView& src, const TensorView& dst) {
  if (src.shape != dst.shape)
    throw std::invalid_argument("copy: shapes differ, " + to_string(src.shape) + " and " + to_string(dst.shape));
  const int r = src.shape.rank;
  const std::int64_t n = src.numel();
  const std::size_t es = dtype_size(src.dtype);
  const bool same = src.dtype == dst.dtype;
  std::int64_t idx[kMaxRank] = {};
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t so = 0, d = 0;
    for (int k = 0; k < r; ++k) so += idx[k] * src.strides.s[k], d += idx[k] * dst.strides.s[k];
    if (same)  // bit for bit, whatever the dtype
      std::memcpy(static_cast<std::byte*>(dst.data) + d * static_cast<std::int64_t>(es),
                  static_cast<const std::byte*>(src.data) + so * static_cast<std::int64_t>(es), es);
    else
      store(dst.data, dst.dtype, d, load(src.data, src.dtype, so));
    for (int k = r - 1; k >= 0; --k) {
      if (++idx[k] < src.shape.dims[k]) break;
      idx[k] = 0;
    }
  }
}

Tensor Tensor::copy_of(const TensorView& v, DType t) {
  Tensor out(t, v.shape);
  copy(v, out.view());
  return out;
}

Tensor Tensor::slice_leading(std::int64_t begin, std::int64_t end) const {
  Tensor t = *this;
  t.view_ = view_.slice_leading(begin, end);
  return t;
}

Tensor Tensor::slice_trailing(std::int64_t begin, std::int64_t end) const {
  Tensor t = *this;
  t.view_ = view_.slice_trailing(begin, end);
  return t;
}

}  // namespace gg
