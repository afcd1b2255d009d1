// The user-facing op constructors. Each adds one node to the graph its operands belong to.
// Definitions, kernels and gradients live in lib/ops/<family>.cpp; formulas in docs/ops.md.
#pragma once

#include <gradgraph/graph.hpp>

#include <vector>

namespace gg {

// C = op(A) op(B), op(X) = X or X^T. Rank-2 operands; transposes are BLIS strides, never copies.
Value matmul(Value a, Value b, bool trans_a = false, bool trans_b = false);

// Elementwise with NumPy broadcasting.
Value add(Value a, Value b);
Value sub(Value a, Value b);
Value mul(Value a, Value b);
Value div(Value a, Value b);
Value neg(Value a);
Value scale(Value a, double s);        // s * a
Value add_scalar(Value a, double s);   // a + s
Value pow(Value a, double p);          // a^p (a > 0 unless p is a whole number)
Value exp(Value a);
Value log(Value a);
Value sqrt(Value a);
Value relu(Value a);
Value sigmoid(Value a);
Value tanh(Value a);

inline Value operator+(Value a, Value b) { return add(a, b); }
inline Value operator-(Value a, Value b) { return sub(a, b); }
inline Value operator*(Value a, Value b) { return mul(a, b); }
inline Value operator/(Value a, Value b) { return div(a, b); }
inline Value operator-(Value a) { return neg(a); }
inline Value operator*(Value a, double s) { return scale(a, s); }
inline Value operator*(double s, Value a) { return scale(a, s); }
inline Value operator/(Value a, double s) { return scale(a, 1.0 / s); }
inline Value operator+(Value a, double s) { return add_scalar(a, s); }
inline Value operator+(double s, Value a) { return add_scalar(a, s); }
inline Value operator-(Value a, double s) { return add_scalar(a, -s); }
inline Value operator-(double s, Value a) { return add_scalar(neg(a), s); }

// Along one axis (negative counts from the end); max-subtracted for stability.
Value softmax(Value a, int axis);
Value log_softmax(Value a, int axis);

// Reductions: over every axis (scalar result) or one axis.
Value sum(Value a);
Value sum(Value a, int axis, bool keepdims = false);
Value mean(Value a);
Value mean(Value a, int axis, bool keepdims = false);
// Sums broadcast dimensions away so that the result has `shape` (the adjoint of broadcast_to).
Value sum_to(Value a, const Shape& shape);
Value broadcast_to(Value a, const Shape& shape);

Value reshape(Value a, const Shape& shape);
Value transpose(Value a);                           // rank 2: swap the two axes
Value transpose(Value a, std::vector<int> perm);

// Mean over examples of -sum_k Y_k log softmax(Z)_k, classes along `axis` (0 for the notebook's
// features x examples layout, 1 or -1 for batch-first). Stable: uses log-softmax.
Value softmax_cross_entropy(Value logits, Value targets, int axis = 0);

// Non-differentiable, for metrics. Results are in the graph's float dtype (indices as floats).
Value argmax(Value a, int axis, bool keepdims = false);
Value equal(Value a, Value b);
Value greater(Value a, double threshold);

}  // namespace gg
