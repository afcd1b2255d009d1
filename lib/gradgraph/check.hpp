// Finite-difference gradient checking for any graph: compares gradients() with central
// differences, element by element, for parameters and inputs.
#pragma once

#include <gradgraph/program.hpp>

#include <string>
#include <vector>

namespace gg {

struct GradCheckOptions {
  double step = 1e-6;      // h, scaled by max(1, |x|)
  // Relative error is |analytic - numeric| / max(|analytic|, |numeric|, floor): the floor keeps
  // round-off in near-zero components (about eps |loss| / h) from counting as error.
  double floor = 1e-3;
  std::uint64_t seed = 1;  // for the parameters' initialisers
  bool training = true;    // check the training program's gradients, or the evaluation program's
};

struct GradCheckResult {
  double max_rel_error = 0;
  std::string worst;       // "W1[37]: analytic 0.12 numeric 0.13"
  std::int64_t checked = 0;
};

// loss must be a scalar; wrt may hold parameters and inputs (inputs take their values from
// feeds). The graph gains the gradient nodes.
GradCheckResult check_gradients(Graph& g, Value loss, const std::vector<Value>& wrt,
                                const std::vector<Program::Feed>& feeds = {}, const GradCheckOptions& opts = {});

}  // namespace gg
