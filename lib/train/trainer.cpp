// The trainer: the training and evaluation programs of a classifier, fit and evaluate.
#include <gradgraph/autodiff.hpp>
#include <gradgraph/onnx.hpp>
#include <gradgraph/train.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>

namespace gg::train {

Shape image_shape(const Shape& example, std::int64_t batch) {
  if (example.rank == 2) return Shape{batch, 1, example[0], example[1]};
  if (example.rank == 3) return Shape{batch, example[0], example[1], example[2]};
  throw std::invalid_argument("NCHW images need examples of shape {H, W} or {C, H, W}, not " + to_string(example));
}

Model classifier(Graph& g, const nn::Spec& spec, const Shape& example, std::int64_t classes, nn::Layout layout) {
  const std::int64_t f = example.numel();
  if (spec.outputs() != classes)
    throw std::invalid_argument("model spec '" + spec.text() + "' ends in " + std::to_string(spec.outputs()) +
                                " outputs, the data have " + std::to_string(classes) + " classes");
  Model m;
  m.layout = layout;
  m.spec = spec.text();
  m.example = example;
  if (layout == nn::Layout::columns)
    m.x = g.input("X", {f, dyn});
  else if (layout == nn::Layout::rows)
    m.x = g.input("X", {dyn, f});
  else
    m.x = g.input("X", image_shape(example, dyn));
  m.labels = g.input("labels", {dyn}, DType::i64);
  m.logits = nn::build(spec, m.x, layout);
  m.class_axis = layout == nn::Layout::columns ? 0 : 1;
  return m;
}

Trainer::Trainer(Graph& g, const Model& m, const TrainOptions& o) : g_(&g), model_(m), opts_(o) {
  loss_ = softmax_cross_entropy(m.logits, m.labels).named("loss");
  predictions_ = argmax(m.logits, m.class_axis).named("predictions");
  accuracy_ = mean(equal(predictions_, m.labels)).named("accuracy");
  probabilities_ = softmax(m.logits, m.class_axis).named("probabilities");
  params_ = g.params();
  grads_ = gradients(loss_, params_);
  std::vector<Value> used = o.gradient_hook ? o.gradient_hook(g, params_, grads_) : grads_;
  if (used.size() != params_.size()) throw std::invalid_argument("gradient_hook: one gradient per parameter");
  train_loss_ = loss_;
  train_accuracy_ = accuracy_;
  if (o.communicator) {
    // The loss and accuracy ride in the gradients' message: rank 0 prints the global batch's.
    std::vector<Value> mine = used;
    mine.push_back(loss_);
    mine.push_back(accuracy_);
    std::vector<Value> all = all_reduce_mean(mine, *o.communicator);
    train_accuracy_ = all.back();
    all.pop_back();
    train_loss_ = all.back();
    all.pop_back();
    used = all;
  }
  optimizer_nodes_from_ = g.size();
  updates_ = updates(o.optimizer, params_, used);
  std::vector<Value> fetch = updates_;
  fetch.push_back(train_loss_);
  fetch.push_back(train_accuracy_);
  CompileOptions to = o.compile;
  if (o.communicator && !o.local_batch_norm) to.ranks = o.communicator;
  train_ = std::make_unique<Program>(g, fetch, to);
  CompileOptions eo = o.compile;
  eo.ranks = nullptr;  // evaluation uses the running statistics: nothing to sum
  eo.share_params_with = train_.get();
  eo.training = false;
  eval_ = std::make_unique<Program>(g, std::vector<Value>{loss_, accuracy_, predictions_, probabilities_}, eo);
  // Views of the parameter store, which stays where it is for the programs' lifetime.
  const std::vector<std::string> names = train_->param_names();  // parameters, then states
  const std::size_t n_trainable = names.size() - train_->state_names().size();
  for (std::size_t k = 0; k < names.size(); ++k) {
    const TensorView v = train_->param(names[k]);
    if (!is_float(v.dtype)) continue;
    guarded_.emplace_back(names[k], v);
    if (k < n_trainable) guarded_trainable_ = guarded_.size();
  }
}

void Trainer::export_onnx(const std::string& path, const Normalization& norm) const {
  onnx::ExportOptions o;
  o.output_names = {"logits", "probabilities"};
  o.doc = "gradgraph network " + model_.spec + " (" + nn::layout_name(model_.layout) +
          " layout). Input X: images as x = (byte / divisor - mean) / std, " + norm.text() +
          ". Outputs: logits, and their softmax over the classes, probabilities.";
  o.metadata = {{"spec", model_.spec}, {"layout", nn::layout_name(model_.layout)}, {"normalization", norm.text()},
                {"example", to_string(model_.example)}};
  onnx::export_model(*eval_, {model_.logits, probabilities_}, path, o);
}

FitResult Trainer::fit(Batches& batches, const FitOptions& fo, const Callbacks& cb) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  std::int64_t total = fo.steps;
  if (fo.steps <= 0 && __builtin_mul_overflow(fo.epochs, batches.steps_per_epoch(), &total))
    throw std::invalid_argument("fit: " + std::to_string(fo.epochs) + " epochs of " + std::to_string(batches.steps_per_epoch()) +
                                " steps overflow the step counter");
  if (total <= 0) throw std::invalid_argument("fit: the run needs a positive number of epochs or steps");
  planned_steps_ = total;
  FitResult r;
  double lr = std::numeric_limits<double>::quiet_NaN();
  double epoch_loss = 0, epoch_acc = 0;
  std::int64_t epoch_examples = 0, epoch_steps = 0, epochs_this_call = 0;
  auto t_epoch = clock::now();
  const auto seconds_since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
  while (step_ < total) {
    const Batch& b = batches.next();
    const double want = opts_.schedule.lr_at(opts_.optimizer.lr, step_, total);
    if (want != lr) {
      train_->set_learning_rate(want);
      lr = want;
    }
    train_->set_examples_before(b.offset);  // a shard draws its examples' dropout masks
    train_->run({{model_.x, b.x, b.sparse}, {model_.labels, b.labels}});
    StepInfo s;
    s.step = step_;
    s.epoch = b.epoch;
    s.batch_size = b.global_size;
    s.loss = train_->scalar(train_loss_);
    s.accuracy = train_->scalar(train_accuracy_);
    s.lr = lr;
    if (!std::isfinite(s.loss)) {
      Diverged d("the loss became " + std::string(std::isnan(s.loss) ? "NaN" : "infinite") + " at step " +
                 std::to_string(step_) + " (epoch " + std::to_string(b.epoch + 1) + ")" +
                 (fo.checkpoint.empty() ? "" : "; the last checkpoint written is kept"));
      d.step = step_;
      d.reason = std::string("the loss became ") + (std::isnan(s.loss) ? "NaN" : "infinite");
      throw d;
    }
    if (const std::string bad = diverged_parameter(fo.max_param_abs); !bad.empty()) {
      Diverged d("the parameters diverged at step " + std::to_string(step_) + " (epoch " + std::to_string(b.epoch + 1) + "): " +
                 bad + (fo.checkpoint.empty() ? "" : "; the last checkpoint written is kept"));
      d.step = step_;
      d.reason = "parameter " + bad;
      throw d;
    }
    ++step_;
    epoch_loss += s.loss * static_cast<double>(b.global_size);
    epoch_acc += s.accuracy * static_cast<double>(b.global_size);
    epoch_examples += b.global_size;
    ++epoch_steps;
    bool go_on = !cb.on_step || cb.on_step(s);
    if (b.last) {
      epoch_ = b.epoch + 1;
      ++epochs_this_call;
      EpochInfo e;
      e.epoch = b.epoch;
      e.steps = epoch_steps;
      e.loss = epoch_loss / static_cast<double>(epoch_examples);
      e.accuracy = epoch_acc / static_cast<double>(epoch_examples);
      e.seconds = seconds_since(t_epoch);
      e.images_per_second = static_cast<double>(epoch_examples) / e.seconds;
      if (fo.validation) {
        const Evaluation v = evaluate(*fo.validation, batches.options().normalization);
        e.val_loss = v.loss;
        e.val_accuracy = v.accuracy;
      }
      e.elapsed = seconds_since(t_start);
      if (!fo.checkpoint.empty() && batches.steps_per_epoch() > 1 && writes_files()) save(fo.checkpoint, &batches);
      if (cb.on_epoch && !cb.on_epoch(e)) go_on = false;
      epoch_loss = epoch_acc = 0;
      epoch_examples = epoch_steps = 0;
      t_epoch = clock::now();
      if (fo.stop_after_epochs > 0 && epochs_this_call >= fo.stop_after_epochs) break;
    }
    if (!go_on) {
      r.stopped_early = true;
      break;
    }
  }
  if (!fo.checkpoint.empty() && writes_files()) save(fo.checkpoint, &batches);
  r.steps = step_;
  r.epochs = epoch_;
  r.seconds = seconds_since(t_start);
  return r;
}

