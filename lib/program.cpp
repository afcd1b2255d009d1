// Program: compile (collect, fuse, order) once; plan buffers once per batch size; run.
#include <gradgraph/backend.hpp>
#include <gradgraph/init.hpp>
#include <gradgraph/program.hpp>

#include "program_ir.hpp"

#include <omp.h>

#include <boost/graph/topological_sort.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>

namespace gg {

using detail::OpDef;
using detail::op_def;

// ---- persistent parameters -------------------------------------------------------------------

struct ParamStore {
  struct Entry {
    std::string name;
    int graph_id;
    Shape shape;
    Init init;
    bool is_state;
    std::size_t offset;
  };
  const Graph* graph = nullptr;
  DType dtype = DType::f32;
  std::vector<Entry> entries;  // creation order
  std::byte* arena = nullptr;
  std::size_t bytes = 0;

  ParamStore(Graph& g) : graph(&g), dtype(g.dtype()) {
    for (int i = 0; i < g.size(); ++i) {
      const Node& n = g.node(i);
      if (n.op != Op::Param && n.op != Op::State) continue;
      entries.push_back({n.name, i, n.shape, n.init, n.op == Op::State, bytes});
      bytes += (static_cast<std::size_t>(n.shape.numel()) * dtype_size(dtype) + 63) / 64 * 64;
    }
    arena = static_cast<std::byte*>(aligned_alloc64(bytes));
    std::memset(arena, 0, bytes);
  }
  ~ParamStore() { aligned_free(arena); }
  ParamStore(const ParamStore&) = delete;
  ParamStore& operator=(const ParamStore&) = delete;

