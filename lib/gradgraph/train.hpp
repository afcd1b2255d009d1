// Training in the library, above the program: data sets kept as bytes, batches, optimizers and
// learning-rate schedules, fit / evaluate, and checkpoints that resume a run exactly.
//
//   auto train = gg::train::load_idx(dir, "train"), test = gg::train::load_idx(dir, "t10k");
//   gg::Graph g(gg::f32);
//   gg::train::Model m = gg::train::classifier(g, gg::nn::parse("dense256,relu,dense10"),
//                                               train.example, train.classes, gg::nn::Layout::rows);
//   gg::train::TrainOptions o;
//   o.optimizer = {.kind = gg::train::Optimizer::Kind::adam, .lr = 1e-3};
//   gg::train::Trainer t(g, m, o);
//   gg::train::Batches batches(train, {.batch_size = 128, .seed = 1, .layout = m.layout});
//   t.fit(batches, {.epochs = 10});
//   gg::train::Evaluation e = t.evaluate(test);
//
// Tools are thin clients of this layer: mnist-train, mnist-eval and tools/bench hold no training
// loop of their own.
#pragma once

#include <gradgraph/nn.hpp>
#include <gradgraph/program.hpp>

#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace gg::train {

// ---- data ------------------------------------------------------------------------------------------

// Bytes to inputs: x = (float(byte) / float(divisor) - mean) / std, in float32 arithmetic (as the
// notebook's astype('float32') / 255), then converted to the graph's dtype.
struct Normalization {
  double divisor = 255.0, mean = 0.0, std = 1.0;
  std::string text() const;                        // "divisor=255 mean=0 std=1"
  static Normalization parse(const std::string&);  // reads text(); throws std::invalid_argument
};

// Examples in memory, as the bytes of the files: 60,000 MNIST images are 47 MB, not 188 MB of
// float32. Labels are int64 class indices.
struct Dataset {
  std::string name;                  // for messages: "<dir>/train"
  std::int64_t count = 0;
  Shape example;                     // one example's shape: {28, 28}
  std::vector<std::uint8_t> pixels;  // count * example.numel() bytes, example-major
  std::vector<std::int64_t> labels;  // count
  std::int64_t classes = 10;

  std::int64_t features() const { return example.numel(); }
  // Moves `validation` examples, drawn by a seeded permutation, into a second data set; both
  // keep their examples in file order.
  std::pair<Dataset, Dataset> split(std::int64_t validation, std::uint64_t seed) const;
};

// <dir>/<prefix>-images-idx3-ubyte and -labels-idx1-ubyte, raw or .gz ("train" or "t10k").
// Throws gg::data::DataError naming the file.
Dataset load_idx(const std::string& dir, const std::string& prefix);
// Class names: Fashion-MNIST's when the data set's directory name says "fashion", else the digits.
std::vector<std::string> class_names(const std::string& data_dir, std::int64_t classes);

// ---- batches -----------------------------------------------------------------------------------------

struct BatchOptions {
  std::int64_t batch_size = 0;  // 0, or the data set's size: every step sees all of it (full batch)
  bool shuffle = true;          // a fresh seeded permutation each epoch (not for the full batch)
  std::uint64_t seed = 0;
  nn::Layout layout = nn::Layout::columns;
  DType dtype = DType::f32;
  Normalization normalization{};
  int threads = 1;              // for the gather (use the program's count: one OpenMP team)
  // Augmentation: each image moved by up to `shift` pixels along each spatial axis (the vacated
  // pixels are byte 0, the background), a fresh offset per image and epoch drawn from (seed,
  // epoch, image index): the same for any thread count and after a resume. Images only.
  int shift = 0;
  // Also keep each batch's nonzeros (Batch::sparse, grouped per example) when the normalised data
  // are at most kSparseData dense, so that programs may compute the products that read X from
  // them (CompileOptions::sparse_density decides per product). Columns and rows layouts only.
  bool sparse = true;
  // Data parallelism: this process takes shard `shard` of `shards` of every batch, examples
  // [size * shard / shards, size * (shard + 1) / shards) of it, so that the ranks' shards are
  // exactly the batch one process would see (the same seeded permutation on every rank). Every
  // batch must leave each shard at least one example.
  int shard = 0, shards = 1;
};

// From this many examples on, a full batch's nonzeros also get their cross blocks
// (SparseMatrix::cross, built once): the products switch to their wide kernels there.
constexpr std::int64_t kCrossGroups = 8192;
// Above this density the nonzeros are not worth building (BatchOptions::sparse).
inline constexpr double kSparseData = 0.5;

