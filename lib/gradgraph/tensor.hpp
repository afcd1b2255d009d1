// Tensors: n-dimensional arrays of float32, float64, int64 or uint8 with 64-byte aligned storage.
//
// Two types, one layout vocabulary:
//   Shape      fixed-capacity (rank <= kMaxRank) list of extents; never touches the heap, so
//              shapes can be built and compared inside the training loop.
//   TensorView non-owning pointer + dtype + shape + strides (in elements). What kernels, feeds
//              and fetches use. Copying a view never allocates.
//   Tensor     owning: a shared, aligned buffer plus a view of it. Slicing a Tensor along its
//              leading or trailing dimension gives another Tensor sharing the same buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace gg {

// Element types. Floats carry values and gradients; integers carry labels, indices and masks.
enum class DType : std::uint8_t { f32, f64, i64, u8 };
inline constexpr DType f32 = DType::f32;
inline constexpr DType f64 = DType::f64;
inline constexpr DType i64 = DType::i64;
inline constexpr DType u8 = DType::u8;
inline constexpr int kNumDTypes = 4;

inline constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::i64: return 8;
    case DType::u8: return 1;
  }
  return 0;
}
inline constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::i64: return "int64";
    case DType::u8: return "uint8";
  }
  return "?";
}
inline constexpr bool is_float(DType t) { return t == DType::f32 || t == DType::f64; }

template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<std::int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<std::uint8_t>() { return DType::u8; }

// The open (batch) dimension of a graph input; resolved when a program is fed.
inline constexpr std::int64_t dyn = -1;
inline constexpr int kMaxRank = 6;

struct Shape {
  int rank = 0;
  std::int64_t dims[kMaxRank] = {};

  Shape() = default;
  Shape(std::initializer_list<std::int64_t> d);
  // From any list of extents (a std::vector, an array, a pointer and a length).
  explicit Shape(std::span<const std::int64_t> d);
  static Shape of(const std::int64_t* d, int rank) { return Shape(std::span<const std::int64_t>(d, static_cast<std::size_t>(rank < 0 ? 0 : rank))); }

  std::int64_t operator[](int i) const { return dims[i]; }
  std::int64_t& operator[](int i) { return dims[i]; }
  // Counts elements; requires no dyn dimension; throws std::overflow_error naming the shape past
  // 2^63, also when a zero extent hides the overflow of the others' product (their strides).
  std::int64_t numel() const;
  bool has_dyn() const;
  // Replaces every dyn dimension by `batch`.
  Shape resolved(std::int64_t batch) const;
  friend bool operator==(const Shape& a, const Shape& b);
  friend bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }
};

// "{64, 784}", "{784, dyn}", "{}" for a scalar.
std::string to_string(const Shape& s);

// Text from files and flags as error messages echo it: control characters escaped (\n, \t, \r,
// \xNN), so that a message stays on one line whatever the text holds.
std::string printable(std::string_view text);

struct Strides {
  std::int64_t s[kMaxRank] = {};
  std::int64_t operator[](int i) const { return s[i]; }
  std::int64_t& operator[](int i) { return s[i]; }
};
Strides contiguous_strides(const Shape& s);
// Row-major contiguous: every stride equals the product of the extents after it (extent-1
// dimensions may have any stride).
bool is_contiguous(const Shape& shape, const Strides& strides);

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  Shape shape;
  Strides strides;  // in elements

  TensorView() = default;
  TensorView(void* p, DType t, const Shape& s);  // contiguous
  TensorView(void* p, DType t, const Shape& s, const Strides& st);
  // A contiguous view of typed memory: TensorView(pixels.data(), {784, n}). The dtype comes
  // from T; a view of const memory is for feeding (programs never write their feeds).
  template <typename T>
  TensorView(const T* p, const Shape& s) : TensorView(const_cast<T*>(p), dtype_of<T>(), s) {}

  std::int64_t numel() const { return shape.numel(); }
  bool is_contiguous() const;
  template <typename T> T* ptr() const {
    if (dtype_of<T>() != dtype)
      throw std::logic_error(std::string("TensorView: ") + dtype_name(dtype_of<T>()) + " pointer requested from a " +
                             dtype_name(dtype) + " view");
    return static_cast<T*>(data);
  }
  // Element access by multi-index (slow path, for tests and tools): value converted to double.
  double at(std::initializer_list<std::int64_t> idx) const;
  void set(std::initializer_list<std::int64_t> idx, double v) const;
  // Reads the element at offset i (in elements, from data) as double.
  double flat(std::int64_t i) const;

  // Views of the range [begin, end) along the leading / trailing dimension: no copy.
  TensorView slice_leading(std::int64_t begin, std::int64_t end) const;
  TensorView slice_trailing(std::int64_t begin, std::int64_t end) const;
  // The view with its two dimensions swapped (rank 2 only), still no copy.
  TensorView transposed() const;
};