namespace {
// The first element that is non-finite, or above `max_abs` in magnitude: its index, else -1.
// It runs after every step over every parameter and optimizer state (a mini-batch MLP step is
// ~0.2 ms): blocks are scanned without a branch per element, so that the loop vectorises, and
// only a block with a bad value is searched.
// The comparison is in T: the limit rounded down to a T, so that |x| <= it exactly when the
// double |x| <= max_abs (converting every float to double halved the vector width).
template <typename T>
std::int64_t first_bad(const T* p, std::int64_t n, double max_abs) {
  T limit = std::numeric_limits<T>::infinity();
  if (max_abs < static_cast<double>(std::numeric_limits<T>::max())) {
    limit = static_cast<T>(max_abs);
    if (static_cast<double>(limit) > max_abs) limit = std::nextafter(limit, T(0));
  } else if (max_abs < std::numeric_limits<double>::infinity()) {
    limit = std::numeric_limits<T>::max();  // every finite T is within it
  }
  constexpr std::int64_t kBlock = 2048;
  for (std::int64_t b = 0; b < n; b += kBlock) {
    const std::int64_t e = std::min(n, b + kBlock);
    int bad = 0;
    for (std::int64_t i = b; i < e; ++i) bad |= !(std::fabs(p[i]) <= limit);  // NaN: bad too
    if (bad == 0) continue;
    for (std::int64_t i = b; i < e; ++i)
      if (!(std::fabs(p[i]) <= limit)) return i;
  }
  return -1;
}
}  // namespace

