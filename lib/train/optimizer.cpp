// Optimizers and learning-rate schedules (lib/gradgraph/train.hpp).
#include <gradgraph/train.hpp>

#include <cmath>
#include <numbers>
#include <sstream>

namespace gg::train {

namespace {
template <typename K, std::size_t N>
K parse_name(const std::string& name, const char* what, const K (&kinds)[N], const char* (*to_name)(K)) {
  std::string known;
  for (K k : kinds) {
    if (name == to_name(k)) return k;
    known += (known.empty() ? "" : ", ") + std::string(to_name(k));
  }
  throw std::invalid_argument(std::string(what) + " must be one of " + known + ", not '" + name + "'");
}
}  // namespace

const char* Optimizer::kind_name(Kind k) {
  switch (k) {
    case Kind::sgd: return "sgd";
    case Kind::momentum: return "momentum";
    case Kind::nesterov: return "nesterov";
    case Kind::adam: return "adam";
    case Kind::adamw: return "adamw";
  }
  return "?";
}

Optimizer::Kind Optimizer::parse_kind(const std::string& name) {
  static const Kind kinds[] = {Kind::sgd, Kind::momentum, Kind::nesterov, Kind::adam, Kind::adamw};
  return parse_name(name, "the optimizer", kinds, &kind_name);
}

std::string Optimizer::text() const {
  std::ostringstream os;
  os.precision(17);
  os << kind_name(kind) << " lr=" << lr << " weight_decay=" << weight_decay;
  if (kind == Kind::momentum || kind == Kind::nesterov) os << " momentum=" << momentum;
  if (kind == Kind::adam || kind == Kind::adamw) os << " beta1=" << beta1 << " beta2=" << beta2 << " eps=" << eps;
  return os.str();
}

std::vector<Value> updates(const Optimizer& o, const std::vector<Value>& params, const std::vector<Value>& grads) {
  switch (o.kind) {
    case Optimizer::Kind::sgd:
      return sgd(params, grads, {.lr = o.lr, .momentum = 0.0, .weight_decay = o.weight_decay});
    case Optimizer::Kind::momentum:
    case Optimizer::Kind::nesterov:
      return sgd(params, grads,
                 {.lr = o.lr, .momentum = o.momentum, .weight_decay = o.weight_decay, .nesterov = o.kind == Optimizer::Kind::nesterov});
    case Optimizer::Kind::adam:
      return adam(params, grads, {.lr = o.lr, .beta1 = o.beta1, .beta2 = o.beta2, .eps = o.eps, .weight_decay = 0.0, .l2 = o.weight_decay});
    case Optimizer::Kind::adamw:
      return adam(params, grads, {.lr = o.lr, .beta1 = o.beta1, .beta2 = o.beta2, .eps = o.eps, .weight_decay = o.weight_decay});
  }
  return {};
}

const char* Schedule::kind_name(Kind k) {
  switch (k) {
    case Kind::constant: return "constant";
    case Kind::step: return "step";
    case Kind::cosine: return "cosine";
  }
  return "?";
}

Schedule::Kind Schedule::parse_kind(const std::string& name) {
  static const Kind kinds[] = {Kind::constant, Kind::step, Kind::cosine};
  return parse_name(name, "the schedule", kinds, &kind_name);
}

double Schedule::lr_at(double base, std::int64_t step, std::int64_t total) const {
  if (step < warmup) return base * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const std::int64_t t = step - warmup, span = std::max<std::int64_t>(1, total - warmup);
  switch (kind) {
    case Kind::constant:
      return base;
    case Kind::step: {
      const std::int64_t every = step_size > 0 ? step_size : std::max<std::int64_t>(1, span / 3);
      return base * std::pow(gamma, static_cast<double>(t / every));
    }
    case Kind::cosine: {
      const double progress = std::min(1.0, static_cast<double>(t) / static_cast<double>(span));
      return min_lr + (base - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
    }
  }
  return base;
}

std::string Schedule::text() const {
  std::ostringstream os;
  os.precision(17);
  os << kind_name(kind) << " warmup=" << warmup;
  if (kind == Kind::step) os << " step_size=" << step_size << " gamma=" << gamma;
  if (kind == Kind::cosine) os << " min_lr=" << min_lr;
  return os.str();
}

}  // namespace gg::train
