// Sparse matrices: building the grouped nonzeros from a dense view, and back.
#include <gradgraph/sparse.hpp>

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

namespace gg {

double SparseMatrix::density() const {
  if (shape.rank != 2) return 0;
  const double n = static_cast<double>(shape[0]) * static_cast<double>(shape[1]);
  return n > 0 ? static_cast<double>(nnz()) / n : 0;
}

namespace {

// f(g) for every group, split over `threads` (no parallel region for one: libgomp allocates a
// team of one afresh every time).
template <typename F>
void over_groups(std::int64_t groups, int threads, F&& f) {
  if (threads == 1) {
    for (std::int64_t g = 0; g < groups; ++g) f(g);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t g = 0; g < groups; ++g) f(g);
}

template <typename T>
void fill(const TensorView& d, int major, SparseMatrix& s, std::vector<T>& values, int threads) {
  const std::int64_t groups = d.shape[major], len = d.shape[1 - major];
  const std::int64_t gs = d.strides[major], ms = d.strides[1 - major];
  const T* x = static_cast<const T*>(d.data);
  // Count first (the arrays grow to the exact size once, then are refilled in place), then fill
  // each group at its offset: both passes split over groups, so any thread count gives the same.
  s.ptr.resize(static_cast<std::size_t>(groups + 1));
  std::int64_t* ptr = s.ptr.data();
  ptr[0] = 0;
  const int t = groups * len >= (1 << 16) ? std::max(1, threads) : 1;
  auto count = [&](std::int64_t g) {
    std::int64_t c = 0;
    for (std::int64_t i = 0; i < len; ++i) c += x[g * gs + i * ms] != T(0);
    ptr[g + 1] = c;
  };
  over_groups(groups, t, count);
  for (std::int64_t g = 0; g < groups; ++g) ptr[g + 1] += ptr[g];
  s.index.resize(static_cast<std::size_t>(ptr[groups]));
  values.resize(static_cast<std::size_t>(ptr[groups]));
  std::int32_t* index = s.index.data();
  T* value = values.data();
  auto copy = [&](std::int64_t g) {
    std::int64_t at = ptr[g];
    for (std::int64_t i = 0; i < len; ++i) {
      const T v = x[g * gs + i * ms];
      if (v == T(0)) continue;  // -0.0 too: it adds nothing to a product
      index[at] = static_cast<std::int32_t>(i);
      value[at++] = v;
    }
  };
  over_groups(groups, t, copy);
}

}  // namespace

void to_sparse(const TensorView& dense, int major, SparseMatrix& out, int threads) {
  if (dense.shape.rank != 2) throw std::invalid_argument("to_sparse: the matrix must be rank 2, got " + to_string(dense.shape));
  if (!is_float(dense.dtype)) throw std::invalid_argument(std::string("to_sparse: the matrix must be float, got ") + dtype_name(dense.dtype));
  if (major != 0 && major != 1) throw std::invalid_argument("to_sparse: major must be 0 (rows) or 1 (columns), got " + std::to_string(major));
  if (dense.shape[1 - major] > std::numeric_limits<std::int32_t>::max())
    throw std::invalid_argument("to_sparse: " + to_string(dense.shape) + " has more than 2^31 - 1 entries per group");
  out.dtype = dense.dtype;
  out.shape = dense.shape;
  out.major = major;
  out.cross = {};
  if (dense.dtype == DType::f32) {
    out.values_f64.clear();
    fill<float>(dense, major, out, out.values_f32, threads);
  } else {
    out.values_f32.clear();
    fill<double>(dense, major, out, out.values_f64, threads);
  }
}

SparseMatrix to_sparse(const TensorView& dense, int major, int threads) {
  SparseMatrix s;
  to_sparse(dense, major, s, threads);
  return s;
}

bool SparseMatrix::has_cross() const {
  const std::int64_t g = groups(), len = shape.rank == 2 ? shape[1 - major] : 0;
  return g > 0 && cross.blocks == (g + kCrossSpan - 1) / kCrossSpan &&
         static_cast<std::int64_t>(cross.ptr.size()) == cross.blocks * (len + 1) && cross.ptr.back() == nnz();
}

namespace {

// A counting sort per block: count each minor index's nonzeros, then place them in group order
// (so within a minor index the offsets increase, like the groups of the original).
template <typename T>
void fill_cross(SparseMatrix& s, const T* values, std::vector<T>& out, int threads) {
  const std::int64_t g = s.groups(), len = s.shape[1 - s.major];
  SparseBlocks& c = s.cross;
  c.blocks = (g + kCrossSpan - 1) / kCrossSpan;
  c.ptr.assign(static_cast<std::size_t>(c.blocks * (len + 1)), 0);
  c.offset.resize(static_cast<std::size_t>(s.nnz()));
  out.resize(static_cast<std::size_t>(s.nnz()));
  const std::int64_t* ptr = s.ptr.data();
  const std::int32_t* index = s.index.data();
  over_groups(c.blocks, std::max(1, threads), [&](std::int64_t b) {
    const std::int64_t g0 = b * kCrossSpan, g1 = std::min(g, g0 + kCrossSpan);
    std::int64_t* bp = c.ptr.data() + b * (len + 1);
    for (std::int64_t q = ptr[g0]; q < ptr[g1]; ++q) ++bp[index[q] + 1];
    bp[0] = ptr[g0];
    for (std::int64_t i = 0; i < len; ++i) bp[i + 1] += bp[i];
    std::vector<std::int64_t> at(bp, bp + len);
    for (std::int64_t gr = g0; gr < g1; ++gr)
      for (std::int64_t q = ptr[gr]; q < ptr[gr + 1]; ++q) {
        const std::int64_t to = at[static_cast<std::size_t>(index[q])]++;
        c.offset[static_cast<std::size_t>(to)] = static_cast<std::uint16_t>(gr - g0);
        out[static_cast<std::size_t>(to)] = values[q];
      }
  });
}

}  // namespace

void add_cross_blocks(SparseMatrix& s, int threads) {
  static_assert(kCrossSpan <= 65536, "offsets are 16 bits");
  if (s.shape.rank != 2) throw std::invalid_argument("add_cross_blocks: the matrix must be rank 2, got " + to_string(s.shape));
  s.cross = {};
  if (s.dtype == DType::f32)
    fill_cross<float>(s, s.values_f32.data(), s.cross.values_f32, threads);
  else
    fill_cross<double>(s, s.values_f64.data(), s.cross.values_f64, threads);
}

namespace {
template <typename T>
void scatter(const SparseMatrix& s, const std::vector<T>& values, Tensor& t) {
  T* y = static_cast<T*>(t.data());
  const std::int64_t gs = s.major == 0 ? s.shape[1] : 1, ms = s.major == 0 ? 1 : s.shape[1];
  for (std::int64_t g = 0; g < s.groups(); ++g)
    for (std::int64_t p = s.ptr[static_cast<std::size_t>(g)]; p < s.ptr[static_cast<std::size_t>(g + 1)]; ++p)
      y[g * gs + s.index[static_cast<std::size_t>(p)] * ms] = values[static_cast<std::size_t>(p)];
}
}  // namespace

Tensor to_dense(const SparseMatrix& s) {
  Tensor t = Tensor::zeros(s.dtype, s.shape);
  if (s.dtype == DType::f32)
    scatter<float>(s, s.values_f32, t);
  else
    scatter<double>(s, s.values_f64, t);
  return t;
}

}  // namespace gg
