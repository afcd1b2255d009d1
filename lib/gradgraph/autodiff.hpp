// Reverse mode as a graph transformation (like TF1's tf.gradients or ggml's backward graph):
// gradients() appends to the graph the nodes that compute d y / d x for each x, and returns
// them. They are ordinary nodes, so a program can fetch them, fuse them, and differentiate
// them again.
#pragma once

#include <gradgraph/graph.hpp>

#include <vector>

namespace gg {

// y must be a scalar (the loss). A value used several times gets the sum of its gradients;
// broadcasts are summed back to each operand's shape; nothing is built for nodes that no
// requested gradient depends on. An x that y does not depend on gets zeros.
std::vector<Value> gradients(Value y, const std::vector<Value>& xs);
// With an explicit seed (d loss / d y), which must have y's shape: a vector-Jacobian product.
std::vector<Value> gradients(Value y, const std::vector<Value>& xs, Value seed);

}  // namespace gg
