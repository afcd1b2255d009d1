// Batch normalisation. x is viewed as (A, C, B) around its channel axis (NCHW images and
// {batch, features} rows: axis 1; {features, batch} columns: axis 0), and every statistic is per
// channel over the M = A B values of that channel:
//
//   training:   mu = mean(x),  var = mean((x - mu)^2)  (biased),  r = 1 / sqrt(var + eps)
//               running_mean <- (1 - m) running_mean + m mu
//               running_var  <- (1 - m) running_var  + m var M / (M - 1)   (unbiased, as PyTorch)
//   evaluation: mu = running_mean,  r = 1 / sqrt(running_var + eps)
//   y = gamma (x - mu) r + beta
//
// Output 1 is s {3, C}: mu, r, and t = 1 in training (0 in evaluation). The VJP is built from
// graph ops and reads s, so that the kernel's statistics are not recomputed; with xh = (x - mu) r
// and gh = g gamma (means over the channel's M values):
//   dgamma = sum(g xh),  dbeta = sum(g),  dx = r (gh - t (mean(gh) + xh mean(gh xh)))
// (t = 0: in evaluation mu and r are constants). A gradient arriving at s itself (from
// differentiating that VJP again) adds t (g_mu - g_r r^3 (x - mu)) / M to dx, the derivatives of
// mu and r with respect to x: second derivatives work.
#include "kernels.hpp"
#include "op_list.hpp"

#include <cmath>
#include <stdexcept>

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// Batch normalisation of x over every axis but `axis`, the channels (1 for NCHW images and
// {batch, features} rows, 0 for {features, batch} columns). In training programs it uses the
// batch's mean and biased variance per channel and moves the states running_mean and
// running_var towards them by `momentum` (the variance unbiased, as PyTorch); in evaluation
// programs it uses the running statistics. gamma, beta, running_mean and running_var are {C}.
// Output 0 is gamma (x - mean) / sqrt(var + eps) + beta; output 1, {3, C}, holds the mean and
// 1 / sqrt(var + eps) it used and 1 in training (0 in evaluation), for the gradient.
Value batch_norm(Value x, Value gamma, Value beta, Value running_mean, Value running_var, int axis = 1,
                 double momentum = 0.1, double eps = 1e-5);
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

struct NormAttrs {
  int axis = 1;
  double momentum = 0.1, eps = 1e-5;
  template <typename F> void visit(F&& f) { f("axis", axis), f("momentum", momentum), f("eps", eps); }
};

Outputs infer(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  const Shape& x = operand(g, n, 0).shape;
  const NormAttrs& a = n.attrs.as<NormAttrs>();
  if (x.rank < 2) fail(g, n, "the input must have rank 2 or more (a batch and channels)");
  if (a.axis < 0 || a.axis >= x.rank) fail(g, n, "the channel axis " + std::to_string(a.axis) + " is not an axis of the input");
  const std::int64_t c = x[a.axis];
  if (c == dyn) fail(g, n, "the channel axis must be static");
  int open = 0;
  for (int d = 0; d < x.rank; ++d) open += x[d] == dyn;
  if (open > 1) fail(g, n, "at most one dimension (the batch) may be open");
  const char* names[] = {"gamma", "beta", "running_mean", "running_var"};
  for (int i = 1; i <= 4; ++i) {
    require_same_dtype(g, n, 0, i);
    if (operand(g, n, i).shape != Shape{c})
      fail(g, n, std::string(names[i - 1]) + " must be {" + std::to_string(c) + "}, one value per channel");
  }
  for (int i = 3; i <= 4; ++i)
    if (g.node(n.inputs[static_cast<std::size_t>(i)].node).op != &state_op)
      fail(g, n, std::string(names[i - 1]) + " must be a state (the op updates it in training)");
  if (!(a.eps > 0)) fail(g, n, "eps must be positive");
  if (!(a.momentum >= 0 && a.momentum <= 1)) fail(g, n, "momentum must be in [0, 1]");
  return Outputs(Port{t, x}, Port{t, Shape{3, c}});
}

// The (A, C, B) view of x.
struct Around {
  std::int64_t a, c, b;
};
Around around(const Shape& x, int axis) {
  Around v{1, x[axis], 1};
  for (int d = 0; d < axis; ++d) v.a *= x[d];
  for (int d = axis + 1; d < x.rank; ++d) v.b *= x[d];
  return v;
}

// sum over (a, b) of f(x[a, c, b]) for one channel, rows of B summed in T (vectorised) and
// added in double.
template <typename T, typename F>
double channel_sum(const T* x, const Around& v, std::int64_t c, F f) {
  double total = 0;
  for (std::int64_t a = 0; a < v.a; ++a) {
    const T* row = x + (a * v.c + c) * v.b;
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (std::int64_t b = 0; b < v.b; ++b) acc += f(row[b]);
    total += static_cast<double>(acc);
  }
  return total;
}

