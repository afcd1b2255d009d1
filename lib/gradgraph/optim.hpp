// Optimizers as graph nodes: each returns one update node per parameter, to be fetched with
// the loss. Their state (velocity, Adam moments, step counter) lives in state nodes named
// "<param>/<what>", saved and restored with the parameters.
#pragma once

#include <gradgraph/graph.hpp>

#include <vector>

namespace gg {

struct SgdOptions {
  double lr = 0.01;
  double momentum = 0.0;      // 0: plain SGD, p -= lr g
  double weight_decay = 0.0;  // L2, added to the gradient
};
std::vector<Value> sgd(const std::vector<Value>& params, const std::vector<Value>& grads, const SgdOptions& opts);

struct AdamOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;  // decoupled (AdamW)
};
std::vector<Value> adam(const std::vector<Value>& params, const std::vector<Value>& grads, const AdamOptions& opts);

}  // namespace gg
