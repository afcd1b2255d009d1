#include <gradgraph/autodiff.hpp>
#include <gradgraph/check.hpp>

#include "ops/op.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace gg {

GradCheckResult check_gradients(Graph& g, Value loss, const std::vector<Value>& wrt, const std::vector<Program::Feed>& feeds,
                                const GradCheckOptions& opts) {
  if (loss.shape().rank != 0) throw GraphError("check_gradients: the loss must be a scalar, got " + to_string(loss.shape()));
  std::vector<Value> grads = gradients(loss, wrt);
  std::vector<Value> fetch = grads;
  fetch.insert(fetch.begin(), loss);
  CompileOptions co;
  co.seed = opts.seed;
  co.training = opts.training;
  co.threads = 1;
  Program p(g, fetch, co);

  // Inputs are perturbed in private copies of their feeds.
  std::vector<Tensor> fed;
  std::vector<Program::Feed> my_feeds;
  for (const auto& f : feeds) {
    fed.push_back(Tensor::copy_of(f.value));
    my_feeds.push_back({f.input, fed.back().view()});
  }
  p.run(my_feeds);
  std::vector<Tensor> analytic;
  for (const Value& gv : grads) analytic.push_back(Tensor::copy_of(p.get(gv)));

  auto loss_at = [&]() {
    p.run(my_feeds);
    return p.scalar(loss);
  };

  GradCheckResult res;
  for (std::size_t w = 0; w < wrt.size(); ++w) {
    const Node& n = wrt[w].node();
    TensorView target;
    if (!is_float(wrt[w].dtype())) throw GraphError("check_gradients: '" + n.name + "' is not a float tensor");
    if (n.op->storage == detail::Storage::persistent) {
      target = p.param(wrt[w]);
    } else {
      for (std::size_t k = 0; k < feeds.size(); ++k)
        if (feeds[k].input == wrt[w]) target = fed[k].view();
      if (!target.data) throw GraphError("check_gradients: '" + n.name + "' is neither a parameter nor a fed input");
    }
    if (!target.is_contiguous()) throw GraphError("check_gradients: '" + n.name + "' must be contiguous");
    const std::int64_t count = target.numel();
    for (std::int64_t i = 0; i < count; ++i) {
      const double x0 = target.flat(i);
      const double h = opts.step * std::max(1.0, std::fabs(x0));
      auto set = [&](double v) {
        if (target.dtype == DType::f32)
          static_cast<float*>(target.data)[i] = static_cast<float>(v);
        else
          static_cast<double*>(target.data)[i] = v;
      };
      set(x0 + h);
      const double up = loss_at();
      set(x0 - h);
      const double down = loss_at();
      set(x0);
      const double numeric = (up - down) / (2 * h);
      const double a = analytic[w].flat(i);
      const double err = std::fabs(a - numeric) / std::max({std::fabs(a), std::fabs(numeric), opts.floor});
      ++res.checked;
      if (err > res.max_rel_error || std::isnan(err)) {
        res.max_rel_error = std::isnan(err) ? INFINITY : err;
        std::ostringstream os;
        os.precision(10);
        os << n.name << "[" << i << "]: analytic " << a << " numeric " << numeric;
        res.worst = os.str();
      }
    }
  }
  return res;
}

}  // namespace gg
