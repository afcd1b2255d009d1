// Execute, every run: check the feeds, bind them (staging a strided feed only for readers that
// need contiguous memory), re-derive the views of feeds, then call the planned steps in order.
// Nothing here allocates.
#include "program_impl.hpp"

#include <omp.h>

namespace gg::detail {

namespace {

const Program::Feed* feed_for(const Graph& g, int graph_id, const Program::Feed* feeds, std::size_t n) {
  for (std::size_t k = 0; k < n; ++k)
    if (feeds[k].input.graph == &g && feeds[k].input.id == graph_id) return &feeds[k];
  return nullptr;
}

// A step with operands that are inputs: its sparse kernel when one of those inputs was fed with
// nonzeros at most `sparse_density` dense (then `a` names them), else its dense kernel. The
// choice is recorded for Program::product_choices.
KernelFn pick_kernel(Step& s, KernelArgs& a, const Compiled& c, const Graph& g, const Program::Feed* feeds, std::size_t nf,
                     double sparse_density) {
  s.last_input = 0;
  s.last_density = -1;
  s.last_sparse = false;
  for (int q = 0; q < s.n_sparse; ++q) {
    const Program::Feed* f = feed_for(g, c.ir[static_cast<std::size_t>(s.sparse_input[q])].graph_id, feeds, nf);
    if (!f || !f->sparse) continue;
    s.last_input = q;
    s.last_density = f->sparse->density();
    s.last_sparse = sparse_density > 0 && s.last_density <= sparse_density;
    if (s.last_sparse) {
      a.sparse = f->sparse;
      a.sparse_operand = s.sparse_operand[q];
      return s.sparse_fn;
    }
  }
  return s.fn;
}

}  // namespace

std::int64_t batch_of(const Compiled& c, const Graph& g, const Program::Feed* feeds, std::size_t nf) {
  // Every feed is checked, not only those the program reads: feeds are matched by node id, and an
  // id of another graph (or of a non-input) would bind memory of the wrong size or meaning.
  for (std::size_t k = 0; k < nf; ++k) {
    const Value& in = feeds[k].input;
    if (!in.valid()) throw std::invalid_argument("run: a feed has no input (a default-constructed Value)");
    if (in.graph != &g)
      throw std::invalid_argument("run: the feed for input '" + in.name() + "' comes from another graph");
    if (in.id >= g.size()) throw std::invalid_argument("run: a feed names node " + std::to_string(in.id) + ", not in this graph");
    const Node& n = in.node();
    if (n.op->storage != Storage::external)
      throw std::invalid_argument("run: '" + n.name + "' is a " + n.op_name() + ", not an input: only inputs are fed");
    for (std::size_t j = 0; j < k; ++j)
      if (feeds[j].input == in) throw std::invalid_argument("run: input '" + n.name + "' is fed twice");
    if (feeds[k].value.shape.has_dyn())
      throw std::invalid_argument("run: input '" + n.name + "' fed a view of shape " + to_string(feeds[k].value.shape) +
                                  ", with an open (dyn) dimension");
    if (!feeds[k].value.data && feeds[k].value.shape.numel() > 0)
      throw std::invalid_argument("run: input '" + n.name + "' fed a null pointer");
  }
  std::int64_t batch = -1;
  for (int i : c.inputs) {
    const IrNode& x = c.ir[static_cast<std::size_t>(i)];
    const Port& want = x.node.out();
    const Program::Feed* f = feed_for(g, x.graph_id, feeds, nf);
    if (!f) throw std::invalid_argument("run: input '" + x.node.name + "' " + to_string(want.shape) + " was not fed");
    const Shape& got = f->value.shape;
    if (f->value.dtype != want.dtype)
      throw std::invalid_argument("run: input '" + x.node.name + "' is " + dtype_name(want.dtype) + ", fed " +
                                  dtype_name(f->value.dtype) + " data");
    if (!f->value.data && got.numel() > 0) throw std::invalid_argument("run: input '" + x.node.name + "' fed a null pointer");
    if (f->sparse && (f->sparse->dtype != f->value.dtype || f->sparse->shape != got))
      throw std::invalid_argument("run: input '" + x.node.name + "' is fed " + dtype_name(f->value.dtype) + " " + to_string(got) +
                                  " with nonzeros of a " + dtype_name(f->sparse->dtype) + " " + to_string(f->sparse->shape) +
                                  " matrix");
    bool ok = want.shape.rank == got.rank;
    for (int d = 0; ok && d < want.shape.rank; ++d) {
      if (want.shape[d] == dyn) {
        // An empty batch is refused, not run: a mean over no examples is 0/0, a NaN loss that
        // would pass for a result.
        if (got[d] == 0)
          throw std::invalid_argument("run: input '" + x.node.name + "' fed " + to_string(got) +
                                      ": an empty batch (its open dimension must be at least 1)");
        if (batch < 0) batch = got[d];
        ok = got[d] == batch;
      } else {
        ok = got[d] == want.shape[d];
      }
    }
    if (!ok)
      throw std::invalid_argument("run: input '" + x.node.name + "' expects shape " + to_string(want.shape) + ", fed " +
                                  to_string(got) + (batch >= 0 ? " (batch " + std::to_string(batch) + ")" : ""));
  }
  if (batch < 0 && c.has_dyn) {
    // No input of the program has an open dimension, yet some value does (the zero gradient of
    // an input the loss does not depend on): the batch size comes from that input's feed.
    for (std::size_t k = 0; k < nf && batch < 0; ++k) {
      const Value& in = feeds[k].input;
      if (!in.valid() || in.node().op->storage != Storage::external) continue;
      const Shape want = in.shape();
      const Shape& got = feeds[k].value.shape;
      for (int d = 0; d < want.rank && d < got.rank && batch < 0; ++d)
        if (want[d] == dyn) batch = got[d];
    }
    if (batch < 0) throw std::invalid_argument("run: the program has an open (dyn) dimension but no feed sets the batch size");
  }
  return batch < 0 ? 0 : batch;
}

void execute(Plan& p, const Compiled& c, const Graph& g, const Program::Feed* feeds, std::size_t nf, const RunSettings& run) {
  for (const Binding& b : p.bindings) {
    TensorView& v = p.slots[static_cast<std::size_t>(b.slot)];
    if (b.source < 0) {
      v = feed_for(g, c.ir[static_cast<std::size_t>(b.node)].graph_id, feeds, nf)->value;
    } else {
      const TensorView& src = p.slots[static_cast<std::size_t>(b.source)];
      const Layout in{src.shape, src.strides, 0};
      Layout out;
      const Node& n = c.ir[static_cast<std::size_t>(b.node)].node;
      if (!n.op->view) {
        out = in;
      } else if (!n.op->view(n, in, b.shape, out)) {
        throw std::logic_error("run: '" + n.name + "' cannot view its operand's layout");
      }
      v = TensorView(static_cast<std::byte*>(src.data) + out.offset * static_cast<std::int64_t>(dtype_size(src.dtype)), src.dtype,
                     out.shape, out.strides);
    }
    if (b.staging < 0) continue;
    if (v.is_contiguous()) {
      p.slots[static_cast<std::size_t>(b.staging)] = v;
    } else {
      copy(v, b.buffer);
      p.slots[static_cast<std::size_t>(b.staging)] = b.buffer;
    }
  }
  KernelArgs a;
  a.threads = run.threads;
  a.training = run.training;
  a.seed = run.seed;
  a.examples_before = run.examples_before;
  a.ranks = run.ranks;
  a.batch = p.batch;
  for (Step& s : p.steps) {
    for (int q = 0; q < s.n_out; ++q) a.out[q] = p.slots[static_cast<std::size_t>(s.out[q])];
    for (int j = 0; j < s.n_in; ++j) a.in[j] = p.slots[static_cast<std::size_t>(s.in[j])];
    a.n_in = s.n_in;
    a.n_out = s.n_out;
    a.node = s.node;
    a.workspace = s.ws_bytes ? p.arena + s.ws_offset : nullptr;
    a.workspace_bytes = s.ws_bytes;
    a.sparse = nullptr;
    a.sparse_operand = -1;
    const KernelFn fn = s.n_sparse ? pick_kernel(s, a, c, g, feeds, nf, run.sparse_density) : s.fn;
    if (!run.profiling) {
      fn(a);
      continue;
    }
    const double t0 = omp_get_wtime();
    fn(a);
    s.seconds += omp_get_wtime() - t0;
    ++s.calls;
  }
}

}  // namespace gg::detail