  TensorView view(const Entry& e) const { return TensorView(arena + e.offset, dtype, e.shape); }
  const Entry* by_graph_id(int id) const {
    for (const Entry& e : entries)
      if (e.graph_id == id) return &e;
    return nullptr;
  }
  const Entry& by_name(const std::string& name) const {
    for (const Entry& e : entries)
      if (e.name == name) return e;
    throw std::invalid_argument("program has no parameter or state named '" + name + "'");
  }
  void init(Generator& rng) {
    for (const Entry& e : entries) initialize(e.init, view(e), rng);
  }
};

// ---- plans -----------------------------------------------------------------------------------

struct Step {
  detail::KernelFn fn = nullptr;
  const Attrs* attrs = nullptr;
  double scale = 1.0;
  int out = -1;
  int in[detail::kMaxInputs] = {-1, -1, -1, -1, -1};
  int n_in = 0;
  double seconds = 0;  // accumulated while profiling
  std::int64_t calls = 0;
};

struct Plan {
  std::int64_t batch = 0;
  std::byte* arena = nullptr;
  std::size_t arena_bytes = 0, unshared_bytes = 0;
  std::vector<TensorView> slots;     // one per ir node
  std::vector<TensorView> staging;   // per ir node: contiguous buffer for a strided feed (or empty)
  std::vector<int> input_views;      // view nodes over inputs: re-derived after feeds are bound
  std::vector<Step> steps;
  ~Plan() { aligned_free(arena); }
};

namespace {

constexpr int kForever = std::numeric_limits<int>::max();

bool is_view(const IrNode& n) { return op_def(n.node.op).flags & detail::kView; }

}  // namespace

// ---- compile ---------------------------------------------------------------------------------

Program::Program(Graph& g, const std::vector<Value>& fetches, const CompileOptions& opts) : graph_(&g) {
  select_blis_kernels();
  if (fetches.empty()) throw GraphError("compile: nothing to fetch");
  const int n = g.size();
  std::vector<char> needed(static_cast<std::size_t>(n), 0), fetched(static_cast<std::size_t>(n), 0);
  std::vector<int> stack;
  for (const Value& v : fetches) {
    if (!v.valid() || v.graph != &g) throw GraphError("compile: a fetched value belongs to another graph");
    fetched[static_cast<std::size_t>(v.id)] = 1;
    stack.push_back(v.id);
  }
  while (!stack.empty()) {
    int id = stack.back();
    stack.pop_back();
    if (needed[static_cast<std::size_t>(id)]) continue;
    needed[static_cast<std::size_t>(id)] = 1;
    for (int j : g.node(id).inputs) stack.push_back(j);
  }

  // The program's own copy of the subgraph, in id order (a topological order).
  std::vector<IrNode> ir;
  std::vector<int> to_ir(static_cast<std::size_t>(n), -1);
  for (int i = 0; i < n; ++i) {
    if (!needed[static_cast<std::size_t>(i)]) continue;
    IrNode x;
    x.node = g.node(i);
    for (int& j : x.node.inputs) j = to_ir[static_cast<std::size_t>(j)];
    x.graph_id = i;
    x.fetched = fetched[static_cast<std::size_t>(i)];
    to_ir[static_cast<std::size_t>(i)] = static_cast<int>(ir.size());
    ir.push_back(std::move(x));
  }
  if (opts.fuse) detail::fuse(ir);

  // Order with Boost.Graph: data edges plus control edges that make every update of a
  // parameter run after all other readers of that parameter (or of a view of it).
  const std::size_t m = ir.size();
  std::vector<int> base(m);
  for (std::size_t i = 0; i < m; ++i)
    base[i] = is_view(ir[i]) ? base[static_cast<std::size_t>(ir[i].node.inputs[0])] : static_cast<int>(i);
  boost::adjacency_list<boost::vecS, boost::vecS, boost::directedS> dag(m);
  for (std::size_t i = 0; i < m; ++i) {
    if (ir[i].dead) continue;
    for (int j : ir[i].node.inputs) boost::add_edge(static_cast<std::size_t>(j), i, dag);
  }
  for (std::size_t u = 0; u < m; ++u) {
    if (ir[u].dead || !(op_def(ir[u].node.op).flags & detail::kSideEffect)) continue;
    for (int k = 0; k < static_cast<int>(ir[u].node.inputs.size()); ++k) {
      const int target = ir[u].node.inputs[static_cast<std::size_t>(k)];
      if (k == 1) continue;  // the gradient operand is read, not written
      for (std::size_t r = 0; r < m; ++r) {
        if (r == u || ir[r].dead) continue;
        for (int j : ir[r].node.inputs)
          if (base[static_cast<std::size_t>(j)] == target) {
            if (op_def(ir[r].node.op).flags & detail::kSideEffect)
              throw GraphError("compile: '" + ir[static_cast<std::size_t>(target)].node.name +
                               "' is written by two update ops");
            boost::add_edge(r, u, dag);
          }
      }
    }
  }
  std::vector<std::size_t> rev;
  try {
    boost::topological_sort(dag, std::back_inserter(rev));
  } catch (const boost::not_a_dag&) {
    throw GraphError("compile: the program's dependencies form a cycle");
  }
  std::vector<int> new_index(m, -1);
  for (auto it = rev.rbegin(); it != rev.rend(); ++it) {
    if (ir[*it].dead) continue;
    new_index[*it] = static_cast<int>(ir_.size());
    ir_.push_back(std::move(ir[*it]));
  }
  for (IrNode& x : ir_)
    for (int& j : x.node.inputs) j = new_index[static_cast<std::size_t>(j)];
  graph_to_ir_.assign(static_cast<std::size_t>(n), -1);
  for (std::size_t i = 0; i < ir_.size(); ++i) {
    if (ir_[i].graph_id >= 0) graph_to_ir_[static_cast<std::size_t>(ir_[i].graph_id)] = static_cast<int>(i);
    if (ir_[i].node.op == Op::Input) inputs_.push_back(static_cast<int>(i));
    if (ir_[i].node.shape.has_dyn()) has_dyn_ = true;
  }
  for (const Value& v : fetches)
    if (graph_to_ir_[static_cast<std::size_t>(v.id)] < 0)
      throw std::logic_error("compile: fetched node '" + v.name() + "' was fused away");

  if (opts.share_params_with) {
    if (opts.share_params_with->graph_ != &g) throw GraphError("compile: share_params_with is a program of another graph");
    params_ = opts.share_params_with->params_;
    if (params_->entries.size() != g.params().size() + g.states().size())
      throw GraphError("compile: the graph gained parameters after the program to share with was compiled");
  } else {
    params_ = std::make_shared<ParamStore>(g);
    Generator rng(opts.rng, opts.seed);
    params_->init(rng);
  }
  set_threads(opts.threads);
}

Program::~Program() = default;
Program::Program(Program&&) noexcept = default;
Program& Program::operator=(Program&&) noexcept = default;

// ---- planning --------------------------------------------------------------------------------

Plan& Program::plan_for(std::int64_t batch) {
  if (!has_dyn_) batch = 0;
  auto it = plans_.find(batch);
  if (it != plans_.end()) return *it->second;

  auto plan = std::make_unique<Plan>();
  Plan& p = *plan;
  p.batch = batch;
  const int m = static_cast<int>(ir_.size());
  const DType dt = graph_->dtype();
  const std::size_t es = dtype_size(dt);
  std::vector<Shape> shape(static_cast<std::size_t>(m));
  for (int i = 0; i < m; ++i) shape[static_cast<std::size_t>(i)] = ir_[static_cast<std::size_t>(i)].node.shape.resolved(batch);

  // Liveness: the last step reading each node (fetched values live to the end of the run).
  std::vector<int> last(static_cast<std::size_t>(m), -1);
  for (int i = 0; i < m; ++i) {
    if (ir_[static_cast<std::size_t>(i)].fetched) last[static_cast<std::size_t>(i)] = kForever;
    for (int j : ir_[static_cast<std::size_t>(i)].node.inputs)
      last[static_cast<std::size_t>(j)] = std::max(last[static_cast<std::size_t>(j)], i);
  }

  enum class Kind { none, persistent, constant, external, arena };
  std::vector<Kind> kind(static_cast<std::size_t>(m), Kind::none);
  std::vector<int> group(static_cast<std::size_t>(m));  // arena buffer representative
  std::vector<int> group_first(static_cast<std::size_t>(m)), group_last(static_cast<std::size_t>(m));
  std::vector<char> pinned(static_cast<std::size_t>(m), 0), from_input(static_cast<std::size_t>(m), 0);
  p.slots.resize(static_cast<std::size_t>(m));
  p.staging.resize(static_cast<std::size_t>(m));

  for (int i = 0; i < m; ++i) {
    const std::size_t ui = static_cast<std::size_t>(i);
    const IrNode& x = ir_[ui];
    const OpDef& def = op_def(x.node.op);
    group[ui] = i;
    group_first[ui] = i;
    group_last[ui] = last[ui];
    switch (x.node.op) {
      case Op::Param:
      case Op::State:
        kind[ui] = Kind::persistent;
        p.slots[ui] = params_->view(*params_->by_graph_id(x.graph_id));
        continue;
      case Op::Constant:
        kind[ui] = Kind::constant;
        p.slots[ui] = x.node.value.view();
        continue;
      case Op::Input: {
        kind[ui] = Kind::external;
        // A strided feed is copied to a staging buffer only if some consumer needs contiguity.
        bool needs_contiguous = false;
        for (int c = i + 1; c < m; ++c)
          for (int j : ir_[static_cast<std::size_t>(c)].node.inputs)
            if (j == i && !(op_def(ir_[static_cast<std::size_t>(c)].node.op).flags & detail::kStrided))
              needs_contiguous = true;
        if (needs_contiguous) {
          kind[ui] = Kind::arena;  // the staging buffer
          pinned[ui] = 1;
        }
        continue;
      }
      default:
        break;
    }
    if (def.flags & detail::kView) {
      const int src = x.node.inputs[0];
      const std::size_t us = static_cast<std::size_t>(src);
      kind[ui] = kind[us];
      // Views of a feed are re-derived from the bound feed on every run.
      from_input[ui] = ir_[us].node.op == Op::Input || from_input[us];
      if (kind[us] == Kind::arena || (kind[us] == Kind::external)) {
        const int gid = group[us];
        group[ui] = gid;
        group_last[static_cast<std::size_t>(gid)] = std::max(group_last[static_cast<std::size_t>(gid)], last[ui]);
        if (x.fetched) pinned[static_cast<std::size_t>(gid)] = 1;
      }
      continue;
    }
    if (def.flags & detail::kSideEffect) {
      kind[ui] = Kind::persistent;
      continue;
    }
    kind[ui] = Kind::arena;
    if (x.fetched || x.node.op == Op::Fill) pinned[ui] = 1;
    if (pinned[ui]) continue;
    // In place: overwrite an operand whose buffer dies here and has the output's shape.
    for (std::size_t j = 0; j < x.node.inputs.size(); ++j) {
      if (!(def.inplace_inputs >> j & 1u)) continue;
      const int src = x.node.inputs[j];
      const std::size_t us = static_cast<std::size_t>(src);
      if (kind[us] != Kind::arena) continue;
      const int gid = group[us];
      const std::size_t ug = static_cast<std::size_t>(gid);
      if (pinned[ug] || group_last[ug] != i || shape[us] != shape[ui]) continue;
      group[ui] = gid;
      group_last[ug] = std::max(group_last[ug], last[ui]);
      break;
    }
  }

  // Place every arena group.
  std::vector<int> reps;
  std::vector<detail::BufferRequest> reqs;
  std::vector<int> rep_index(static_cast<std::size_t>(m), -1);
  for (int i = 0; i < m; ++i) {
    const std::size_t ui = static_cast<std::size_t>(i);
    if (kind[ui] != Kind::arena) continue;
    // softmax_cross_entropy_fused keeps its loss one element past its gradient (loss_slot).
    const std::size_t extra = ir_[ui].node.op == Op::SoftmaxCrossEntropyFused ? es : 0;
    const std::size_t bytes = static_cast<std::size_t>(shape[ui].numel()) * es + extra;
    if (group[ui] == i) {
      rep_index[ui] = static_cast<int>(reqs.size());
      reqs.push_back({bytes, group_first[ui], pinned[ui] ? kForever : group_last[ui]});
      if (pinned[ui]) reqs.back().first = 0;
      reps.push_back(i);
    }
    p.unshared_bytes += (bytes + 63) / 64 * 64;
  }
  std::vector<std::size_t> offsets;
  p.arena_bytes = detail::plan_offsets(reqs, offsets);
  p.arena = static_cast<std::byte*>(aligned_alloc64(p.arena_bytes));

  for (int i = 0; i < m; ++i) {
    const std::size_t ui = static_cast<std::size_t>(i);
    if (from_input[ui]) {
      p.input_views.push_back(i);
    } else if (kind[ui] == Kind::arena) {
      const int gid = group[ui];
      std::byte* ptr = p.arena + offsets[static_cast<std::size_t>(rep_index[static_cast<std::size_t>(gid)])];
      if (ir_[ui].node.op == Op::LossSlot)
        ptr += static_cast<std::size_t>(shape[static_cast<std::size_t>(ir_[ui].node.inputs[0])].numel()) * es;
      p.slots[ui] = TensorView(ptr, dt, shape[ui]);
      if (ir_[ui].node.op == Op::Input) p.staging[ui] = p.slots[ui];
    } else if (kind[ui] == Kind::persistent && is_view(ir_[ui])) {
      const TensorView& b = p.slots[static_cast<std::size_t>(ir_[ui].node.inputs[0])];
      p.slots[ui] = TensorView(b.data, dt, shape[ui]);
    } else if (kind[ui] == Kind::constant && is_view(ir_[ui])) {
      const TensorView& b = p.slots[static_cast<std::size_t>(ir_[ui].node.inputs[0])];
      p.slots[ui] = TensorView(b.data, dt, shape[ui]);
    } else if (kind[ui] == Kind::persistent && (op_def(ir_[ui].node.op).flags & detail::kSideEffect)) {
      p.slots[ui] = p.slots[static_cast<std::size_t>(ir_[ui].node.inputs[0])];
    }
  }

  // Steps. Fills are computed now, once: nothing overwrites them (pinned).
  for (int i = 0; i < m; ++i) {
    const std::size_t ui = static_cast<std::size_t>(i);
    const IrNode& x = ir_[ui];
    const OpDef& def = op_def(x.node.op);
    if ((def.flags & (detail::kLeaf | detail::kView)) || x.node.op == Op::Input) continue;
    Step s;
    s.fn = dt == DType::f32 ? def.fwd32 : def.fwd64;
    s.attrs = &x.node.attrs;
    s.scale = x.node.op == Op::MatMul ? x.node.attrs.alpha : x.node.attrs.scalar;
    if (x.node.attrs.batch_power != 0) s.scale *= std::pow(static_cast<double>(batch), x.node.attrs.batch_power);
    s.out = i;
    s.n_in = static_cast<int>(x.node.inputs.size());
    for (int j = 0; j < s.n_in; ++j) s.in[j] = x.node.inputs[static_cast<std::size_t>(j)];
    if (x.node.op == Op::Fill) {
      detail::KernelArgs a;
      a.out = p.slots[ui];
      a.attrs = s.attrs;
      a.threads = 1;
      s.fn(a);
      continue;
    }
    p.steps.push_back(s);
  }
  Plan& ref = p;
  plans_.emplace(batch, std::move(plan));
  return ref;
}

// ---- running ---------------------------------------------------------------------------------

std::int64_t Program::batch_of(const Feed* feeds, std::size_t nf) const {
  std::int64_t batch = -1;
  for (int i : inputs_) {
    const IrNode& x = ir_[static_cast<std::size_t>(i)];
    const Feed* f = nullptr;
    for (std::size_t k = 0; k < nf; ++k)
      if (feeds[k].input.graph == graph_ && feeds[k].input.id == x.graph_id) f = &feeds[k];
    if (!f) throw std::invalid_argument("run: input '" + x.node.name + "' " + to_string(x.node.shape) + " was not fed");
    const Shape& want = x.node.shape;
    const Shape& got = f->value.shape;
    if (f->value.dtype != graph_->dtype())
      throw std::invalid_argument("run: input '" + x.node.name + "' fed " + dtype_name(f->value.dtype) +
                                  " data, the graph is " + dtype_name(graph_->dtype()));
    bool ok = want.rank == got.rank;
    for (int d = 0; ok && d < want.rank; ++d) {
      if (want[d] == dyn) {
        if (batch < 0) batch = got[d];
        ok = got[d] == batch;
      } else {
        ok = got[d] == want[d];
      }
    }
    if (!ok)
      throw std::invalid_argument("run: input '" + x.node.name + "' expects shape " + to_string(want) + ", fed " +
                                  to_string(got) + (batch >= 0 ? " (batch " + std::to_string(batch) + ")" : ""));
  }
  if (batch < 0 && has_dyn_) {
    // No input of the program has an open dimension, yet some value does (the zero gradient of
    // an input the loss does not depend on): the batch size comes from that input's feed.
    for (std::size_t k = 0; k < nf && batch < 0; ++k) {
      const Value& in = feeds[k].input;
      if (!in.valid() || in.graph != graph_ || in.node().op != Op::Input) continue;
      const Shape& want = in.shape();
      const Shape& got = feeds[k].value.shape;
      for (int d = 0; d < want.rank && d < got.rank && batch < 0; ++d)
        if (want[d] == dyn) batch = got[d];
    }
    if (batch < 0) throw std::invalid_argument("run: the program has an open (dyn) dimension but no feed sets the batch size");
  }
  return batch < 0 ? 0 : batch;
}

void Program::run(std::initializer_list<Feed> feeds) { run_impl(feeds.begin(), feeds.size()); }
void Program::run(const std::vector<Feed>& feeds) { run_impl(feeds.data(), feeds.size()); }

void Program::run_impl(const Feed* feeds, std::size_t nf) {
  Plan& p = plan_for(batch_of(feeds, nf));
  current_ = &p;
  for (int i : inputs_) {
    const std::size_t ui = static_cast<std::size_t>(i);
    const TensorView* v = nullptr;
    for (std::size_t k = 0; k < nf; ++k)
      if (feeds[k].input.id == ir_[ui].graph_id) v = &feeds[k].value;
    if (p.staging[ui].data && !v->is_contiguous()) {
      copy(*v, p.staging[ui]);
      p.slots[ui] = p.staging[ui];
    } else {
      p.slots[ui] = *v;
    }
  }
  for (int i : p.input_views) {
    const std::size_t ui = static_cast<std::size_t>(i);
    p.slots[ui] = TensorView(p.slots[static_cast<std::size_t>(ir_[ui].node.inputs[0])].data, graph_->dtype(),
                             ir_[ui].node.shape.resolved(p.batch));
  }
  detail::KernelArgs a;
  a.threads = threads_;
  for (Step& s : p.steps) {
    a.out = p.slots[static_cast<std::size_t>(s.out)];
    for (int j = 0; j < s.n_in; ++j) a.in[j] = p.slots[static_cast<std::size_t>(s.in[j])];
    a.n_in = s.n_in;
    a.attrs = s.attrs;
    a.scale = s.scale;
    if (!profiling_) {
      s.fn(a);
      continue;
    }
    const double t0 = omp_get_wtime();
    s.fn(a);
    s.seconds += omp_get_wtime() - t0;
    ++s.calls;
  }
}

void Program::set_profiling(bool on) { profiling_ = on; }

std::vector<Program::StepProfile> Program::profile(std::int64_t batch) {
  std::vector<StepProfile> out;
  for (const Step& s : plan_for(batch).steps) {
    const Node& n = ir_[static_cast<std::size_t>(s.out)].node;
    out.push_back({op_def(n.op).name, n.name, s.seconds, s.calls});
  }
  return out;
}

TensorView Program::get(Value v) const {
  if (!v.valid() || v.graph != graph_) throw std::invalid_argument("get: value of another graph");
  const int i = graph_to_ir_[static_cast<std::size_t>(v.id)];
  if (i < 0 || !ir_[static_cast<std::size_t>(i)].fetched)
    throw std::invalid_argument("get: '" + v.name() + "' is not fetched by this program");
  if (!current_) throw std::logic_error("get: the program has not run yet");
  return current_->slots[static_cast<std::size_t>(i)];
}

double Program::scalar(Value v) const {
  TensorView t = get(v);
  if (t.numel() != 1) throw std::invalid_argument("scalar: '" + v.name() + "' has shape " + to_string(t.shape));
  return t.flat(0);
}

TensorView Program::param(const std::string& name) const { return params_->view(params_->by_name(name)); }

void Program::set_param(const std::string& name, const TensorView& value) {
  TensorView dst = param(name);
  if (value.shape != dst.shape)
    throw std::invalid_argument("set_param: '" + name + "' has shape " + to_string(dst.shape) + ", got " +
                                to_string(value.shape));
  Tensor converted = Tensor::copy_of(value, dst.dtype);
  std::memcpy(dst.data, converted.data(), static_cast<std::size_t>(dst.numel()) * dtype_size(dst.dtype));
}

std::vector<std::string> Program::param_names() const {
  std::vector<std::string> out;
  for (const auto& e : params_->entries)
    if (!e.is_state) out.push_back(e.name);
  for (const auto& e : params_->entries)
    if (e.is_state) out.push_back(e.name);
  return out;
}

std::vector<std::string> Program::state_names() const {
  std::vector<std::string> out;
  for (const auto& e : params_->entries)
    if (e.is_state) out.push_back(e.name);
  return out;
}

void Program::init_params(Generator& rng) { params_->init(rng); }
std::size_t Program::param_bytes() const { return params_->bytes; }
std::size_t Program::planned_bytes(std::int64_t batch) { return plan_for(batch).arena_bytes; }
std::size_t Program::unshared_bytes(std::int64_t batch) { return plan_for(batch).unshared_bytes; }
int Program::num_steps(std::int64_t batch) { return static_cast<int>(plan_for(batch).steps.size()); }

std::vector<std::string> Program::schedule(std::int64_t batch) {
  std::vector<std::string> out;
  for (const Step& s : plan_for(batch).steps) {
    const Node& n = ir_[static_cast<std::size_t>(s.out)].node;
    out.push_back(std::string(op_def(n.op).name) + " " + n.name);
  }
  return out;
}

void Program::write_dot(std::ostream& os) const {
  os << "digraph program {\n  node [shape=box, style=filled, fontname=\"Helvetica\"];\n";
  for (std::size_t i = 0; i < ir_.size(); ++i) {
    const Node& n = ir_[i].node;
    const char* color = n.op == Op::Param                                   ? "gold"
                        : n.op == Op::State                                 ? "khaki"
                        : n.op == Op::Input || n.op == Op::Constant         ? "lightgrey"
                        : op_def(n.op).flags & detail::kSideEffect          ? "palegreen"
                        : n.fused                                           ? "plum"
                        : n.backward                                        ? "lightcoral"
                                                                            : "lightblue";
    os << "  n" << i << " [label=\"" << i << ": " << op_def(n.op).name << "\\n" << n.name << "\\n" << to_string(n.shape)
       << "\", fillcolor=" << color << "];\n";
    for (int j : n.inputs) os << "  n" << j << " -> n" << i << ";\n";
  }
  os << "}\n";
}

void Program::set_threads(int threads) {
  threads_ = std::min(threads > 0 ? threads : omp_get_max_threads(), detail::kMaxThreads);
}

void Program::set_learning_rate(double lr) {
  for (IrNode& x : ir_)
    if (op_def(x.node.op).flags & detail::kSideEffect) x.node.attrs.lr = lr;
}

}  // namespace gg