struct Batch {
  TensorView x;       // {features, size} (columns, strided over example-major memory), {size, features}
                      // (rows) or {size, C, H, W} (nchw)
  TensorView labels;  // int64 {size}
  std::int64_t size = 0;         // examples here: this process's shard
  std::int64_t global_size = 0;  // examples in the whole batch, over all shards
  std::int64_t offset = 0;       // examples of the whole batch before this shard's
  std::int64_t epoch = 0;  // 0-based epoch this batch belongs to
  std::int64_t index = 0;  // 0-based batch within the epoch
  bool last = false;       // the epoch's last batch (possibly partial)
  const SparseMatrix* sparse = nullptr;  // x's nonzeros, grouped per example (BatchOptions::sparse)
};

// Iterates over a data set in batches, epoch after epoch. The buffers are allocated once; each
// batch is gathered and normalised into them (in parallel), so next() allocates nothing. A full
// batch in file order is normalised once and reused.
class Batches {
 public:
  Batches(const Dataset& d, const BatchOptions& o);
  const Batch& next();
  std::int64_t steps_per_epoch() const { return steps_per_epoch_; }
  std::int64_t batch_size() const { return batch_; }
  const Dataset& data() const { return *data_; }
  const BatchOptions& options() const { return opts_; }
  // Nonzeros / values of the whole normalised data set (measured once, from the bytes).
  double density() const { return density_; }

  // Where the iterator is, for checkpoints: the epoch of the next batch, the batch within it, and
  // the shuffling generator's state at that epoch's start (the permutation is drawn again).
  struct Position {
    std::int64_t epoch = 0, index = 0;
    std::string rng;
  };
  Position position() const;
  void seek(const Position& p);

 private:
  void start_epoch();
  void gather(std::int64_t first, std::int64_t count);

  const Dataset* data_;
  BatchOptions opts_;
  std::int64_t batch_ = 0, steps_per_epoch_ = 0;
  Generator rng_;
  Generator rng_at_epoch_start_;  // a copy, not its text: starting an epoch allocates nothing
  std::vector<std::int64_t> order_;
  std::int64_t epoch_ = 0, index_ = -1;  // of the batch last returned
  bool started_ = false;
  bool filled_once_ = false;
  Tensor xbuf_, lbuf_;
  Batch batch_view_;
  std::int64_t shifted_nonzeros(std::int64_t example) const;

  bool sparse_ = false;    // build the nonzeros of each batch
  double density_ = 1;     // of the normalised data set
  SparseMatrix nonzeros_;  // sized once for the densest possible batch
  std::vector<std::int64_t> nonzeros_of_;  // per example, unmoved
  std::array<bool, 256> zero_byte_{};      // the bytes the normalisation maps to 0
};

// ---- optimizers and schedules ----------------------------------------------------------------------------

struct Optimizer {
  enum class Kind : std::uint8_t { sgd, momentum, nesterov, adam, adamw } kind = Kind::sgd;
  double lr = 0.1;
  double momentum = 0.9;      // momentum, nesterov
  double weight_decay = 0.0;  // sgd/momentum/nesterov/adam: L2 added to the gradient; adamw: decoupled
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  static Kind parse_kind(const std::string& name);  // throws std::invalid_argument
  static const char* kind_name(Kind k);
  std::string text() const;  // "adam lr=0.001 beta1=0.9 ..." for checkpoints and logs
};
// The update nodes for params with their gradients.
std::vector<Value> updates(const Optimizer& o, const std::vector<Value>& params, const std::vector<Value>& grads);

// The learning rate at each step, applied before the step (Program::set_learning_rate: no
// recompiling). A linear warm-up ramps from base/warmup to base over the first `warmup` steps;
// then constant, step (times gamma every step_size steps) or cosine (from base to min_lr over
// the rest of the run).
struct Schedule {
  enum class Kind : std::uint8_t { constant, step, cosine } kind = Kind::constant;
  std::int64_t warmup = 0;
  std::int64_t step_size = 0;  // step: 0 means a third of the steps after warm-up
  double gamma = 0.1;
  double min_lr = 0.0;
  static Kind parse_kind(const std::string& name);
  static const char* kind_name(Kind k);
  // The rate of step `step` (0-based) of a run of `total` steps.
  double lr_at(double base, std::int64_t step, std::int64_t total) const;
  std::string text() const;
};

// ---- the trainer --------------------------------------------------------------------------------------------

