#include <gradgraph/optim.hpp>

namespace gg {

namespace {
void check_pairs(const char* who, const std::vector<Value>& params, const std::vector<Value>& grads) {
  if (params.size() != grads.size())
    throw GraphError(std::string(who) + ": " + std::to_string(params.size()) + " parameters but " +
                     std::to_string(grads.size()) + " gradients");
  for (std::size_t i = 0; i < params.size(); ++i)
    if (!params[i].valid() || params[i].node().op != Op::Param)
      throw GraphError(std::string(who) + ": '" + (params[i].valid() ? params[i].name() : "?") + "' is not a parameter");
}
}  // namespace

std::vector<Value> sgd(const std::vector<Value>& params, const std::vector<Value>& grads, const SgdOptions& opts) {
  check_pairs("sgd", params, grads);
  std::vector<Value> ups;
  for (std::size_t i = 0; i < params.size(); ++i) {
    Graph& g = *params[i].graph;
    Attrs a;
    a.lr = opts.lr;
    a.momentum = opts.momentum;
    a.weight_decay = opts.weight_decay;
    const std::string name = params[i].name();  // a copy: adding states moves node storage
    if (opts.momentum == 0.0) {
      ups.push_back(g.add_node(Op::SgdUpdate, {params[i], grads[i]}, a, name + "/sgd"));
    } else {
      Value v = g.state(name + "/velocity", params[i].shape());
      ups.push_back(g.add_node(Op::MomentumUpdate, {params[i], grads[i], v}, a, name + "/momentum"));
    }
  }
  return ups;
}

std::vector<Value> adam(const std::vector<Value>& params, const std::vector<Value>& grads, const AdamOptions& opts) {
  check_pairs("adam", params, grads);
  std::vector<Value> ups;
  for (std::size_t i = 0; i < params.size(); ++i) {
    Graph& g = *params[i].graph;
    Attrs a;
    a.lr = opts.lr;
    a.beta1 = opts.beta1;
    a.beta2 = opts.beta2;
    a.eps = opts.eps;
    a.weight_decay = opts.weight_decay;
    const std::string name = params[i].name();  // a copy: adding states moves node storage
    Value m = g.state(name + "/adam_m", params[i].shape());
    Value v = g.state(name + "/adam_v", params[i].shape());
    Value t = g.state(name + "/adam_t", Shape{});
    ups.push_back(g.add_node(Op::AdamUpdate, {params[i], grads[i], m, v, t}, a, name + "/adam"));
  }
  return ups;
}

}  // namespace gg
