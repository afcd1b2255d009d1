// Optimizers as graph nodes: gg::sgd and gg::adam append one update node per parameter, to be
// fetched with the loss. An update writes its parameter and its optimizer state in place (declared
// to the compiler as writes of those operands, so it runs after every other reader of them); its
// output is the parameter itself. The state (velocity, Adam moments, step counter) lives in state
// nodes named "<param>/<what>", saved and restored with the parameters.
//   sgd:      p -= lr (g + wd p)
//   momentum: v = mu v + (g + wd p);  p -= lr v                       (PyTorch's convention)
//   nesterov: d = g + wd p;  v = mu v + d;  p -= lr (d + mu v)          (PyTorch's nesterov=True)
//   adam:     g += l2 p (coupled L2, if any);  t += 1;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//             p -= lr wd p  (decoupled, AdamW);  p -= lr m^ / (sqrt(v^) + eps),
//             m^ = m / (1 - b1^t),  v^ = v / (1 - b2^t)   (t starts at 1; eps outside the root)
// Optimizer state that decays below the smallest normal float is flushed to zero: such a value
// moves a parameter by less than lr * 1e-38, and denormal arithmetic is ~20x slower (a quarter
// of MNIST's border pixels never light up, so their velocities decay into that range).
#include "kernels.hpp"

#include <cmath>
#include <limits>

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
struct SgdOptions {
  double lr = 0.01;
  double momentum = 0.0;      // 0: plain SGD, p -= lr g
  double weight_decay = 0.0;  // L2, added to the gradient
  bool nesterov = false;      // with momentum: p -= lr (g + mu v), PyTorch's nesterov=True
};
// One update node per parameter (state "<param>/velocity" with momentum).
std::vector<Value> sgd(const std::vector<Value>& params, const std::vector<Value>& grads, const SgdOptions& opts);

struct AdamOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;  // decoupled (AdamW): p -= lr wd p
  double l2 = 0.0;            // coupled (Adam's L2, PyTorch Adam's weight_decay): g += l2 p
};
// One update node per parameter (states "<param>/adam_m", "/adam_v", "/adam_t").
std::vector<Value> adam(const std::vector<Value>& params, const std::vector<Value>& grads, const AdamOptions& opts);
#endif  // GG_PUBLIC_API

