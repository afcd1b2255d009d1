// The Program class: the user's handle on a compiled program, its plans and its parameters.
#include "program_impl.hpp"

#include <gradgraph/backend.hpp>

#include <omp.h>

#include <algorithm>
#include <cstring>

namespace gg {

using detail::Plan;

Program::Program(Graph& g, const std::vector<Value>& fetches, const CompileOptions& opts)
    : graph_(&g), graph_lifetime_(g.lifetime_) {
  select_blis_kernels();
  code_ = std::make_unique<detail::Compiled>(detail::compile(g, fetches, opts.fuse));
  if (opts.share_params_with) {
    if (opts.share_params_with->graph_ != &g) throw GraphError("compile: share_params_with is a program of another graph");
    params_ = opts.share_params_with->params_;
    if (params_->entries.size() != g.params().size() + g.states().size())
      throw GraphError("compile: the graph gained parameters after the program to share with was compiled");
  } else {
    params_ = std::make_shared<detail::ParamStore>(g);
    Generator rng(opts.rng, opts.seed);
    params_->init(rng);
  }
  set_threads(opts.threads);
  set_sparse_density(opts.sparse_density);
  run_.training = opts.training;
  run_.seed = opts.seed;
  run_.ranks = opts.ranks;
}

Program::~Program() = default;
Program::Program(Program&&) noexcept = default;
Program& Program::operator=(Program&&) noexcept = default;

Plan& Program::plan_for(std::int64_t batch) {
  if (!code_->has_dyn) batch = 0;
  auto it = plans_.find(batch);
  if (it != plans_.end()) return *it->second;
  return *plans_.emplace(batch, detail::make_plan(*code_, *params_, batch)).first->second;
}

void Program::run(std::initializer_list<Feed> feeds) { run_impl(feeds.begin(), feeds.size()); }
void Program::run(const std::vector<Feed>& feeds) { run_impl(feeds.data(), feeds.size()); }

const Graph& Program::graph() const {
  if (graph_lifetime_.expired()) throw std::logic_error("Program: its Graph was destroyed; a program must not outlive its graph");
  return *graph_;
}

void Program::run_impl(const Feed* feeds, std::size_t n) {
  const Graph& g = graph();
  Plan& p = plan_for(detail::batch_of(*code_, g, feeds, n));
  current_ = &p;
  detail::execute(p, *code_, g, feeds, n, run_);
}

int Program::slot_of(Value v) const {
  if (!v.valid() || v.graph != &graph()) throw std::invalid_argument("get: value of another graph");
  // Checked before indexing: a Value forged or made after compiling names no slot of ours.
  if (static_cast<std::size_t>(v.id) >= code_->graph_to_ir.size() || v.port < 0 || v.port >= kMaxOutputs)
    throw std::invalid_argument("get: node " + std::to_string(v.id) + " port " + std::to_string(v.port) +
                                " is not computed by this program");
  const Operand o = code_->graph_to_ir[static_cast<std::size_t>(v.id)][static_cast<std::size_t>(v.port)];
  if (o.node < 0) throw std::invalid_argument("get: '" + v.name() + "' is not computed by this program");
  const detail::IrNode& x = code_->ir[static_cast<std::size_t>(o.node)];
  if (!(x.fetched >> o.port & 1u)) throw std::invalid_argument("get: '" + v.name() + "' is not fetched by this program");
  if (!current_) throw std::logic_error("get: the program has not run yet");
  return current_->first_slot[static_cast<std::size_t>(o.node)] + o.port;
}

TensorView Program::get(Value v) const { return current_->slots[static_cast<std::size_t>(slot_of(v))]; }

double Program::scalar(Value v) const {
  TensorView t = get(v);
  if (t.numel() != 1) throw std::invalid_argument("scalar: '" + v.name() + "' has shape " + to_string(t.shape));
  return t.flat(0);
}

TensorView Program::param(const std::string& name) const { return params_->view(params_->by_name(name)); }

TensorView Program::param(Value v) const {
  if (!v.valid() || v.graph != graph_) throw std::invalid_argument("param: value of another graph");
  const detail::ParamStore::Entry* e = params_->by_graph_id(v.id);
  if (!e) throw std::invalid_argument("param: '" + v.name() + "' is not a parameter or state");
  return params_->view(*e);
}

namespace {
void set_into(const TensorView& dst, const std::string& name, const TensorView& value) {
  if (value.dtype != dst.dtype)
    throw std::invalid_argument("set_param: '" + name + "' is " + dtype_name(dst.dtype) + ", got " + dtype_name(value.dtype) +
                                " data (convert with Tensor::copy_of(view, dtype))");
  if (value.shape != dst.shape)
    throw std::invalid_argument("set_param: '" + name + "' has shape " + to_string(dst.shape) + ", got " +
                                to_string(value.shape));
  copy(value, dst);
}
}  // namespace

void Program::set_param(const std::string& name, const TensorView& value) { set_into(param(name), name, value); }
void Program::set_param(Value v, const TensorView& value) { set_into(param(v), v.name(), value); }

std::vector<std::string> Program::param_names() const {
  std::vector<std::string> out;
  for (const auto& e : params_->entries)
    if (e.trainable) out.push_back(e.name);
  for (const auto& e : params_->entries)
    if (!e.trainable) out.push_back(e.name);
  return out;
}

std::vector<std::string> Program::state_names() const {
  std::vector<std::string> out;
  for (const auto& e : params_->entries)
    if (!e.trainable) out.push_back(e.name);
  return out;
}

void Program::init_params(Generator& rng) { params_->init(rng); }
std::size_t Program::param_bytes() const { return params_->bytes; }
std::size_t Program::planned_bytes(std::int64_t batch) { return plan_for(batch).arena_bytes; }
std::size_t Program::unshared_bytes(std::int64_t batch) { return plan_for(batch).unshared_bytes; }
int Program::num_steps(std::int64_t batch) { return static_cast<int>(plan_for(batch).steps.size()); }

std::vector<std::string> Program::schedule(std::int64_t batch) {
  std::vector<std::string> out;
  for (const detail::Step& s : plan_for(batch).steps) out.push_back(std::string(s.node->op_name()) + " " + s.node->name);
  return out;
}

void Program::set_profiling(bool on) { run_.profiling = on; }

std::vector<Program::StepProfile> Program::profile() const {
  std::vector<StepProfile> out;
  for (const auto& [batch, plan] : plans_)
    for (const detail::Step& s : plan->steps) {
      auto same = [&](const StepProfile& p) { return p.name == s.node->name && p.op == s.node->op_name(); };
      auto it = std::find_if(out.begin(), out.end(), same);
      if (it == out.end()) it = out.insert(out.end(), {s.node->op_name(), s.node->name, 0, 0});
      it->seconds += s.seconds;
      it->calls += s.calls;
    }
  return out;
}

std::vector<Program::StepProfile> Program::profile(std::int64_t batch) {
  std::vector<StepProfile> out;
  for (const detail::Step& s : plan_for(batch).steps) out.push_back({s.node->op_name(), s.node->name, s.seconds, s.calls});
  return out;
}

void Program::write_dot(std::ostream& os) const {
  const auto& ir = code_->ir;
  Structure st(ir.size());
  for (std::size_t i = 0; i < ir.size(); ++i)
    for (const Operand& o : ir[i].node.inputs) boost::add_edge(static_cast<std::size_t>(o.node), i, st);
  detail::write_dot(os, st, [&](std::size_t i) -> const Node& { return ir[i].node; }, "program");
}

std::vector<Program::ProductChoice> Program::product_choices() const {
  std::vector<ProductChoice> out;
  if (!current_) return out;
  for (const detail::Step& s : current_->steps)
    if (s.sparse_fn)
      out.push_back({s.node->op_name(), s.node->name, code_->ir[static_cast<std::size_t>(s.sparse_input[s.last_input])].node.name,
                     s.last_density, s.last_sparse});
  return out;
}

void Program::set_sparse_density(double d) {
  if (!(d >= 0 && d <= 1)) throw std::invalid_argument("sparse_density must be in [0, 1], got " + std::to_string(d));
  run_.sparse_density = d;
}

void Program::set_threads(int threads) {
  run_.threads = std::min(threads > 0 ? threads : omp_get_max_threads(), detail::kMaxThreads);
}

int Program::set_learning_rate(double lr) {
  int changed = 0;
  for (detail::IrNode& x : code_->ir)
    if (x.node.attrs.set_number("lr", lr)) ++changed;
  return changed;
}

}  // namespace gg