// What training needs to know of a network: its input, its int64 labels, its logits and their
// class axis; the spec it was built from and the layout go into checkpoints.
struct Model {
  Value x, labels, logits;
  int class_axis = 0;
  nn::Layout layout = nn::Layout::columns;
  std::string spec;  // e.g. "dense64,relu,dense10": enough to build the network again
  Shape example;     // one example's shape
};
// The input {features, dyn} (columns), {dyn, features} (rows) or {dyn, C, H, W} (nchw, examples
// {H, W} or {C, H, W}), int64 labels {dyn}, and the network of `spec` on top.
Model classifier(Graph& g, const nn::Spec& spec, const Shape& example, std::int64_t classes, nn::Layout layout);
// {batch, 1, H, W} for examples {H, W}; {batch, C, H, W} for {C, H, W}.
Shape image_shape(const Shape& example, std::int64_t batch);

struct TrainOptions {
  Optimizer optimizer;
  Schedule schedule;
  CompileOptions compile;  // threads, initialisers' seed and generator, fusion
  // Between backward and update: returns the gradients the updates use, built from the graph's
  // gradients (a data-parallel mode sums them across ranks here). Null: the gradients as they are.
  std::function<std::vector<Value>(Graph& g, const std::vector<Value>& params, const std::vector<Value>& grads)>
      gradient_hook;
  // Data parallelism: this process is one rank of `communicator` and is fed its shard of each
  // batch (BatchOptions::shards). After the hook, the gradients, the loss and the accuracy are
  // averaged over the global batch across ranks (gg::all_reduce_mean, one message per step), so
  // every rank applies the same update as one process fed the whole batch. Batch norm's
  // statistics are the global batch's too (CompileOptions::ranks: a sum across ranks of C + 1
  // values twice in its forward pass and of 2 C + 1 in its backward pass, per layer and step),
  // so every rank also holds the same running statistics. Only rank 0 writes checkpoints. Null:
  // one process.
  Communicator* communicator = nullptr;
  // With a communicator: batch norm uses each rank's shard's statistics instead, with no sums in
  // the forward pass (as PyTorch's DDP without SyncBatchNorm); the run is then not one process's,
  // and each rank's running statistics are its own.
  bool local_batch_norm = false;
};

struct StepInfo {
  std::int64_t step = 0;   // 0-based, counted over the whole run (resumed runs continue it)
  std::int64_t epoch = 0;  // 0-based
  std::int64_t batch_size = 0;
  double loss = 0, accuracy = 0, lr = 0;  // loss and accuracy of the forward pass before the update
};

struct EpochInfo {
  std::int64_t epoch = 0;  // 0-based, the epoch just finished
  std::int64_t steps = 0;  // steps in it
  double loss = 0, accuracy = 0;  // means over its steps, weighted by batch size
  std::optional<double> val_loss, val_accuracy;
  double seconds = 0, images_per_second = 0, elapsed = 0;
};

// Return false to stop training after this step / epoch.
struct Callbacks {
  std::function<bool(const StepInfo&)> on_step;
  std::function<bool(const EpochInfo&)> on_epoch;
};

struct FitOptions {
  std::int64_t epochs = 0;  // the run's length in epochs, or
  std::int64_t steps = 0;   // in steps (takes precedence when set)
  std::int64_t stop_after_epochs = 0;  // > 0: end this call after so many epochs of the run (resume later)
  const Dataset* validation = nullptr;  // evaluated after each epoch
  std::string checkpoint{};  // written (atomically) after each epoch and at the end
  // Divergence guard, checked after every step: a non-finite parameter or state, or a trainable
  // parameter of magnitude above this, throws Diverged before anything is saved (a finite loss
  // can hide parameters of 1e19). Infinity: only non-finite values stop the run.
  double max_param_abs = std::numeric_limits<double>::infinity();
};

struct FitResult {
  std::int64_t steps = 0, epochs = 0;  // done by the whole run so far
  bool stopped_early = false;          // a callback returned false
  double seconds = 0;
};

// The loss became NaN or infinite, or a parameter non-finite or past FitOptions::max_param_abs:
// names the step (and the parameter); the last checkpoint written stays as it was.
struct Diverged : std::runtime_error {
  using std::runtime_error::runtime_error;
  std::int64_t step = 0;
  std::string reason;  // what diverged, without the step: "the loss became NaN", "'W1' holds 3e+19, past ..."
};

struct Evaluation {
  std::int64_t count = 0, classes = 0;
  double loss = 0, accuracy = 0;
  std::vector<std::int64_t> confusion;   // classes x classes: row = true class, column = predicted
  std::vector<double> per_class;         // accuracy of each true class (NaN if it has no example)
  std::vector<std::int64_t> predicted;   // per example
  std::vector<double> confidence;        // the predicted class's softmax probability
  std::vector<double> probabilities;     // count x classes: each example's softmax, row by row
};

