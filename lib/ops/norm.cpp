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
// Output 1 is s {3, C}: mu, r, and t = 1 in training (0 in evaluation). The VJP reads s, so that
// no statistic is recomputed; with xh = (x - mu) r and gh = g gamma (means over the channel's M
// values):
//   dgamma = sum(g xh),  dbeta = sum(g),  dx = r (gh - t (mean(gh) + xh mean(gh xh)))
// (t = 0: in evaluation mu and r are constants), computed by the internal op batch_norm_grad in
// two passes per channel; its own VJP is graph ops (below), so second derivatives work. A
// gradient arriving at s itself (from differentiating that VJP again) adds
// t (g_mu - g_r r^3 (x - mu)) / M to dx, the derivatives of mu and r with respect to x.
//
// Data parallelism (KernelArgs::ranks, from CompileOptions::ranks): each rank holds a shard of
// M_q values per channel, and the statistics are the global batch's, M = sum_q M_q. The forward
// sums across ranks the per-channel sums of x (with the counts M_q), then those of (x - mu)^2: sums
// of C + 1 and C values. The gradient g a rank receives is that of its shard's mean loss, M / M_q
// times the global loss's (the gradients' all-reduce weighs each rank by M_q / M afterwards), so
// its dx is M / M_q times the global one:
//   dx = r (gh - t (S_g + xh S_gxh) / M_q),  S_g = sum_q (M_q / M) sum(gh)_q  (and S_gxh alike),
// one weighted mean (Communicator::mean) of 2 C + 1 values; dgamma and dbeta stay the shard's
// sums, weighed by the gradients' all-reduce like every other gradient. Second derivatives (the
// VJP of batch_norm_grad, and a gradient arriving at s) would need sums across ranks in graph
// ops: their per-rank values pass through rank_local, which refuses to run with ranks.
#include "collective.hpp"
#include "kernels.hpp"
#include "onnx.hpp"
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

// Per channel: the statistics' sums in double, then the count, for a sum across ranks.
std::size_t stats_workspace(const Node& n, const Shape* in, int) {
  return static_cast<std::size_t>(2 * in[0][n.attrs.as<NormAttrs>().axis] + 1) * sizeof(double);
}