class Tensor {
 public:
  Tensor() = default;
  // Zero-filled, contiguous, 64-byte aligned.
  Tensor(DType t, const Shape& s);
  static Tensor zeros(DType t, const Shape& s) { return Tensor(t, s); }
  // Copies any (possibly strided) view into a new contiguous tensor of dtype `t`.
  static Tensor copy_of(const TensorView& v, DType t);
  static Tensor copy_of(const TensorView& v) { return copy_of(v, v.dtype); }
  // A tensor of shape `s` holding `values` (row-major); the dtype comes from T.
  template <typename T> static Tensor from(const Shape& s, std::span<const T> values);
  template <typename T> static Tensor from(const Shape& s, std::initializer_list<T> values) {
    return from<T>(s, std::span<const T>(values.begin(), values.size()));
  }
  template <typename T> static Tensor from(const Shape& s, const std::vector<T>& values) {
    return from<T>(s, std::span<const T>(values));
  }

  const TensorView& view() const { return view_; }
  operator const TensorView&() const { return view_; }
  DType dtype() const { return view_.dtype; }
  const Shape& shape() const { return view_.shape; }
  std::int64_t numel() const { return view_.numel(); }
  void* data() const { return view_.data; }
  template <typename T> T* ptr() const { return view_.ptr<T>(); }
  double at(std::initializer_list<std::int64_t> idx) const { return view_.at(idx); }
  void set(std::initializer_list<std::int64_t> idx, double v) const { view_.set(idx, v); }
  double flat(std::int64_t i) const { return view_.flat(i); }

  Tensor slice_leading(std::int64_t begin, std::int64_t end) const;
  Tensor slice_trailing(std::int64_t begin, std::int64_t end) const;

 private:
  std::shared_ptr<std::byte> storage_;
  TensorView view_;
};

template <typename T>
Tensor Tensor::from(const Shape& s, std::span<const T> values) {
  Tensor t(dtype_of<T>(), s);
  if (static_cast<std::int64_t>(values.size()) != t.numel())
    throw std::invalid_argument("Tensor::from: " + std::to_string(values.size()) + " values for shape " +
                                to_string(s));
  T* p = t.ptr<T>();
  for (T v : values) *p++ = v;
  return t;
}

// Bytes of `numel` elements of dtype `t`; throws std::overflow_error past 2^62 bytes.
std::size_t byte_size(std::int64_t numel, DType t);
// Bytes of a tensor of shape `s` (no dyn dimension), every product checked (numel, strides,
// bytes): what allocations and untrusted shapes go through. Throws std::overflow_error naming
// the shape.
std::size_t checked_bytes(const Shape& s, DType t);

// Copies src into dst element by element (any strides, same shape). Equal dtypes copy exactly;
// different dtypes convert through double (integers beyond 2^53 lose precision). Allocates
// nothing: programs use it to stage strided feeds.
void copy(const TensorView& src, const TensorView& dst);

// 64-byte aligned allocation released with aligned_free; used by tensors and program arenas.
void* aligned_alloc64(std::size_t bytes);
void aligned_free(void* p);

}  // namespace gg
