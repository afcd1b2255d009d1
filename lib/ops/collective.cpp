// Collectives: values summed across the processes (ranks) of a data-parallel run, as graph nodes
// between backward and update. The values go into one flat buffer (one message per step, not one
// per gradient: at MNIST sizes a message's latency costs more than its bytes), the buffer is
// summed across ranks in place, and the summed values are views of it (no copy back).
//   pack(f, v):     f[offset : offset + n] = v
//   all_reduce(f):  f = sum over ranks of f (in place); for a mean, f[last] = m, the shard's batch
//                   size, and f = (sum over ranks of m f) / (sum of m), f[last] = that sum B
// So all_reduce_mean turns values that are means over each rank's shard (a mean loss, its
// gradients, an accuracy) into means over the global batch, (1/B) sum_r m_r v_r: the same math
// as one process fed the whole batch, shards of unequal sizes included. Only the order of the
// summation differs. Both ops write their operand in place (declared: they run after every other
// reader of it) and their output is that operand's memory.
//
// The communication itself is the Communicator's (lib/train/distributed.cpp over MPI, or a test's
// fake): this file has no MPI in it, and a program without collectives never calls one. How the
// weighted mean is done is the communicator's too: by default weigh, sum, scale; MPI ranks on one
// machine do it in one pass over each other's memory.
#include "collective.hpp"

#include <algorithm>
#include <cstdint>
#include <stdexcept>

namespace gg {

#ifdef GG_PUBLIC_API  // collected into <gradgraph/ops.hpp> by lib/ops/gen_ops.py
// The processes of a data-parallel run as the all-reduce op sees them. It must outlive every
// program built with it.
struct Communicator {
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Sums `count` float32 or float64 elements at `data` over all ranks, in place. Every rank must
  // get the same bits, every run (a fixed summation order).
  virtual void sum(void* data, std::int64_t count, DType dtype) = 0;
  // The weighted mean over ranks, in place: `data` holds this rank's values x_r and, last, its
  // weight m_r (count - 1 values, then m_r). Afterwards data[i] = (sum_r m_r x_r[i]) / B for the
  // values and data[count - 1] = B = sum_r m_r, the same bits on every rank. The default weighs,
  // sum()s and scales (three passes over the bytes); a communicator that reads the other ranks'
  // memory does it in one.
  virtual void mean(void* data, std::int64_t count, DType dtype);
};
// The values (float, one dtype) summed over the ranks of `comm`, packed into one message.
std::vector<Value> all_reduce_sum(const std::vector<Value>& values, Communicator& comm);
// Values that are means over this rank's shard of the batch (the open dimension the program is
// fed) as means over the global batch: sum_r m_r v_r / sum_r m_r, in one message.
std::vector<Value> all_reduce_mean(const std::vector<Value>& values, Communicator& comm);
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

template <typename T>
void rank_local_kernel(const KernelArgs& k) {
  if (k.ranks && k.training)
    throw std::runtime_error("batch_norm's second derivatives (the means in the VJP of its gradient, and the "
                             "derivatives of its statistics) use this rank's shard alone, not the global batch: a "
                             "data-parallel program (CompileOptions::ranks) cannot compute them as one process would");
  const T* x = data<T>(k.in[0]);
  std::copy(x, x + k.in[0].numel(), data<T>(k.out[0]));
}

Outputs infer_rank_local(const Graph& g, const Node& n) {
  require_float(g, n, 0);
  return operand(g, n, 0);
}

std::vector<Value> rank_local_vjp(const VjpArgs& v) { return {v.dy()}; }

struct AllReduceAttrs {
  std::int64_t communicator = 0;  // its address: not printed (it differs every run, and a
                                  // checkpoint holds the graph's text) nor settable by name
  bool mean = false;
  template <typename F> void visit(F&& f) { f("mean", mean); }
};

Outputs infer_pack(const Graph& g, const Node& n) {
  const Port& f = operand(g, n, 0);
  const Port& v = operand(g, n, 1);
  require_float(g, n, 0);
  require_same_dtype(g, n, 0, 1);
  const PackAttrs& a = n.attrs.as<PackAttrs>();
  if (f.shape.rank != 1 || f.shape.has_dyn() || v.shape.has_dyn() || a.offset < 0 || a.offset + v.shape.numel() > f.shape[0])
    fail(g, n, "the value does not fit in the buffer at offset " + std::to_string(a.offset));
  return f;
}

Outputs infer_all_reduce(const Graph& g, const Node& n) {
  const Port& f = operand(g, n, 0);
  require_float(g, n, 0);
  if (f.shape.rank != 1 || f.shape.has_dyn()) fail(g, n, "the buffer must be one static axis");
  return f;
}

template <typename T>
void pack_kernel(const KernelArgs& k) {
  T* f = data<T>(k.in[0]) + k.attrs<PackAttrs>().offset;
  const T* v = data<T>(k.in[1]);
  std::copy(v, v + k.in[1].numel(), f);
}

template <typename T>
void all_reduce_kernel(const KernelArgs& k) {
  const AllReduceAttrs& a = k.attrs<AllReduceAttrs>();
  Communicator& comm = *reinterpret_cast<Communicator*>(static_cast<std::intptr_t>(a.communicator));
  T* f = data<T>(k.in[0]);
  const std::int64_t n = k.in[0].numel();
  if (!a.mean) return comm.sum(f, n, k.in[0].dtype);
  f[n - 1] = k.batch > 0 ? static_cast<T>(k.batch) : T(1);
  comm.mean(f, n, k.in[0].dtype);
}

template <typename T>
void weigh_sum_scale(Communicator& comm, T* f, std::int64_t n) {
  const T m = f[n - 1];
  for (std::int64_t i = 0; i + 1 < n; ++i) f[i] *= m;
  comm.sum(f, n, dtype_of<T>());
  // Every rank scales the same sums by the same factor: the results agree bit for bit. (A product
  // with the reciprocal, not a division: a division per element took as long as the sum itself.)
  const T inverse = T(1) / f[n - 1];
  for (std::int64_t i = 0; i + 1 < n; ++i) f[i] *= inverse;
}

}  // namespace

}  // namespace detail

