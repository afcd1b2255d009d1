// Parameter updates: side effects on persistent program storage, one pass per parameter.
// They run after every other reader of the parameter (the program adds those ordering edges).
//   sgd:      p -= lr (g + wd p)
//   momentum: v = mu v + (g + wd p);  p -= lr v                       (PyTorch's convention)
//   adam:     t += 1;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//             p -= lr wd p  (decoupled, AdamW);  p -= lr m^ / (sqrt(v^) + eps),
//             m^ = m / (1 - b1^t),  v^ = v / (1 - b2^t)   (t starts at 1; eps outside the root)
// Optimizer state that decays below the smallest normal float is flushed to zero: such a value
// moves a parameter by less than lr * 1e-38, and denormal arithmetic is ~20x slower (a quarter
// of MNIST's border pixels never light up, so their velocities decay into that range).
#include "kernels.hpp"

#include <cmath>
#include <limits>

namespace gg {
namespace {

using namespace detail;

Shape infer(const Graph& g, const Node& n) {
  const Shape& p = g.node(n.inputs[0]).shape;
  if (g.node(n.inputs[0]).op != Op::Param) fail(g, n, "the first operand must be a parameter");
  for (std::size_t i = 1; i < n.inputs.size(); ++i) {
    const Node& in = g.node(n.inputs[i]);
    const bool step_counter = n.op == Op::AdamUpdate && i == 4;
    if (!step_counter && in.shape != p) fail(g, n, "operand '" + in.name + "' must have the parameter's shape");
    if (i >= 2 && in.op != Op::State) fail(g, n, "optimizer state '" + in.name + "' must be a state node");
  }
  return p;
}

template <typename T>
inline T flush_denormal(T x) {
  return std::fabs(x) < std::numeric_limits<T>::min() ? T(0) : x;
}

template <typename T>
void sgd_fwd(const KernelArgs& k) {
  T* p = data<T>(k.in[0]);
  const T* g = data<T>(k.in[1]);
  const T lr = static_cast<T>(k.attrs->lr), wd = static_cast<T>(k.attrs->weight_decay);
  parallel_for(k.in[0].numel(), k.threads, 1, [&](std::int64_t lo, std::int64_t hi) {
    if (wd == T(0))
      for (std::int64_t i = lo; i < hi; ++i) p[i] -= lr * g[i];
    else
      for (std::int64_t i = lo; i < hi; ++i) p[i] -= lr * (g[i] + wd * p[i]);
  });
}

template <typename T>
void momentum_fwd(const KernelArgs& k) {
  T* p = data<T>(k.in[0]);
  const T* g = data<T>(k.in[1]);
  T* v = data<T>(k.in[2]);
  const T lr = static_cast<T>(k.attrs->lr), mu = static_cast<T>(k.attrs->momentum),
          wd = static_cast<T>(k.attrs->weight_decay);
  parallel_for(k.in[0].numel(), k.threads, 1, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t i = lo; i < hi; ++i) {
      v[i] = flush_denormal(mu * v[i] + (g[i] + wd * p[i]));
      p[i] -= lr * v[i];
    }
  });
}

template <typename T>
void adam_fwd(const KernelArgs& k) {
  T* p = data<T>(k.in[0]);
  const T* g = data<T>(k.in[1]);
  T* m = data<T>(k.in[2]);
  T* v = data<T>(k.in[3]);
  T* t = data<T>(k.in[4]);
  const Attrs& a = *k.attrs;
  t[0] += T(1);
  const double step = static_cast<double>(t[0]);
  const T b1 = static_cast<T>(a.beta1), b2 = static_cast<T>(a.beta2), eps = static_cast<T>(a.eps);
  const T c1 = static_cast<T>(1.0 / (1.0 - std::pow(a.beta1, step)));
  const T c2 = static_cast<T>(1.0 / (1.0 - std::pow(a.beta2, step)));
  const T lr = static_cast<T>(a.lr), decay = static_cast<T>(1.0 - a.lr * a.weight_decay);
  parallel_for(k.in[0].numel(), k.threads, 4, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t i = lo; i < hi; ++i) {
      m[i] = flush_denormal(b1 * m[i] + (T(1) - b1) * g[i]);
      v[i] = flush_denormal(b2 * v[i] + (T(1) - b2) * g[i] * g[i]);
      p[i] = p[i] * decay - lr * (m[i] * c1) / (std::sqrt(v[i] * c2) + eps);
    }
  });
}

}  // namespace

namespace detail {
extern const OpDef kSgdUpdateDef = {"sgd_update", 2, kSideEffect | kNonDifferentiable, 0, 0, infer, sgd_fwd<float>,
                                    sgd_fwd<double>, nullptr};
extern const OpDef kMomentumUpdateDef = {"momentum_update", 3, kSideEffect | kNonDifferentiable, 0, 0, infer,
                                         momentum_fwd<float>, momentum_fwd<double>, nullptr};
extern const OpDef kAdamUpdateDef = {"adam_update", 5, kSideEffect | kNonDifferentiable, 0, 0, infer, adam_fwd<float>,
                                     adam_fwd<double>, nullptr};
}  // namespace detail

}  // namespace gg