template <typename T>
void fwd(const KernelArgs& k) {
  const NormAttrs& at = k.attrs<NormAttrs>();
  const Around v = around(k.in[0].shape, at.axis);
  const std::int64_t m = v.a * v.b;
  auto too_few = [](double values) {
    return std::invalid_argument("batch_norm: training needs more than one value per channel, got " +
                                 std::to_string(static_cast<std::int64_t>(values)) +
                                 " (a batch of one example without spatial dimensions)");
  };
  if (k.training && !k.ranks && m < 2) throw too_few(static_cast<double>(m));  // with ranks: the global count, below
  const T* x = data<T>(k.in[0]);
  const T* gamma = data<T>(k.in[1]);
  const T* beta = data<T>(k.in[2]);
  T* rmean = data<T>(k.in[3]);
  T* rvar = data<T>(k.in[4]);
  T* y = data<T>(k.out[0]);
  T* s = data<T>(k.out[1]);
  // Per channel: its sum, its centred squares' sum (the variance from the centred values, not
  // E[x^2] - mu^2: no cancellation), then y from mu and r, which also moves the running
  // statistics in training (`count` values, the global batch's with ranks).
  auto sum_of = [&](std::int64_t c) { return channel_sum(x, v, c, [](T e) { return e; }); };
  auto squares_of = [&](std::int64_t c, double mu) {
    const T mt = static_cast<T>(mu);
    return channel_sum(x, v, c, [mt](T e) { return (e - mt) * (e - mt); });
  };
  auto normalise = [&](std::int64_t c, double mu, double var, double count) {
    double r;
    if (k.training) {
      r = 1.0 / std::sqrt(var + at.eps);
      rmean[c] = static_cast<T>((1.0 - at.momentum) * static_cast<double>(rmean[c]) + at.momentum * mu);
      rvar[c] = static_cast<T>((1.0 - at.momentum) * static_cast<double>(rvar[c]) + at.momentum * var * count / (count - 1));
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
  };
  if (k.training && k.ranks) {
    // Each pass over all channels, the sums across ranks between them.
    double* sums = static_cast<double*>(k.workspace);  // C sums, then the count
    double* means = sums + v.c + 1;                     // C means
    parallel_for(v.c, k.threads, m, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t c = lo; c < hi; ++c) sums[c] = sum_of(c);
    });
    sums[v.c] = static_cast<double>(m);
    k.ranks->sum(sums, v.c + 1, DType::f64);
    const double count = sums[v.c];
    if (count < 2) throw too_few(count);  // the same on every rank
    for (std::int64_t c = 0; c < v.c; ++c) means[c] = sums[c] / count;
    parallel_for(v.c, k.threads, m, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t c = lo; c < hi; ++c) sums[c] = squares_of(c, means[c]);
    });
    k.ranks->sum(sums, v.c, DType::f64);
    parallel_for(v.c, k.threads, m, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t c = lo; c < hi; ++c) normalise(c, means[c], sums[c] / count, count);
    });
    return;
  }
  // One process: the three passes over a channel one after another, while it is in cache. One
  // channel per item: with B = 1 ({batch, features} rows) each item reads a strided column,
  // which is fine at the sizes dense layers have.
  const double count = static_cast<double>(m);
  parallel_for(v.c, k.threads, 3 * m, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t c = lo; c < hi; ++c) {
      if (!k.training) {
        normalise(c, 0, 0, count);
        continue;
      }
      const double mu = sum_of(c) / count;
      normalise(c, mu, squares_of(c, mu) / count, count);
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

// v / M as a factor on any value, where M's open part is the batch, resolved when the program
// is planned.
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

// The mean over each channel's M values of v (x's shape), as the per-channel shape.
Value channel_mean(Value v, const Shape& x, int axis) { return per_count(sum_to(v, per_channel(x, axis)), x, axis); }

// ---- batch_norm_grad (internal) --------------------------------------------------------------------

// batch_norm_grad(g, x, gamma, s) = (dx, d), d {2, C} = (dgamma, dbeta): batch_norm's VJP for the
// gradient g arriving at y, in two passes over each channel (the sums, then dx) where the formula
// as graph ops takes about fourteen.
Outputs infer_grad(const Graph& g, const Node& n) {
  const DType t = require_float(g, n, 0);
  const Shape& gs = operand(g, n, 0).shape;
  const NormAttrs& a = n.attrs.as<NormAttrs>();
  for (int i = 1; i < 4; ++i) require_same_dtype(g, n, 0, i);
  if (operand(g, n, 1).shape != gs) fail(g, n, "the gradient and the input must have one shape");
  if (a.axis < 0 || a.axis >= gs.rank) fail(g, n, "the channel axis is not an axis of the input");
  const std::int64_t c = gs[a.axis];
  if (operand(g, n, 2).shape != Shape{c} || operand(g, n, 3).shape != Shape{3, c})
    fail(g, n, "gamma must be {C} and the statistics {3, C}");
  return Outputs(Port{t, gs}, Port{t, Shape{2, c}});
}

std::size_t grad_workspace(const Node& n, const Shape* in, int) {
  return static_cast<std::size_t>(2 * in[1][n.attrs.as<NormAttrs>().axis] + 1) * sizeof(double);
}

template <typename T>
void grad_fwd(const KernelArgs& k) {
  const NormAttrs& at = k.attrs<NormAttrs>();
  const Around v = around(k.in[1].shape, at.axis);
  const std::int64_t m = v.a * v.b;
  const T* g = data<T>(k.in[0]);
  const T* x = data<T>(k.in[1]);
  const T* gamma = data<T>(k.in[2]);
  const T* s = data<T>(k.in[3]);
  T* dx = data<T>(k.out[0]);
  T* d = data<T>(k.out[1]);
  // Channel c's sums of g and g xh (d's dgamma and dbeta), then its dx from the means `mg` and
  // `mgx` (over the channel's M values, or those of the global batch times M / M_q).
  auto sums_of = [&](std::int64_t c, double& sg, double& sgx) {
    const T mu = s[c], r = s[v.c + c];
    sg = 0, sgx = 0;
    for (std::int64_t a = 0; a < v.a; ++a) {
      const T* gr = g + (a * v.c + c) * v.b;
      const T* xr = x + (a * v.c + c) * v.b;
      T acc = 0, accx = 0;
#pragma omp simd reduction(+ : acc, accx)
      for (std::int64_t b = 0; b < v.b; ++b) acc += gr[b], accx += gr[b] * ((xr[b] - mu) * r);
      sg += static_cast<double>(acc), sgx += static_cast<double>(accx);
    }
    d[c] = static_cast<T>(sgx);
    d[v.c + c] = static_cast<T>(sg);
  };
  auto dx_of = [&](std::int64_t c, T mg, T mgx) {
    const T mu = s[c], r = s[v.c + c], t = s[2 * v.c + c], gm = gamma[c];
    // dx = r gamma (g - t (<g> + xh <g xh>)), the graph-op formula's terms
    for (std::int64_t a = 0; a < v.a; ++a) {
      const T* gr = g + (a * v.c + c) * v.b;
      const T* xr = x + (a * v.c + c) * v.b;
      T* out = dx + (a * v.c + c) * v.b;
#pragma omp simd
      for (std::int64_t b = 0; b < v.b; ++b) out[b] = r * gm * (gr[b] - t * (mg + ((xr[b] - mu) * r) * mgx));
    }
  };
  // Batch statistics over ranks: the sums' weighted mean across them between the two passes.
  if (k.ranks && v.c > 0 && s[2 * v.c] != T(0)) {
    double* sums = static_cast<double*>(k.workspace);  // C sums of g, C of g xh, the weight M_q
    parallel_for(v.c, k.threads, 2 * m, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t c = lo; c < hi; ++c) sums_of(c, sums[c], sums[v.c + c]);
    });
    sums[2 * v.c] = static_cast<double>(m);
    k.ranks->mean(sums, 2 * v.c + 1, DType::f64);
    if (m == 0) return;
    const double mq = static_cast<double>(m);
    parallel_for(v.c, k.threads, m, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t c = lo; c < hi; ++c) dx_of(c, static_cast<T>(sums[c] / mq), static_cast<T>(sums[v.c + c] / mq));
    });
    return;
  }
  // One pass per channel while its values are in cache.
  parallel_for(v.c, k.threads, 3 * m, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t c = lo; c < hi; ++c) {
      double sg, sgx;
      sums_of(c, sg, sgx);
      if (m > 0) dx_of(c, static_cast<T>(sg / static_cast<double>(m)), static_cast<T>(sgx / static_cast<double>(m)));
    }
  });
}