std::string Trainer::diverged_parameter(double max_abs) const {
  for (std::size_t k = 0; k < guarded_.size(); ++k) {
    const auto& [name, v] = guarded_[k];
    // States (optimizer moments, batch statistics) are only checked for being finite.
    const double limit = k < guarded_trainable_ ? max_abs : std::numeric_limits<double>::infinity();
    const std::int64_t i = v.dtype == DType::f32 ? first_bad(v.ptr<float>(), v.numel(), limit)
                                                 : first_bad(v.ptr<double>(), v.numel(), limit);
    if (i < 0) continue;
    const double x = v.flat(i);
    char buf[128];
    if (std::isfinite(x))
      std::snprintf(buf, sizeof buf, "holds %g, past the limit of %g", x, max_abs);
    else
      std::snprintf(buf, sizeof buf, "holds %g", x);
    return "'" + name + "' " + buf;
  }
  return {};
}

Evaluation Trainer::evaluate(const Dataset& d, const Normalization& norm, std::int64_t batch_size) {
  BatchOptions bo;
  bo.batch_size = std::min(batch_size, d.count);
  bo.shuffle = false;
  bo.layout = model_.layout;
  bo.dtype = model_.x.dtype();
  bo.normalization = norm;
  bo.threads = eval_->threads();
  // Data parallelism: each rank takes its shard of every batch, as in training, unless a batch
  // would leave a rank without an example (then every rank evaluates it all).
  Communicator* comm = opts_.communicator;
  const std::int64_t ranks = comm ? comm->size() : 1;
  const bool sharded = ranks > 1 && bo.batch_size >= ranks && (d.count % bo.batch_size == 0 || d.count % bo.batch_size >= ranks);
  if (sharded) bo.shard = comm->rank(), bo.shards = comm->size();
  Batches batches(d, bo);
  Evaluation e;
  e.count = d.count;
  e.classes = model_.logits.shape()[model_.class_axis];
  e.confusion.assign(static_cast<std::size_t>(e.classes * e.classes), 0);
  if (!sharded) {
    e.predicted.resize(static_cast<std::size_t>(d.count));
    e.confidence.resize(static_cast<std::size_t>(d.count));
    e.probabilities.resize(static_cast<std::size_t>(d.count * e.classes));
  }
  double loss = 0;
  for (std::int64_t s = 0; s < batches.steps_per_epoch(); ++s) {
    const Batch& b = batches.next();
    eval_->run({{model_.x, b.x, b.sparse}, {model_.labels, b.labels}});
    loss += eval_->scalar(loss_) * static_cast<double>(b.size);
    const TensorView pred = eval_->get(predictions_), prob = eval_->get(probabilities_);
    const std::int64_t* p = pred.ptr<std::int64_t>();
    std::int64_t at = s * bo.batch_size + b.offset;  // in file order (no shuffle)
    for (std::int64_t j = 0; j < b.size; ++j, ++at) {
      const std::int64_t truth = d.labels[static_cast<std::size_t>(at)];
      if (truth >= 0 && truth < e.classes) ++e.confusion[static_cast<std::size_t>(truth * e.classes + p[j])];
      if (sharded) continue;
      e.predicted[static_cast<std::size_t>(at)] = p[j];
      for (std::int64_t c = 0; c < e.classes; ++c)
        e.probabilities[static_cast<std::size_t>(at * e.classes + c)] =
            model_.class_axis == 0 ? prob.flat(c * prob.strides[0] + j * prob.strides[1])
                                   : prob.flat(j * prob.strides[0] + c * prob.strides[1]);
      e.confidence[static_cast<std::size_t>(at)] = e.probabilities[static_cast<std::size_t>(at * e.classes + p[j])];
    }
  }
  if (sharded) {
    // The shards' loss and counts summed across ranks (counts are exact in double).
    std::vector<double> sums(e.confusion.begin(), e.confusion.end());
    sums.push_back(loss);
    comm->sum(sums.data(), static_cast<std::int64_t>(sums.size()), DType::f64);
    for (std::size_t k = 0; k < e.confusion.size(); ++k) e.confusion[k] = static_cast<std::int64_t>(sums[k]);
    loss = sums.back();
  }
  std::int64_t right = 0;
  e.per_class.assign(static_cast<std::size_t>(e.classes), std::numeric_limits<double>::quiet_NaN());
  for (std::int64_t c = 0; c < e.classes; ++c) {
    std::int64_t row = 0;
    for (std::int64_t k = 0; k < e.classes; ++k) row += e.confusion[static_cast<std::size_t>(c * e.classes + k)];
    const std::int64_t hit = e.confusion[static_cast<std::size_t>(c * e.classes + c)];
    right += hit;
    if (row > 0) e.per_class[static_cast<std::size_t>(c)] = static_cast<double>(hit) / static_cast<double>(row);
  }
  e.loss = loss / static_cast<double>(d.count);
  e.accuracy = static_cast<double>(right) / static_cast<double>(d.count);
  return e;
}

}  // namespace gg::train