void Communicator::mean(void* data, std::int64_t count, DType dtype) {
  if (count < 1) throw std::invalid_argument("Communicator::mean: no weight");
  if (dtype == DType::f32)
    detail::weigh_sum_scale(*this, static_cast<float*>(data), count);
  else if (dtype == DType::f64)
    detail::weigh_sum_scale(*this, static_cast<double*>(data), count);
  else
    throw std::invalid_argument("Communicator::mean: float32 or float64 only");
}

namespace detail {

GG_OP(pack_op) = {.name = "pack", .arity = 2, .flags = kInternal | kNonDifferentiable, .writes = 0b01, .alias = 0,
                  .kernels = {.f32 = pack_kernel<float>, .f64 = pack_kernel<double>}, .infer = infer_pack};
GG_OP(rank_local_op) = {.name = "rank_local", .arity = 1, .flags = kInternal, .diff_inputs = 0b1,
                        .kernels = {.f32 = rank_local_kernel<float>, .f64 = rank_local_kernel<double>},
                        .infer = infer_rank_local, .vjp = rank_local_vjp};
GG_OP(all_reduce_op) = {.name = "all_reduce", .arity = 1, .flags = kInternal | kNonDifferentiable, .writes = 0b1, .alias = 0,
                        .kernels = {.f32 = all_reduce_kernel<float>, .f64 = all_reduce_kernel<double>},
                        .infer = infer_all_reduce};

namespace {

std::vector<Value> all_reduce(const std::vector<Value>& values, Communicator& comm, bool mean) {
  if (values.empty()) throw GraphError("all_reduce: no values");
  Graph& g = graph_of(values[0]);
  const DType dt = values[0].dtype();
  std::int64_t total = 0;
  for (const Value& v : values) {
    if (&graph_of(v) != &g) throw GraphError("all_reduce: values of two graphs");
    if (v.dtype() != dt || !is_float(dt))
      throw GraphError("all_reduce: the values must share one float dtype ('" + v.name() + "' is " + dtype_name(v.dtype()) + ")");
    if (v.shape().has_dyn()) throw GraphError("all_reduce: '" + v.name() + "' has an open dimension");
    total += v.shape().numel();
  }
  // One more element for a mean: the shard's batch size, summed into the global one.
  Value f = g.fill(Shape{total + (mean ? 1 : 0)}, 0.0, dt);
  const auto address = static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(&comm));
  std::int64_t at = 0;
  for (const Value& v : values) {
    f = make(pack_op, {f, v}, Attrs(PackAttrs{at}), "pack#" + std::to_string(g.size()));
    at += v.shape().numel();
  }
  const AllReduceAttrs ra{address, mean};
  const Value r = make(all_reduce_op, {f}, Attrs(ra), "all_reduce#" + std::to_string(g.size()));
  std::vector<Value> out;
  at = 0;
  for (const Value& v : values) {
    const std::int64_t n = v.shape().numel();
    out.push_back(reshape(slice(r, 0, at, at + n), v.shape()));
    at += n;
  }
  return out;
}

}  // namespace
}  // namespace detail

namespace detail {
Value rank_local(Value x) { return make(rank_local_op, {x}); }
}  // namespace detail

std::vector<Value> all_reduce_sum(const std::vector<Value>& values, Communicator& comm) {
  return detail::all_reduce(values, comm, false);
}

std::vector<Value> all_reduce_mean(const std::vector<Value>& values, Communicator& comm) {
  return detail::all_reduce(values, comm, true);
}

}  // namespace gg
