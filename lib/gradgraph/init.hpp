// Parameter initialisers applied to storage (row-major order, one generator draw per element,
// computed in double and rounded to the tensor's dtype).
#pragma once

#include <gradgraph/graph.hpp>
#include <gradgraph/random.hpp>

namespace gg {

// Fills `out` (contiguous) according to `init`; fans default from the shape (see Init).
void initialize(const Init& init, const TensorView& out, Generator& rng);

}  // namespace gg
