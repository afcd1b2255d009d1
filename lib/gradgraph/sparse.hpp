// Sparse matrices: a rank-2 matrix stored by its nonzeros, for inputs whose values are mostly
// zero (MNIST's images are 19% nonzero). A program given one next to a dense feed may compute
// the products that read that input from the nonzeros only (Program::Feed::sparse,
// CompileOptions::sparse_density); everything else keeps reading the dense values.
//
// Compressed along one axis, `major`: the nonzeros are grouped by their index along it, in
// increasing order, and within a group sorted by their index along the other axis (`minor`).
// major 0 is CSR (a group per row), major 1 CSC (a group per column). For a data set the
// groups are its examples: X {batch, features} as CSR, the notebook's X {features, batch} as CSC,
// the same arrays either way.
#pragma once

#include <gradgraph/tensor.hpp>

#include <cstdint>
#include <vector>

namespace gg {

// The same nonzeros grouped the other way, block by block: block b covers the groups
// [b kCrossSpan, (b + 1) kCrossSpan) and holds their nonzeros grouped by minor index, each with
// its group's offset in the block. With it, a product that would scatter into its result (the
// weight gradient dW1 = dZ1 X^T of a data set grouped by example) gathers instead: per block,
// the block's columns of the dense factor stay in cache and each result row is added once. Built
// by add_cross_blocks for a large matrix that stays constant (a full data set).
constexpr std::int64_t kCrossSpan = 1024;
struct SparseBlocks {
  std::int64_t blocks = 0;
  std::vector<std::int64_t> ptr;       // block b, minor index i: [ptr[b (len + 1) + i], ptr[b (len + 1) + i + 1])
  std::vector<std::uint16_t> offset;   // the nonzero's group, minus its block's first
  std::vector<float> values_f32;       // its value (the one of the dtype)
  std::vector<double> values_f64;
  template <typename T> const T* values() const;
};
template <> inline const float* SparseBlocks::values<float>() const { return values_f32.data(); }
template <> inline const double* SparseBlocks::values<double>() const { return values_f64.data(); }

struct SparseMatrix {
  DType dtype = DType::f32;             // f32 or f64
  Shape shape;                          // rank 2
  int major = 0;                        // the axis the nonzeros are grouped by
  std::vector<std::int64_t> ptr{0};     // group g's nonzeros are [ptr[g], ptr[g + 1])
  std::vector<std::int32_t> index;      // each nonzero's index along the other axis
  std::vector<float> values_f32;        // each nonzero's value (the one of the dtype)
  std::vector<double> values_f64;       // (index and values may hold more than nnz(): spare room)
  SparseBlocks cross;                   // optional (add_cross_blocks); to_sparse drops it

  // Whether `cross` holds this matrix's nonzeros (built after the last refill).
  bool has_cross() const;

  std::int64_t groups() const { return shape.rank == 2 ? shape[major] : 0; }
  std::int64_t nnz() const { return ptr.empty() ? 0 : ptr.back(); }
  // Nonzeros / elements (0 for an empty matrix).
  double density() const;
  template <typename T> const T* values() const;
};
template <> inline const float* SparseMatrix::values<float>() const { return values_f32.data(); }
template <> inline const double* SparseMatrix::values<double>() const { return values_f64.data(); }

// The nonzeros of a rank-2 float view (any strides), grouped along `major`. The second form
// reuses `out`'s storage: refilled with no more nonzeros than it held, it allocates nothing
// (the batch iterator calls it every step). `threads` split the groups (OpenMP).
SparseMatrix to_sparse(const TensorView& dense, int major, int threads = 1);
void to_sparse(const TensorView& dense, int major, SparseMatrix& out, int threads = 1);
// Builds s.cross from s's nonzeros (once, for a constant matrix: it allocates). `threads`
// split the blocks.
void add_cross_blocks(SparseMatrix& s, int threads = 1);
// Back to a dense, contiguous tensor (for tests and inspection).
Tensor to_dense(const SparseMatrix& s);

}  // namespace gg