namespace detail {
namespace {


struct AdamAttrs {
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0, l2 = 0;
  template <typename F> void visit(F&& f) {
    f("lr", lr), f("beta1", beta1), f("beta2", beta2), f("eps", eps), f("weight_decay", weight_decay), f("l2", l2);
  }
};

// update(param, grad, state...): the state has the parameter's shape, except Adam's step counter.
Outputs infer(const Graph& g, const Node& n) {
  const Node& p = g.node(n.inputs[0].node);
  if (!(p.op->flags & kTrainable)) fail(g, n, "the first operand must be a parameter");
  const Port& pp = p.out();
  require_same_dtype(g, n, 0, 1);
  for (std::size_t i = 1; i < n.inputs.size(); ++i) {
    const Node& in = g.node(n.inputs[i].node);
    const bool step_counter = n.inputs.size() == 5 && i == 4;
    if (!step_counter && in.out().shape != pp.shape) fail(g, n, "operand '" + in.name + "' must have the parameter's shape");
    if (i >= 2 && (in.op->storage != Storage::persistent || (in.op->flags & kTrainable)))
      fail(g, n, "optimizer state '" + in.name + "' must be a state node");
    if (i >= 2) require_same_dtype(g, n, 0, static_cast<int>(i));
  }
  return pp;
}

template <typename T>
inline T flush_denormal(T x) {
  return std::fabs(x) < std::numeric_limits<T>::min() ? T(0) : x;
}

template <typename T>
void sgd_fwd(const KernelArgs& k) {
  T* p = data<T>(k.in[0]);
  const T* g = data<T>(k.in[1]);
  const SgdAttrs& a = k.attrs<SgdAttrs>();
  const T lr = static_cast<T>(a.lr), wd = static_cast<T>(a.weight_decay);
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
  const SgdAttrs& a = k.attrs<SgdAttrs>();
  const T lr = static_cast<T>(a.lr), mu = static_cast<T>(a.momentum), wd = static_cast<T>(a.weight_decay);
  parallel_for(k.in[0].numel(), k.threads, 1, [&](std::int64_t lo, std::int64_t hi) {
    if (!a.nesterov) {
      for (std::int64_t i = lo; i < hi; ++i) {
        v[i] = flush_denormal(mu * v[i] + (g[i] + wd * p[i]));
        p[i] -= lr * v[i];
      }
    } else {
      for (std::int64_t i = lo; i < hi; ++i) {
        const T d = g[i] + wd * p[i];
        v[i] = flush_denormal(mu * v[i] + d);
        p[i] -= lr * (d + mu * v[i]);
      }
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
  const AdamAttrs& a = k.attrs<AdamAttrs>();
  t[0] += T(1);
  const double step = static_cast<double>(t[0]);
  const T b1 = static_cast<T>(a.beta1), b2 = static_cast<T>(a.beta2), eps = static_cast<T>(a.eps);
  const T c1 = static_cast<T>(1.0 / (1.0 - std::pow(a.beta1, step)));
  const T c2 = static_cast<T>(1.0 / (1.0 - std::pow(a.beta2, step)));
  const T lr = static_cast<T>(a.lr), decay = static_cast<T>(1.0 - a.lr * a.weight_decay), l2 = static_cast<T>(a.l2);
  parallel_for(k.in[0].numel(), k.threads, 4, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t i = lo; i < hi; ++i) {
      const T gi = l2 == T(0) ? g[i] : g[i] + l2 * p[i];
      m[i] = flush_denormal(b1 * m[i] + (T(1) - b1) * gi);
      v[i] = flush_denormal(b2 * v[i] + (T(1) - b2) * gi * gi);
      p[i] = p[i] * decay - lr * (m[i] * c1) / (std::sqrt(v[i] * c2) + eps);
    }
  });
}

}  // namespace

GG_OP(sgd_update_op) = {.name = "sgd_update", .arity = 2, .flags = kInternal | kNonDifferentiable, .writes = 0b1, .alias = 0,
                        .kernels = {.f32 = sgd_fwd<float>, .f64 = sgd_fwd<double>}, .infer = infer};
GG_OP(momentum_update_op) = {.name = "momentum_update", .arity = 3, .flags = kInternal | kNonDifferentiable,
                             .writes = 0b101, .alias = 0,
                             .kernels = {.f32 = momentum_fwd<float>, .f64 = momentum_fwd<double>}, .infer = infer};
GG_OP(adam_update_op) = {.name = "adam_update", .arity = 5, .flags = kInternal | kNonDifferentiable, .writes = 0b11101,
                         .alias = 0, .kernels = {.f32 = adam_fwd<float>, .f64 = adam_fwd<double>}, .infer = infer};

namespace {
void check_pairs(const char* who, const std::vector<Value>& params, const std::vector<Value>& grads) {
  if (params.size() != grads.size())
    throw GraphError(std::string(who) + ": " + std::to_string(params.size()) + " parameters but " +
                     std::to_string(grads.size()) + " gradients");
  for (std::size_t i = 0; i < params.size(); ++i)
    if (!params[i].valid() || !(params[i].node().op->flags & kTrainable))
      throw GraphError(std::string(who) + ": '" + (params[i].valid() ? params[i].name() : "?") + "' is not a parameter");
}
}  // namespace

}  // namespace detail

std::vector<Value> sgd(const std::vector<Value>& params, const std::vector<Value>& grads, const SgdOptions& opts) {
  detail::check_pairs("sgd", params, grads);
  std::vector<Value> ups;
  const Attrs a(detail::SgdAttrs{opts.lr, opts.momentum, opts.weight_decay, opts.nesterov});
  for (std::size_t i = 0; i < params.size(); ++i) {
    Graph& g = *params[i].graph;
    const Value p = params[i];
    if (opts.momentum == 0.0) {
      ups.push_back(detail::make(detail::sgd_update_op, {p, grads[i]}, a, p.name() + "/sgd"));
    } else {
      Value v = g.state(p.name() + "/velocity", p.shape(), zeros(), p.dtype());
      ups.push_back(detail::make(detail::momentum_update_op, {p, grads[i], v}, a, p.name() + "/momentum"));
    }
  }
  return ups;
}

std::vector<Value> adam(const std::vector<Value>& params, const std::vector<Value>& grads, const AdamOptions& opts) {
  detail::check_pairs("adam", params, grads);
  std::vector<Value> ups;
  const Attrs a(detail::AdamAttrs{opts.lr, opts.beta1, opts.beta2, opts.eps, opts.weight_decay, opts.l2});
  for (std::size_t i = 0; i < params.size(); ++i) {
    Graph& g = *params[i].graph;
    const Value p = params[i];
    Value m = g.state(p.name() + "/adam_m", p.shape(), zeros(), p.dtype());
    Value v = g.state(p.name() + "/adam_v", p.shape(), zeros(), p.dtype());
    Value t = g.state(p.name() + "/adam_t", Shape{}, zeros(), p.dtype());
    ups.push_back(detail::make(detail::adam_update_op, {p, grads[i], m, v, t}, a, p.name() + "/adam"));
  }
  return ups;
}

}  // namespace gg