template <typename T>
void fwd(const KernelArgs& k) {
  const NormAttrs& at = k.attrs<NormAttrs>();
  const Around v = around(k.in[0].shape, at.axis);
  const std::int64_t m = v.a * v.b;
  if (k.training && m < 2)
    throw std::invalid_argument("batch_norm: training needs more than one value per channel, got " + std::to_string(m) +
                                " (a batch of one example without spatial dimensions)");
  const T* x = data<T>(k.in[0]);
  const T* gamma = data<T>(k.in[1]);
  const T* beta = data<T>(k.in[2]);
  T* rmean = data<T>(k.in[3]);
  T* rvar = data<T>(k.in[4]);
  T* y = data<T>(k.out[0]);
  T* s = data<T>(k.out[1]);
  // One channel per item: with B = 1 ({batch, features} rows) each item reads a strided column,
  // which is fine at the sizes dense layers have.
  parallel_for(v.c, k.threads, 3 * m, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t c = lo; c < hi; ++c) {
      double mu, r;
      if (k.training && m > 0) {
        mu = channel_sum(x, v, c, [](T e) { return e; }) / static_cast<double>(m);
        const T mt = static_cast<T>(mu);
        // Two passes: the variance from the centred values, not E[x^2] - mu^2 (no cancellation).
        const double var = channel_sum(x, v, c, [mt](T e) { return (e - mt) * (e - mt); }) / static_cast<double>(m);
        r = 1.0 / std::sqrt(var + at.eps);
        rmean[c] = static_cast<T>((1.0 - at.momentum) * static_cast<double>(rmean[c]) + at.momentum * mu);
        rvar[c] = static_cast<T>((1.0 - at.momentum) * static_cast<double>(rvar[c]) +
                                 at.momentum * var * static_cast<double>(m) / static_cast<double>(m - 1));
      } else {
        mu = static_cast<double>(rmean[c]);
        r = 1.0 / std::sqrt(static_cast<double>(rvar[c]) + at.eps);
      }
      s[c] = static_cast<T>(mu);
      s[v.c + c] = static_cast<T>(r);
      s[2 * v.c + c] = k.training ? T(1) : T(0);
      // y = (x - mu) r gamma + beta, the order the VJP's xh = (x - mu) r assumes.
      const T mt = static_cast<T>(mu), rt = static_cast<T>(r), gt = gamma[c], bt = beta[c];
      for (std::int64_t a = 0; a < v.a; ++a) {
        const T* row = x + (a * v.c + c) * v.b;
        T* out = y + (a * v.c + c) * v.b;
#pragma omp simd
        for (std::int64_t b = 0; b < v.b; ++b) out[b] = (row[b] - mt) * rt * gt + bt;
      }
    }
  });
}

// The shape a per-channel {C} value broadcasts as against x: {C, 1, ..., 1} (right-aligned).
Shape per_channel(const Shape& x, int axis) {
  Shape s;
  s.rank = x.rank - axis;
  s.dims[0] = x[axis];
  for (int d = 1; d < s.rank; ++d) s.dims[d] = 1;
  return s;
}

// mean over each channel's M values of v (x's shape), as the per-channel shape: the sum over
// the other axes times 1 / M, where M's open part is the batch, resolved when the program is
// planned.
Value channel_mean(Value v, const Shape& x, int axis) {
  double count = 1;
  int batch_power = 0;
  for (int d = 0; d < x.rank; ++d) {
    if (d == axis) continue;
    if (x[d] == dyn)
      batch_power = -1;
    else
      count *= static_cast<double>(x[d]);
  }
  return scale_batch(sum_to(v, per_channel(x, axis)), 1.0 / count, batch_power);
}

// 1 / M as a factor on a value of x's shape.
Value per_count(Value v, const Shape& x, int axis) {
  double count = 1;
  int batch_power = 0;
  for (int d = 0; d < x.rank; ++d) {
    if (d == axis) continue;
    if (x[d] == dyn)
      batch_power = -1;
    else
      count *= static_cast<double>(x[d]);
  }
  return scale_batch(v, 1.0 / count, batch_power);
}

std::vector<Value> vjp(const VjpArgs& v) {
  const NormAttrs& a = v.attrs<NormAttrs>();
  const Value x = v.in(0), gamma = v.in(1), s = v.out[1];
  const Shape xs = x.shape(), cs = per_channel(xs, a.axis);
  const Shape flat{xs[a.axis]};
  auto row = [&](Value t, std::int64_t i) { return reshape(slice(t, 0, i, i + 1), cs); };
  const Value mu = row(s, 0), r = row(s, 1), t = row(s, 2);
  const Value centred = x - mu;
  std::vector<Value> out(5);
  Value dx;
  if (v.dy().valid()) {
    const Value g = v.dy();
    const Value xh = centred * r;
    const Value gh = g * reshape(gamma, cs);
    if (v.wanted[0]) dx = r * (gh - t * (channel_mean(gh, xs, a.axis) + xh * channel_mean(gh * xh, xs, a.axis)));
    if (v.wanted[1]) out[1] = reshape(sum_to(g * xh, cs), flat);
    if (v.wanted[2]) out[2] = reshape(sum_to(g, cs), flat);
  }
  if (v.grad[1].valid() && v.wanted[0]) {
    const Value gmu = row(v.grad[1], 0), gr = row(v.grad[1], 1);
    const Value via_stats = t * per_count(gmu - gr * (r * r * r) * centred, xs, a.axis);
    dx = dx.valid() ? dx + via_stats : via_stats;
  }
  out[0] = dx;
  return out;
}

}  // namespace

GG_OP(batch_norm_op) = {.name = "batch_norm", .arity = 5, .outputs = 2, .diff_inputs = 0b00111, .writes = 0b11000,
                        .kernels = {.f32 = fwd<float>, .f64 = fwd<double>}, .kernel_key = 0, .infer = infer, .vjp = vjp};

}  // namespace detail

Value batch_norm(Value x, Value gamma, Value beta, Value running_mean, Value running_var, int axis, double momentum,
                 double eps) {
  return detail::make(detail::batch_norm_op, {x, gamma, beta, running_mean, running_var},
                      Attrs(detail::NormAttrs{axis, momentum, eps}));
}

}  // namespace gg
