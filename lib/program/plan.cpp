// Plan, once per batch size: where every value of the program lives and which kernels run.
//
// Read only from what each op declares (lib/ops/op.hpp):
//   storage      persistent values are the parameter store's, constants their node's tensor,
//                inputs the caller's (bound by each run); everything else is planned
//   alias, view  the output is an operand's memory, through a layout function (reshape, slice)
//                or as it is (an update's output is its parameter); the operand's buffer then
//                lives as long as the alias is read
//   kStrided     the op reads strided operands; for one that does not, a value that may be
//                strided is copied to a contiguous staging buffer first (feeds: only when the fed
//                view is strided, checked by each run; other views: decided here)
//   inplace      output 0 may take over an operand's buffer when this op is its last reader and
//                the bytes and dtype agree
//   kOnce        the kernel runs here, once; its output is pinned
//   workspace    scratch bytes, live during the op's step only
//   sparse_kernels  where a sparse-capable operand is an input, the step also records the sparse
//                kernel (and reserves its workspace); each run picks one from the feed's density
// Buffers live from their producer to their last reader (or for the producer's step alone, an
// output nobody reads); fetched values and staging buffers of feeds are pinned (live for the
// whole run). Offsets come from plan_offsets.
#include "program_impl.hpp"

#include <algorithm>
#include <numeric>

namespace gg::detail {

Plan::~Plan() { aligned_free(arena); }

std::size_t plan_offsets(const std::vector<BufferRequest>& reqs, std::vector<std::size_t>& offsets) {
  const std::size_t n = reqs.size();
  offsets.assign(n, 0);
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  // Largest first; ties by earlier start, so the plan is deterministic.
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (reqs[a].bytes != reqs[b].bytes) return reqs[a].bytes > reqs[b].bytes;
    return reqs[a].first < reqs[b].first;
  });
  auto aligned = [](std::size_t b) { return (b + 63) / 64 * 64; };
  std::vector<std::size_t> placed;
  std::size_t total = 0;
  std::vector<std::pair<std::size_t, std::size_t>> busy;  // [begin, end) of live-overlapping placed buffers
  for (std::size_t idx : order) {
    const BufferRequest& r = reqs[idx];
    const std::size_t size = aligned(r.bytes);
    busy.clear();
    for (std::size_t p : placed) {
      const BufferRequest& q = reqs[p];
      if (q.first <= r.last && r.first <= q.last) busy.emplace_back(offsets[p], offsets[p] + aligned(q.bytes));
    }
    std::sort(busy.begin(), busy.end());
    std::size_t at = 0;
    for (const auto& [b, e] : busy) {
      if (at + size <= b) break;
      at = std::max(at, e);
    }
    offsets[idx] = at;
    total = std::max(total, at + size);
    placed.push_back(idx);
  }
  return total;
}

namespace {

enum class Kind : std::uint8_t { persistent, constant, external, arena };

struct SlotInfo {
  Kind kind = Kind::arena;
  DType dtype = DType::f32;
  Shape shape;                  // resolved for the batch size
  Layout layout;                // relative to the root's memory (unless bound at run time)
  bool bound_at_run = false;    // a feed, a view of one, or a feed's staging buffer
  int root = -1;                // the slot whose memory this is (arena: the buffer group)
  int last = -1;                // the last step reading it (at least its producer's); kForever when fetched
  bool needs_contiguous = false;
  int read = -1;                // the slot readers use: itself, or a staging copy
};

struct Group {
  int first = 0, last = 0;
  bool pinned = false;
  std::size_t bytes = 0;
};

void copy_kernel(const KernelArgs& k) { copy(k.in[0], k.out[0]); }

Layout contiguous_layout(const Shape& s) { return Layout{s, contiguous_strides(s), 0}; }

}  // namespace