// Column i of the {3, 1} identity, to place a per-channel row into a {3, C} cotangent.
Value unit_column(Graph& g, DType t, int i) {
  std::vector<double> e(3, 0.0);
  e[static_cast<std::size_t>(i)] = 1.0;
  return g.constant(Tensor::copy_of(Tensor::from<double>(Shape{3, 1}, e), t));
}

// The VJP of batch_norm_grad, for second derivatives. With xh = (x - mu) r, P = g - t (<g> +
// xh <g xh>) (so dx = r gamma P), and cotangents v (for dx), a and b (for dgamma, dbeta), the
// partial derivatives (mu, r, t held as the operands they are):
//   dg     = r gamma (v - t (<v> + xh <v xh>)) + a xh + b          (the map g -> P is symmetric)
//   d xh   = -t r gamma (v <g xh> + g <v xh>) + a g,   dx = r d xh
//   dgamma = sum(v r P),  dmu = -sum(dx),  dr = sum(v gamma P) + sum(d xh (x - mu)),
//   dt     = -sum(v r gamma (<g> + xh <g xh>))
std::vector<Value> grad_vjp(const VjpArgs& v) {
  const NormAttrs& at = v.attrs<NormAttrs>();
  const Value g = v.in(0), x = v.in(1), gamma = v.in(2), s = v.in(3);
  const Shape xs = x.shape(), cs = per_channel(xs, at.axis);
  const Shape flat{xs[at.axis]};
  auto row = [&](Value m, std::int64_t i) { return reshape(slice(m, 0, i, i + 1), cs); };
  auto total = [&](Value e) { return sum_to(e, cs); };
  // The shard's means, where the global batch's would need sums across ranks: refused there.
  auto mean = [&](Value e) { return rank_local(channel_mean(e, xs, at.axis)); };
  const Value mu = row(s, 0), r = row(s, 1), t = row(s, 2), gm = reshape(gamma, cs);
  const Value centred = x - mu, xh = centred * r;
  const Value mg = mean(g), mgx = mean(g * xh);
  Value dg, dxh, dgamma, dr, dt;
  auto add = [](Value& acc, Value e) { acc = acc.valid() ? acc + e : e; };
  if (v.grad[0].valid()) {
    const Value w = v.grad[0];
    const Value p = g - t * (mg + xh * mgx);
    add(dg, r * gm * (w - t * (mean(w) + xh * mean(w * xh))));
    add(dxh, -(t * r * gm * (w * mgx + g * mean(w * xh))));
    add(dgamma, total(w * r * p));
    add(dr, total(w * gm * p));
    add(dt, -total(w * r * gm * (mg + xh * mgx)));
  }
  if (v.grad[1].valid()) {
    const Value a = row(v.grad[1], 0), b = row(v.grad[1], 1);
    add(dg, a * xh + b);
    add(dxh, a * g);
  }
  std::vector<Value> out(4);
  if (v.wanted[0]) out[0] = dg;
  if (dxh.valid()) {
    const Value dx = r * dxh;
    if (v.wanted[1]) out[1] = dx;
    add(dr, total(dxh * centred));
    if (v.wanted[3]) {
      Value ds = reshape(-total(dx), Shape{1, xs[at.axis]}) * unit_column(v.g, x.dtype(), 0);
      ds = ds + reshape(dr, Shape{1, xs[at.axis]}) * unit_column(v.g, x.dtype(), 1);
      if (dt.valid()) ds = ds + reshape(dt, Shape{1, xs[at.axis]}) * unit_column(v.g, x.dtype(), 2);
      out[3] = ds;
    }
  } else if (v.wanted[3] && dt.valid()) {
    out[3] = reshape(dt, Shape{1, xs[at.axis]}) * unit_column(v.g, x.dtype(), 2);
  }
  if (v.wanted[2] && dgamma.valid()) out[2] = reshape(dgamma, flat);
  return out;
}