// Checkpoint metadata keys gradgraph writes (all strings, in the safetensors JSON header).
struct CheckpointInfo {
  std::map<std::string, std::string> metadata;
  std::string get(const std::string& key) const;  // throws std::runtime_error naming the key
};
// Reads a checkpoint's metadata only (any safetensors file); throws std::runtime_error naming the
// file when it is not one gradgraph wrote.
CheckpointInfo read_checkpoint_info(const std::string& path);

// The network a checkpoint was saved from, built again (on a graph of the checkpoint's dtype,
// with its spec, layout, example shape and classes), and the normalisation its data had. Load
// the parameters with a Trainer on it. Throws std::runtime_error for metadata that does not parse.
struct Rebuilt {
  std::unique_ptr<Graph> graph;
  Model model;
  Normalization normalization;
  CheckpointInfo info;
};
Rebuilt rebuild(const CheckpointInfo& info);
// The same from a checkpoint file; errors name the file.
Rebuilt rebuild(const std::string& checkpoint);

class Trainer {
 public:
  // Appends the loss (softmax cross-entropy on the int64 labels), accuracy, gradients and updates
  // to g and compiles the training and evaluation programs (they share the parameters).
  Trainer(Graph& g, const Model& m, const TrainOptions& o);

  // Trains until the run's length (epochs or steps) is reached, counting steps already done by a
  // resumed run. Throws Diverged on a non-finite loss.
  FitResult fit(Batches& batches, const FitOptions& fo, const Callbacks& cb = {});
  // Loss, accuracy, confusion matrix and per-example predictions over a data set. With a
  // communicator every rank must call it: each evaluates its shard of every batch, and the loss,
  // accuracy, confusion matrix and per-class accuracy are summed across ranks (the whole data
  // set's, on every rank), while the per-example vectors stay empty. (A batch that cannot give
  // every rank an example is evaluated whole by every rank, with them.)
  Evaluation evaluate(const Dataset& d, const Normalization& norm = {}, std::int64_t batch_size = 10000);

  // Parameters, optimizer state, the step and epoch counters, the batch iterator's position, the
  // network description and the normalisation, in one safetensors file, written atomically.
  void save(const std::string& path, const Batches* batches, const std::map<std::string, std::string>& extra = {});
  // Starts from the parameters in a safetensors file (a checkpoint of this network, or any file
  // holding every parameter by name with its shape and dtype; optimizer state is taken when it is
  // there), as a new run: the counters stay at zero. Throws std::runtime_error naming the file and
  // what does not match, or the tensor that is missing (only the optimizer's state may be).
  void load(const std::string& path);
  // Continues the run a checkpoint was saved from: parameters, optimizer state, counters and the
  // batch iterator's position, so that fit goes on exactly as the uninterrupted run would have.
  void resume(const std::string& path, Batches& batches);

  std::int64_t steps_done() const { return step_; }
  std::int64_t epochs_done() const { return epoch_; }
  Program& train_program() { return *train_; }
  Program& eval_program() { return *eval_; }
  const Model& model() const { return model_; }
  // Whether fit writes its checkpoints here: one process, or rank 0 of a data-parallel run.
  bool writes_files() const { return !opts_.communicator || opts_.communicator->rank() == 0; }
  // The training program's loss and accuracy (over the global batch when data-parallel).
  Value loss() const { return train_loss_; }
  Value accuracy() const { return train_accuracy_; }
  Value probabilities() const { return probabilities_; }  // softmax of the logits along the class axis

  // The network's inference graph as an ONNX model (gg::onnx::export_model, written atomically):
  // input "X" in the model's layout, fed the images normalised by `norm`; outputs "logits" and
  // "probabilities". The spec, layout and normalisation go into the model's metadata.
  void export_onnx(const std::string& path, const Normalization& norm) const;

 private:
  Graph* g_;
  Model model_;
  TrainOptions opts_;
  Value loss_, accuracy_, probabilities_, predictions_;
  Value train_loss_, train_accuracy_;  // loss_ and accuracy_, or their all-reduced means
  std::vector<Value> params_, grads_, updates_;
  std::unique_ptr<Program> train_, eval_;
  std::int64_t step_ = 0, epoch_ = 0;
  std::int64_t planned_steps_ = 0;  // the run's length, for the schedule (kept by checkpoints)
  // Nodes with ids from here on were made by the optimizer: its state may be missing from a
  // checkpoint loaded as a new run (it starts fresh), unlike the model's (batch norm statistics).
  int optimizer_nodes_from_ = 0;
  void load_tensors(const std::string& path, bool optimizer_state_required);
  // What the divergence guard reads after every step, found once (fit allocates nothing per step):
  // the float parameters, then the float states, by name.
  std::vector<std::pair<std::string, TensorView>> guarded_;
  std::size_t guarded_trainable_ = 0;
  std::string diverged_parameter(double max_abs) const;
};

}  // namespace gg::train