std::unique_ptr<Plan> make_plan(const Compiled& c, const ParamStore& params, std::int64_t batch) {
  auto plan = std::make_unique<Plan>();
  Plan& p = *plan;
  p.batch = batch;
  const int m = static_cast<int>(c.ir.size());
  p.first_slot.resize(static_cast<std::size_t>(m));
  int nv = 0;
  for (int i = 0; i < m; ++i) p.first_slot[static_cast<std::size_t>(i)] = nv, nv += c.ir[static_cast<std::size_t>(i)].node.num_outputs;
  auto slot_of = [&](const Operand& o) { return p.first_slot[static_cast<std::size_t>(o.node)] + o.port; };

  std::vector<SlotInfo> s(static_cast<std::size_t>(nv));
  std::vector<Group> group(static_cast<std::size_t>(nv));
  for (int i = 0; i < m; ++i) {
    const IrNode& x = c.ir[static_cast<std::size_t>(i)];
    for (int q = 0; q < x.node.num_outputs; ++q) {
      SlotInfo& v = s[static_cast<std::size_t>(p.first_slot[static_cast<std::size_t>(i)] + q)];
      v.dtype = x.node.out(q).dtype;
      v.shape = x.node.out(q).shape.resolved(batch);
      v.layout = contiguous_layout(v.shape);
      v.read = p.first_slot[static_cast<std::size_t>(i)] + q;
      // Its own step writes it, so it lives at least then: an output nobody reads (a second
      // output only a gradient would read, in an inference program) must not share memory with
      // what that step reads or writes.
      v.last = (x.fetched >> q & 1u) ? kForever : i;
    }
    for (const Operand& o : x.node.inputs) {
      SlotInfo& v = s[static_cast<std::size_t>(slot_of(o))];
      v.last = std::max(v.last, i);
      if (!(x.node.op->flags & kStrided)) v.needs_contiguous = true;
    }
  }
  auto bytes_of = [&](int v) { return byte_size(s[static_cast<std::size_t>(v)].shape.numel(), s[static_cast<std::size_t>(v)].dtype); };
  // What a naive allocator would use: one buffer per computed output, staging copy and workspace.
  auto count_unshared = [&](std::size_t bytes) { p.unshared_bytes += (bytes + 63) / 64 * 64; };
  auto own_buffer = [&](int v, int first, bool pinned) {
    count_unshared(bytes_of(v));
    SlotInfo& x = s[static_cast<std::size_t>(v)];
    x.kind = Kind::arena;
    x.root = v;
    group[static_cast<std::size_t>(v)] = Group{first, x.last, pinned, bytes_of(v)};
  };
  // A contiguous copy of slot v for its readers; returns the new slot.
  auto add_staging = [&](int v, int first, bool pinned, bool bound_at_run) {
    const int st = static_cast<int>(s.size());
    SlotInfo y;
    y.kind = Kind::arena;
    y.dtype = s[static_cast<std::size_t>(v)].dtype;
    y.shape = s[static_cast<std::size_t>(v)].shape;
    y.layout = contiguous_layout(y.shape);
    y.bound_at_run = bound_at_run;
    y.root = st;
    y.last = s[static_cast<std::size_t>(v)].last;
    y.read = st;
    s.push_back(y);
    group.push_back(Group{first, y.last, pinned, bytes_of(st)});
    count_unshared(group.back().bytes);
    s[static_cast<std::size_t>(v)].read = st;
    return st;
  };

  p.slots.resize(static_cast<std::size_t>(nv));
  std::vector<Step> once;  // kOnce kernels, run when the arena exists
  std::vector<std::pair<int, std::size_t>> workspaces;  // (step index or -1 - once index, bytes)
  for (int i = 0; i < m; ++i) {
    const IrNode& x = c.ir[static_cast<std::size_t>(i)];
    const OpDef& d = *x.node.op;
    const int v0 = p.first_slot[static_cast<std::size_t>(i)];
    SlotInfo& out = s[static_cast<std::size_t>(v0)];
    switch (d.storage) {
      case Storage::persistent: {
        const ParamStore::Entry* e = params.by_graph_id(x.graph_id);
        if (!e) throw std::logic_error("plan: '" + x.node.name + "' is not in the parameter store");
        out.kind = Kind::persistent;
        out.root = v0;
        p.slots[static_cast<std::size_t>(v0)] = params.view(*e);
        continue;
      }
      case Storage::constant:
        out.kind = Kind::constant;
        out.root = v0;
        p.slots[static_cast<std::size_t>(v0)] = x.node.value.view();
        continue;
      case Storage::external: {
        out.kind = Kind::external;
        out.bound_at_run = true;
        Binding b{i, v0, -1, out.shape, -1, {}};
        if (out.needs_contiguous) b.staging = add_staging(v0, 0, true, true);
        p.bindings.push_back(b);
        continue;
      }
      case Storage::computed:
        break;
    }

    if (d.alias >= 0) {
      // Output 0 is the operand's memory, read the way this op reads its operands.
      const int src = s[static_cast<std::size_t>(slot_of(x.node.inputs[static_cast<std::size_t>(d.alias)]))].read;
      const SlotInfo from = s[static_cast<std::size_t>(src)];
      SlotInfo& v = s[static_cast<std::size_t>(v0)];
      v.kind = from.kind;
      v.root = from.root;
      v.bound_at_run = from.bound_at_run || from.kind == Kind::external;
      if (v.bound_at_run) {
        if (!d.is_pure_view()) throw std::logic_error("plan: '" + x.node.name + "' writes a feed");
        Binding b{i, v0, src, v.shape, -1, {}};
        if (v.needs_contiguous) b.staging = add_staging(v0, 0, true, true);
        p.bindings.push_back(b);
      } else {
        if (d.view) {
          if (!d.view(x.node, from.layout, v.shape, v.layout))
            throw std::logic_error("plan: '" + x.node.name + "' cannot view its operand's layout");
        } else {
          v.layout = from.layout;
        }
        if (v.kind == Kind::arena) {
          Group& gr = group[static_cast<std::size_t>(v.root)];
          gr.last = std::max(gr.last, v.last);
          if (x.fetched) gr.pinned = true;
        }
      }
    } else {
      const bool pinned = (d.flags & kOnce) != 0;
      // In place: output 0 takes over a dying operand's buffer (which a fetch then pins).
      int into = -1;
      if (!pinned)
        for (std::size_t j = 0; j < x.node.inputs.size() && into < 0; ++j) {
          if (!(d.inplace >> j & 1u)) continue;
          const int r = s[static_cast<std::size_t>(slot_of(x.node.inputs[j]))].read;
          const SlotInfo& in = s[static_cast<std::size_t>(r)];
          if (in.kind != Kind::arena || in.bound_at_run) continue;
          const Group& gr = group[static_cast<std::size_t>(in.root)];
          if (gr.pinned || gr.last != i || in.layout.offset != 0 || !in.layout.contiguous() || in.dtype != out.dtype ||
              gr.bytes != bytes_of(v0))
            continue;
          into = in.root;
        }
      for (int q = 0; q < x.node.num_outputs; ++q) {
        const int v = v0 + q;
        if (q == 0 && into >= 0) {
          s[static_cast<std::size_t>(v)].kind = Kind::arena;
          s[static_cast<std::size_t>(v)].root = into;
          Group& gr = group[static_cast<std::size_t>(into)];
          count_unshared(gr.bytes);
          gr.last = std::max(gr.last, s[static_cast<std::size_t>(v)].last);
          if (x.fetched & 1u) gr.pinned = true;
        } else {
          own_buffer(v, i, pinned || (x.fetched >> q & 1u));
        }
      }
    }

    // The step.
    if (d.kernels.any()) {
      const DType key = d.kernel_key < 0 ? x.node.out().dtype
                                         : c.ir[static_cast<std::size_t>(x.node.inputs[static_cast<std::size_t>(d.kernel_key)].node)]
                                               .node.out(x.node.inputs[static_cast<std::size_t>(d.kernel_key)].port)
                                               .dtype;
      Step st;
      st.fn = d.kernels.for_dtype(key);
      if (!st.fn) throw std::logic_error(std::string("plan: ") + d.name + " has no " + dtype_name(key) + " kernel");
      st.node = &x.node;
      st.n_in = static_cast<int>(x.node.inputs.size());
      for (int j = 0; j < st.n_in; ++j) st.in[j] = s[static_cast<std::size_t>(slot_of(x.node.inputs[static_cast<std::size_t>(j)]))].read;
      st.n_out = x.node.num_outputs;
      for (int q = 0; q < st.n_out; ++q) st.out[q] = v0 + q;
      Shape shapes[kMaxInputs];
      for (int j = 0; j < st.n_in; ++j) shapes[j] = s[static_cast<std::size_t>(st.in[j])].shape;
      if (d.workspace) st.ws_bytes = d.workspace(x.node, shapes, st.n_in);
      // A sparse-capable operand that is an input: the run may pick the sparse kernel, so its
      // workspace is reserved too (the step's scratch is the larger of the two).
      for (int j = 0; j < st.n_in && d.sparse_kernels.any(); ++j) {
        const int src = x.node.inputs[static_cast<std::size_t>(j)].node;
        if (!(d.sparse_operands >> j & 1u) || c.ir[static_cast<std::size_t>(src)].node.op->storage != Storage::external) continue;
        st.sparse_fn = d.sparse_kernels.for_dtype(key);
        if (!st.sparse_fn || st.n_sparse == 2) continue;
        st.sparse_operand[st.n_sparse] = j;
        st.sparse_input[st.n_sparse++] = src;
        // Planned for nonzeros grouped along the input's open (batch) axis, else its axis 0.
        const Shape& declared = c.ir[static_cast<std::size_t>(src)].node.out().shape;
        int major = 0;
        for (int a = 0; a < declared.rank; ++a)
          if (declared[a] == dyn) major = a;
        if (d.sparse_workspace) st.ws_bytes = std::max(st.ws_bytes, d.sparse_workspace(x.node, shapes, st.n_in, j, major));
      }
      if (d.flags & kOnce) {
        once.push_back(st);
      } else {
        if (st.ws_bytes) workspaces.emplace_back(static_cast<int>(p.steps.size()), i);
        p.steps.push_back(st);
      }
    }
    // A view that is strided here, read by an op that needs contiguous memory: copied each run.
    for (int q = 0; q < x.node.num_outputs; ++q) {
      const int v = v0 + q;
      if (s[static_cast<std::size_t>(v)].bound_at_run || !s[static_cast<std::size_t>(v)].needs_contiguous ||
          s[static_cast<std::size_t>(v)].layout.contiguous())
        continue;
      Step st;
      st.fn = copy_kernel;
      st.node = &x.node;
      st.n_in = st.n_out = 1;
      st.in[0] = v;
      st.out[0] = add_staging(v, i, false, false);
      p.steps.push_back(st);
    }
  }

  // Place the buffers.
  std::vector<BufferRequest> reqs;
  std::vector<int> req_of(s.size(), -1);
  for (std::size_t v = 0; v < s.size(); ++v) {
    if (s[v].kind != Kind::arena || s[v].root != static_cast<int>(v)) continue;
    const Group& gr = group[v];
    req_of[v] = static_cast<int>(reqs.size());
    reqs.push_back(gr.pinned ? BufferRequest{gr.bytes, 0, kForever} : BufferRequest{gr.bytes, gr.first, gr.last});
  }
  std::vector<int> ws_req;
  for (const auto& [step, at] : workspaces) {
    ws_req.push_back(static_cast<int>(reqs.size()));
    reqs.push_back(BufferRequest{p.steps[static_cast<std::size_t>(step)].ws_bytes, static_cast<int>(at), static_cast<int>(at)});
    count_unshared(reqs.back().bytes);
  }
  std::vector<std::size_t> offsets;
  p.arena_bytes = plan_offsets(reqs, offsets);
  p.arena = static_cast<std::byte*>(aligned_alloc64(p.arena_bytes));
  for (std::size_t k = 0; k < workspaces.size(); ++k)
    p.steps[static_cast<std::size_t>(workspaces[k].first)].ws_offset = offsets[static_cast<std::size_t>(ws_req[k])];

  // Slots of everything not bound at run time; staging buffers of feeds go to their bindings.
  p.slots.resize(s.size());
  std::vector<TensorView> buffer(s.size());
  for (std::size_t v = 0; v < s.size(); ++v) {
    const SlotInfo& x = s[v];
    if (x.kind == Kind::external || (x.bound_at_run && x.root != static_cast<int>(v))) continue;
    std::byte* base = nullptr;
    if (x.kind == Kind::arena)
      base = p.arena + offsets[static_cast<std::size_t>(req_of[static_cast<std::size_t>(x.root)])];
    else if (x.root != static_cast<int>(v))
      base = static_cast<std::byte*>(p.slots[static_cast<std::size_t>(x.root)].data);
    else
      continue;  // a parameter or constant: already set
    const TensorView view(base + x.layout.offset * static_cast<std::int64_t>(dtype_size(x.dtype)), x.dtype, x.layout.shape,
                          x.layout.strides);
    if (x.bound_at_run)
      buffer[v] = view;
    else
      p.slots[v] = view;
  }
  for (Binding& b : p.bindings)
    if (b.staging >= 0) b.buffer = buffer[static_cast<std::size_t>(b.staging)];

  for (const Step& st : once) {
    KernelArgs a;
    a.node = st.node;
    a.batch = batch;
    a.n_in = st.n_in;
    a.n_out = st.n_out;
    for (int q = 0; q < st.n_out; ++q) a.out[q] = p.slots[static_cast<std::size_t>(st.out[q])];
    st.fn(a);
  }
  return plan;
}

}  // namespace gg::detail
