// Collectives: values summed across the processes (ranks) of a data-parallel run, as graph nodes
// between backward and update. The values go into one flat buffer (one message per step, not one
// per gradient: at MNIST sizes a message's latency costs more than its bytes), the buffer is
// summed across ranks in place, and the summed values are views of it (no copy back).
//   pack(f, v):     f[offset : offset + n] = w v,  w = 1 or, for a mean, the shard's batch size m
//   all_reduce(f):  f = sum over ranks of f (in place); for a mean, f[last] = m before the sum
//                   and f[:last] /= f[last] after it (the global batch size B = sum of m)
// So all_reduce_mean turns values that are means over each rank's shard (a mean loss, its
// gradients, an accuracy) into means over the global batch, (1/B) sum_r m_r v_r: the same math
// as one process fed the whole batch, shards of unequal sizes included. Only the order of the
// summation differs. Both ops write their operand in place (declared: they run after every other
// reader of it) and their output is that operand's memory.
//
// A communicator whose ranks can read each other's memory (MPI on one machine) offers staging
// memory: the packs then write there, and one pass of sum_staged weights, adds and scales into
// the buffer, so the values cross between cores once and the buffer is never copied.
//
// The communication itself is the Communicator's (lib/train/distributed.cpp over MPI, or a test's
// fake): this file has no MPI in it, and a program without collectives never calls one.
#include "collective.hpp"

#include <cstdint>

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
  // Optional, for ranks that can read each other's memory (one machine): where this rank puts
  // the values of its next sum, so that sharing them costs no copy; nullptr (the default) when
  // there is no such place and the values go through sum(). The same memory for every call until
  // the sum_staged() that sums them: one staged sum at a time.
  virtual void* staging(std::int64_t /*count*/, DType /*dtype*/) { return nullptr; }
  // With staging(): the sum over ranks r of their staged values x_r, in the same fixed order, into
  // `out`. With `weighted`, the last staged element is each rank's weight m_r and the others are
  // averaged: out[i] = (sum_r m_r x_r[i]) / (sum_r m_r), out[count - 1] = sum_r m_r (one pass
  // over the bytes instead of a weighting pass before and a scaling pass after).
  virtual void sum_staged(void* /*out*/, std::int64_t /*count*/, DType /*dtype*/, bool /*weighted*/) {
    throw std::logic_error("Communicator::sum_staged without staging()");
  }
};
// The values (float, one dtype) summed over the ranks of `comm`, packed into one message.
std::vector<Value> all_reduce_sum(const std::vector<Value>& values, Communicator& comm);
// Values that are means over this rank's shard of the batch (the open dimension the program is
// fed) as means over the global batch: sum_r m_r v_r / sum_r m_r, in one message.
std::vector<Value> all_reduce_mean(const std::vector<Value>& values, Communicator& comm);
#endif  // GG_PUBLIC_API

namespace detail {
namespace {

struct AllReduceAttrs {
  std::int64_t communicator = 0;
  bool mean = false;
  template <typename F> void visit(F&& f) { f("communicator", communicator), f("mean", mean); }
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

// With a communicator that stages, the values go straight to its shared memory and the buffer is
// left alone: the all_reduce writes the sums into it.
template <typename T>
void pack_kernel(const KernelArgs& k) {
  T w;
  T* f = pack_destination<T>(k, k.attrs<PackAttrs>(), w);
  const T* v = data<T>(k.in[1]);
  // A loop, not std::copy: glibc's memmove took 70 us for these 200 KB into the shared window
  // on this machine's AMD cores, the loop 13.
  for (std::int64_t i = 0, n = k.in[1].numel(); i < n; ++i) f[i] = w * v[i];
}

template <typename T>
void all_reduce_kernel(const KernelArgs& k) {
  const AllReduceAttrs& a = k.attrs<AllReduceAttrs>();
  Communicator& comm = communicator_at(a.communicator);
  T* f = data<T>(k.in[0]);
  const std::int64_t n = k.in[0].numel();
  const DType dt = k.in[0].dtype;
  T* staged = static_cast<T*>(comm.staging(n, dt));
  const T m = k.batch > 0 ? static_cast<T>(k.batch) : T(1);
  if (staged) {
    if (a.mean) staged[n - 1] = m;
    comm.sum_staged(f, n, dt, a.mean);
    return;
  }
  if (a.mean) f[n - 1] = m;
  comm.sum(f, n, dt);
  if (!a.mean) return;
  // Every rank scales the same sums by the same factor: the results agree bit for bit. (A product
  // with the reciprocal, not a division: a division per element took as long as the sum itself.)
  const T inverse = T(1) / f[n - 1];
  for (std::int64_t i = 0; i + 1 < n; ++i) f[i] *= inverse;
}

}  // namespace

GG_OP(pack_op) = {.name = "pack", .arity = 2, .flags = kInternal | kNonDifferentiable, .writes = 0b01, .alias = 0,
                  .kernels = {.f32 = pack_kernel<float>, .f64 = pack_kernel<double>}, .infer = infer_pack};
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
    f = make(pack_op, {f, v}, Attrs(PackAttrs{at, mean, address}), "pack#" + std::to_string(g.size()));
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

std::vector<Value> all_reduce_sum(const std::vector<Value>& values, Communicator& comm) {
  return detail::all_reduce(values, comm, false);
}

std::vector<Value> all_reduce_mean(const std::vector<Value>& values, Communicator& comm) {
  return detail::all_reduce(values, comm, true);
}

}  // namespace gg