Value batch_norm_grad(Value g, Value x, Value gamma, Value s, const NormAttrs& a);

std::vector<Value> vjp(const VjpArgs& v) {
  const NormAttrs& a = v.attrs<NormAttrs>();
  const Value x = v.in(0), gamma = v.in(1), s = v.out[1];
  const Shape xs = x.shape(), cs = per_channel(xs, a.axis);
  const Shape flat{xs[a.axis]};
  auto row = [&](Value t, std::int64_t i) { return reshape(slice(t, 0, i, i + 1), cs); };
  std::vector<Value> out(5);
  Value dx;
  if (v.dy().valid()) {
    const Value both = batch_norm_grad(v.dy(), x, gamma, s, a);
    const Value d{both.graph, both.id, 1};
    if (v.wanted[0]) dx = both;
    if (v.wanted[1]) out[1] = reshape(slice(d, 0, 0, 1), flat);
    if (v.wanted[2]) out[2] = reshape(slice(d, 0, 1, 2), flat);
  }
  if (v.grad[1].valid() && v.wanted[0]) {
    // mu and r are functions of x in training (t = 1): d mu / dx = 1 / M, d r / dx = -r^3 (x - mu) / M.
    const Value mu = row(s, 0), r = row(s, 1), t = row(s, 2);
    // Per this rank's M, where the global batch's would need sums across ranks: refused there
    // (the per-channel cotangents marked, the cheapest place).
    const Value gmu = rank_local(row(v.grad[1], 0)), gr = rank_local(row(v.grad[1], 1));
    const Value via_stats = t * per_count(gmu - gr * (r * r * r) * (x - mu), xs, a.axis);
    dx = dx.valid() ? dx + via_stats : via_stats;
  }
  out[0] = dx;
  return out;
}

// ONNX: BatchNormalization in inference form, y = scale (x - mean) / sqrt(var + epsilon) + B,
// our evaluation formula, with the running statistics as initializers (what the program holds
// when exported). ONNX puts the channels on axis 1: the columns layout's channels on axis 0 are
// there in the swapped orientation (lib/ops/onnx.hpp). Output 1, the statistics for the
// gradient, has no equivalent and is refused if read.
void batch_norm_onnx(OnnxWriter& w) {
  const NormAttrs& a = w.node().attrs.as<NormAttrs>();
  if (w.needed(1)) w.refuse("is read for its statistics (output 1), which have no ONNX equivalent");
  const bool swapped = a.axis == 0 && w.in_shape(0).rank == 2;
  if (a.axis != 1 && !swapped)
    w.refuse("normalises along axis " + std::to_string(a.axis) + "; ONNX's BatchNormalization takes the channels on axis 1");
  w.add("BatchNormalization", {w.in(0, swapped), w.in(1), w.in(2), w.in(3), w.in(4)}, {w.out(0, swapped)},
        {OnnxAttr::real("epsilon", static_cast<float>(a.eps))});
}

}  // namespace

GG_OP(batch_norm_op) = {.name = "batch_norm", .arity = 5, .outputs = 2, .diff_inputs = 0b00111, .writes = 0b11000,
                        .kernels = {.f32 = fwd<float>, .f64 = fwd<double>}, .kernel_key = 0, .infer = infer,
                        .workspace = stats_workspace, .vjp = vjp,
                        .onnx = batch_norm_onnx};
GG_OP(batch_norm_grad_op) = {.name = "batch_norm_grad", .arity = 4, .outputs = 2, .flags = kInternal, .diff_inputs = 0b1111,
                             .kernels = {.f32 = grad_fwd<float>, .f64 = grad_fwd<double>}, .infer = infer_grad,
                             .workspace = grad_workspace, .vjp = grad_vjp};

namespace {
Value batch_norm_grad(Value g, Value x, Value gamma, Value s, const NormAttrs& a) {
  return make(batch_norm_grad_op, {g, x, gamma, s}, Attrs(a));
}
}  // namespace

}  // namespace detail

Value batch_norm(Value x, Value gamma, Value beta, Value running_mean, Value running_var, int axis, double momentum,
                 double eps) {
  return detail::make(detail::batch_norm_op, {x, gamma, beta, running_mean, running_var},
                      Attrs(detail::NormAttrs{axis, momentum, eps}));
}

}  // namespace gg
