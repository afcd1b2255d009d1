// mnist-train: trains a classifier on MNIST-style data with gradgraph's training layer
// (lib/gradgraph/train.hpp). By default it is the NumpyNet notebook's MLP (784-64-10, ReLU,
// softmax cross-entropy) trained full-batch, printing the notebook's lines; flags choose deeper
// networks, mini-batches, optimizers, schedules, a validation split and checkpoints that resume
// exactly. `mnist-train --help` documents every flag. The tool parses flags, prints and plots:
// the training loop, the data pipeline and the checkpoints are the library's. Under mpirun it
// trains data-parallel (docs/distributed.md): each rank a shard of every batch, rank 0 printing.
#include <gradgraph/gradgraph.hpp>
#include <gradgraph/atomic_file.hpp>
#include <gradgraph/idx.hpp>

#include "common/metrics.hpp"
#include "common/plot.hpp"
#include "common/progress.hpp"

#include "common/cli.hpp"

#include <boost/program_options.hpp>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace po = boost::program_options;

namespace {

using gg::tools::UsageError;

// The longest run accepted: past it a typo (or a wrapped product of epochs and steps) would run
// for years and keep a row of metrics per step in memory.
constexpr std::int64_t kMaxSteps = 1'000'000'000;

struct Options {
  std::string data, metrics, plot, save, load, resume, model, layers, activation, optimizer, schedule, layout, export_onnx;
  std::int64_t hidden = 64, iterations = 500, batch_size = 0, epochs = 0, print_every = 100, eval_every = 0, shift = 0;
  std::int64_t warmup = 0, lr_step = 0, stop_after_epochs = 0;
  double lr = 0.1, momentum = 0.9, weight_decay = 0, lr_gamma = 0.1, val_split = 0, test_divisor = 255.0, dropout = 0;
  double sparse_density = gg::kDefaultSparseDensity;
  double max_param_abs = 1e6;
  std::uint64_t seed = 33;
  std::string seed_text = "33";
  std::string init = "numpy", dtype = "float32";
  int threads = 0;
  double mpi_timeout = 300;
  bool verbose = false, progress = true, shuffle = true, distributed = false;
};

// The MPI ranks of a data-parallel run (null: one process), set up by main before parsing.
gg::train::Mpi* mpi = nullptr;
bool rank0() { return !mpi || mpi->rank() == 0; }

std::string format(const char* fmt, double a, double b = 0, double c = 0) {
  char buf[256];
  std::snprintf(buf, sizeof buf, fmt, a, b, c);
  return buf;
}

std::vector<std::int64_t> parse_layers(const std::string& text) {
  std::vector<std::int64_t> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    try {
      std::size_t used = 0;
      const long long v = std::stoll(item, &used);
      if (used != item.size() || v <= 0 || v > 1000000) throw std::invalid_argument("");
      out.push_back(v);
    } catch (const std::exception&) {
      throw UsageError("--layers takes hidden widths like 256,128 (got " + text + ")");
    }
  }
  return out;
}

void check_options(const Options& o) {
  auto bad = [](const std::string& flag, const std::string& what, const std::string& got) {
    throw UsageError("--" + flag + " " + what + " (got " + got + ")");
  };
  if (!(o.lr > 0) || !std::isfinite(o.lr)) bad("lr", "must be a positive number", format("%g", o.lr));
  if (o.hidden <= 0 || o.hidden > 1000000) bad("hidden", "must be between 1 and 1000000", std::to_string(o.hidden));
  if (o.iterations <= 0 || o.iterations > kMaxSteps)
    bad("iterations", "must be between 1 and " + std::to_string(kMaxSteps), std::to_string(o.iterations));
  if (o.batch_size < 0) bad("batch-size", "must be 0 (full batch) or positive", std::to_string(o.batch_size));
  if (o.epochs < 0) bad("epochs", "must be 0 or positive", std::to_string(o.epochs));
  if (o.print_every <= 0) bad("print-every", "must be at least 1", std::to_string(o.print_every));
  if (o.eval_every < 0) bad("eval-every", "must be 0 (off) or positive", std::to_string(o.eval_every));
  if (o.shift < 0 || o.shift > 8) bad("shift", "must be 0 (off) to 8 pixels", std::to_string(o.shift));
  // The pixels are divided in the run's dtype: a divisor that is 0 or infinite in float32 is too.
  if (!(o.test_divisor > 0) || !std::isfinite(o.test_divisor) || !(static_cast<float>(o.test_divisor) > 0) ||
      !std::isfinite(static_cast<float>(o.test_divisor)))
    bad("test-divisor", "must be a positive number that float32 can hold (1e-38 to 3e38)", format("%g", o.test_divisor));
  if (!(o.max_param_abs > 0)) bad("max-param-abs", "must be a positive number (inf: only non-finite values stop)", format("%g", o.max_param_abs));
  if (o.threads < 0 || o.threads > 64) bad("threads", "must be 0 (all cores) to 64", std::to_string(o.threads));
  if (!(o.sparse_density >= 0 && o.sparse_density <= 1))
    bad("sparse-density", "must be in [0, 1] (0: always dense products)", format("%g", o.sparse_density));
  if (!(o.momentum >= 0 && o.momentum < 1)) bad("momentum", "must be in [0, 1)", format("%g", o.momentum));
  if (!(o.weight_decay >= 0) || !std::isfinite(o.weight_decay)) bad("weight-decay", "must be 0 or positive", format("%g", o.weight_decay));
  if (!(o.val_split >= 0) || !std::isfinite(o.val_split) || (o.val_split >= 1 && o.val_split != std::floor(o.val_split)))
    bad("val-split", "must be a fraction in [0, 1) or a whole number of examples", format("%g", o.val_split));
  if (o.warmup < 0) bad("warmup", "must be 0 or positive", std::to_string(o.warmup));
  if (o.lr_step < 0) bad("lr-step", "must be 0 (a third of the run) or positive", std::to_string(o.lr_step));
  if (!(o.lr_gamma > 0) || !std::isfinite(o.lr_gamma)) bad("lr-gamma", "must be a positive number", format("%g", o.lr_gamma));
  if (o.stop_after_epochs < 0) bad("stop-after-epochs", "must be 0 or positive", std::to_string(o.stop_after_epochs));
  if (!(o.dropout >= 0 && o.dropout < 1)) bad("dropout", "must be in [0, 1)", format("%g", o.dropout));
  if (o.dropout > 0 && !o.model.empty()) throw UsageError("--dropout goes with --hidden/--layers; put dropoutP layers in --model");
  if (o.init != "numpy" && o.init != "default") bad("init", "must be numpy or default", o.init);
  if (o.dtype != "float32" && o.dtype != "float64") bad("dtype", "must be float32 or float64", o.dtype);
  if (!o.load.empty() && !o.resume.empty()) throw UsageError("--load and --resume exclude each other");
  try {
    gg::train::Optimizer::parse_kind(o.optimizer);
    gg::train::Schedule::parse_kind(o.schedule);
    gg::nn::parse_activation(o.activation);
    if (o.layout != "auto") gg::nn::parse_layout(o.layout);
    if (!o.model.empty() && o.model != "cnn") gg::nn::parse(o.model);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
}

std::optional<Options> parse(int argc, char** argv) {
  Options o;
  po::options_description desc(
      "mnist-train: train a classifier on MNIST with gradgraph. By default the NumpyNet notebook's MLP\n"
      "(784-64-10, ReLU, softmax) full-batch, printing the notebook's lines (accuracy and loss of the\n"
      "forward pass before each update), then the test accuracy.\n\nOptions");
  // clang-format off
  desc.add_options()
    ("help,h", "show this help and exit")
    // Resolved after parsing: without HOME, --help and an explicit --data must still work.
    ("data", po::value(&o.data),
       "directory with the four IDX files, raw or .gz (MNIST: fetched by scripts/fetch-mnist; "
       "Fashion-MNIST: /usr/share/datasets/fashion-mnist); default $GRADGRAPH_DATA, else "
       "${XDG_CACHE_HOME:-$HOME/.cache}/gradgraph/mnist")
    ("hidden", po::value(&o.hidden)->default_value(64), "width of the one hidden layer (the notebook's 64)")
    ("layers", po::value(&o.layers), "hidden layer widths, e.g. 256,128 (instead of --hidden)")
    ("activation", po::value(&o.activation)->default_value("relu"), "relu | tanh | sigmoid, after each hidden layer")
    ("dropout", po::value(&o.dropout)->default_value(0.0), "dropout probability after each hidden layer (with --hidden/--layers)")
    ("model", po::value(&o.model),
       "the network as a spec (instead of --layers), e.g. dense256,relu,dense128,relu,dense10 or "
       "conv32k3p1,relu,pool2,conv64k3p1,relu,pool2,flatten,dense128,relu,dropout0.25,dense10; "
       "layers: denseN, convNkKpPsS, poolK, avgpoolK, gap, flatten, dropoutP, bn (batch norm), relu, tanh, sigmoid; "
       "'cnn' is the reference CNN above")
    ("layout", po::value(&o.layout)->default_value("auto"),
       "columns: X {784, batch}, the notebook's; rows: X {batch, 784}; nchw: X {batch, 1, 28, 28}; "
       "auto: nchw for a convolutional --model, else columns")
    ("lr", po::value(&o.lr)->default_value(0.1), "learning rate (the peak, with a schedule)")
    ("iterations", po::value(&o.iterations)->default_value(500), "parameter updates (steps), without --epochs")
    ("batch-size", po::value(&o.batch_size)->default_value(0), "examples per step; 0 = the full training set (the notebook)")
    ("epochs", po::value(&o.epochs)->default_value(0), "with --batch-size: train this many passes over the data instead of --iterations")
    ("no-shuffle", "mini-batches in file order instead of a fresh shuffle every epoch")
    ("shift", po::value(&o.shift)->default_value(0),
       "augmentation: move each training image by up to N pixels along each axis, a fresh offset per image and epoch "
       "(0: none; test and validation images are never moved)")
    ("optimizer", po::value(&o.optimizer)->default_value("sgd"), "sgd | momentum | nesterov | adam | adamw")
    ("momentum", po::value(&o.momentum)->default_value(0.9), "momentum coefficient for momentum and nesterov")
    ("weight-decay", po::value(&o.weight_decay)->default_value(0.0), "L2 decay added to the gradient (adamw: decoupled decay)")
    ("schedule", po::value(&o.schedule)->default_value("constant"), "learning-rate schedule: constant | step | cosine")
    ("warmup", po::value(&o.warmup)->default_value(0), "steps of linear warm-up before the schedule")
    ("lr-step", po::value(&o.lr_step)->default_value(0), "step schedule: steps between decays (0: a third of the run)")
    ("lr-gamma", po::value(&o.lr_gamma)->default_value(0.1), "step schedule: the decay factor")
    ("val-split", po::value(&o.val_split)->default_value(0.0),
       "hold out this fraction (or number) of the training examples, evaluated after each epoch")
    ("seed", po::value(&o.seed_text)->default_value("33"), "seed of the initialisers (and of the shuffles and the split)")
    ("init", po::value(&o.init)->default_value("numpy"),
       "numpy: He-normal weights drawn bit-exactly as NumPy's np.random.seed(seed); randn (the notebook); "
       "default: gradgraph's own generator")
    ("dtype", po::value(&o.dtype)->default_value("float32"), "float32 | float64")
    ("test-divisor", po::value(&o.test_divisor)->default_value(255.0),
       "test pixels are divided by this (the notebook used 225 by mistake; pass 225 to reproduce it)")
    ("print-every", po::value(&o.print_every)->default_value(100), "print a line every N iterations")
    ("eval-every", po::value(&o.eval_every)->default_value(0), "evaluate the test set every N iterations (0: only at the end)")
    ("metrics", po::value(&o.metrics), "write iteration, loss, train accuracy (and test accuracy) to this CSV file")
    ("plot", po::value(&o.plot), "draw loss and accuracy curves into this PNG file")
    ("save", po::value(&o.save), "checkpoint (safetensors: parameters, optimizer state, counters, data order) to this "
       "file after each epoch and at the end")
    ("export-onnx", po::value(&o.export_onnx), "after training, write the network's inference graph to this ONNX file "
       "(opset 11; input X in the --layout's shape, fed pixels / 255; outputs logits and probabilities; docs/interop.md)")
    ("load", po::value(&o.load), "start from the parameters of a checkpoint, as a new run")
    ("resume", po::value(&o.resume), "continue the run a checkpoint was saved from, exactly (same network, batches, "
       "optimizer; --epochs/--iterations say where the run ends)")
    ("stop-after-epochs", po::value(&o.stop_after_epochs)->default_value(0),
       "end this invocation after so many epochs (checkpoint with --save, continue with --resume)")
    ("threads", po::value(&o.threads)->default_value(0), "threads for GEMMs and kernels (0: all cores; under mpirun, per rank: the cores divided by the ranks on the machine)")
    ("distributed", "data-parallel over MPI (automatic under mpirun): each rank trains on its shard of every "
       "--batch-size batch, gradients summed across ranks; rank 0 prints and writes files (docs/distributed.md)")
    ("mpi-timeout", po::value(&o.mpi_timeout)->default_value(300.0),
       "under mpirun: end the job when a rank has sent nothing for this many seconds (died, hung, diverged)")
    ("sparse-density", po::value(&o.sparse_density)->default_value(gg::kDefaultSparseDensity, format("%g", gg::kDefaultSparseDensity)),
       "products that read the images use their nonzeros when the images are at most this dense (MNIST: 0.19); "
       "0: always the dense GEMM (--verbose says which ran)")
    ("max-param-abs", po::value(&o.max_param_abs)->default_value(1e6, "1e6"),
       "divergence guard: stop (exit 1, nothing saved past the last checkpoint) when a parameter's magnitude "
       "exceeds this or any parameter becomes NaN or infinite; inf: only the latter")
    ("no-progress", "no progress bar even on a terminal")
    ("verbose,v", "print the plan (buffer bytes, schedule length) and timings on stderr");
  // clang-format on
  po::variables_map vm;
  try {
    // No positional arguments: a stray "5000" after --iterations 1 is a mistake, not ignored.
    po::store(po::command_line_parser(argc, argv).options(desc).positional(po::positional_options_description()).run(), vm);
    if (vm.count("help")) {
      std::cout << desc << "\n";
      return std::nullopt;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  for (const char* flag : {"data", "metrics", "plot", "save", "load", "resume", "export-onnx", "model", "layers"})
    if (vm.count(flag) && vm[flag].as<std::string>().empty()) throw UsageError(std::string("--") + flag + " needs a non-empty value");
  // program_options reads "-1" into an unsigned as 2^64 - 1: take digits only.
  if (o.seed_text.empty() || o.seed_text.find_first_not_of("0123456789") != std::string::npos)
    throw UsageError("--seed must be a whole number from 0 to 2^64 - 1 (got " + o.seed_text + ")");
  try {
    o.seed = std::stoull(o.seed_text);
  } catch (const std::exception&) {
    throw UsageError("--seed must be a whole number from 0 to 2^64 - 1 (got " + o.seed_text + ")");
  }
  if (o.data.empty()) {
    try {
      o.data = gg::data::default_data_dir();
    } catch (const std::exception& e) {
      throw UsageError(std::string(e.what()) + "; pass --data DIR");
    }
  }
  o.verbose = vm.count("verbose") > 0;
  o.progress = vm.count("no-progress") == 0;
  o.shuffle = vm.count("no-shuffle") == 0;
  o.distributed = vm.count("distributed") > 0;
  if (o.distributed && !mpi)
    throw UsageError(gg::train::mpi_available() ? "--distributed needs mpirun (mpirun -np N mnist-train ...)"
                                                : "--distributed: this gradgraph was built without MPI (scripts/install-deps, then build again)");
  if (!(o.mpi_timeout > 0)) throw UsageError("--mpi-timeout must be a positive number of seconds");
  check_options(o);
  return o;
}

// The network: --model, else --layers, else one hidden layer of --hidden (the notebook's).
gg::nn::Spec network(const Options& o, std::int64_t classes) {
  if (o.model == "cnn") return gg::nn::reference_cnn(classes);
  if (!o.model.empty()) return gg::nn::parse(o.model);
  const std::vector<std::int64_t> hidden = o.layers.empty() ? std::vector<std::int64_t>{o.hidden} : parse_layers(o.layers);
  const gg::nn::Spec plain = gg::nn::mlp(hidden, gg::nn::parse_activation(o.activation), classes);
  if (o.dropout == 0) return plain;
  // dropoutP after each hidden layer (after its activation).
  std::string text;
  for (std::size_t i = 0; i + 1 < plain.layers.size(); ++i) {
    text += plain.layers[i].text() + ",";
    const bool end_of_hidden = plain.layers[i + 1].kind == gg::nn::Layer::Kind::dense;
    if (end_of_hidden) text += "dropout" + format("%g", o.dropout) + ",";
  }
  return gg::nn::parse(text + plain.layers.back().text());
}

int train(const Options& o) {
  const gg::DType dt = o.dtype == "float64" ? gg::f64 : gg::f32;
  const auto t_start = std::chrono::steady_clock::now();
  // Every file the run will write is checked now, not after minutes of training (rank 0 writes).
  if (rank0())
    for (const std::string* out : {&o.save, &o.metrics, &o.plot, &o.export_onnx})
      if (!out->empty()) gg::io::check_output_path(*out);
  gg::train::Dataset all = gg::train::load_idx(o.data, "train");
  gg::train::Dataset test = gg::train::load_idx(o.data, "t10k");
  std::optional<gg::train::Dataset> val;
  gg::train::Dataset* train_set = &all;
  std::pair<gg::train::Dataset, gg::train::Dataset> parts;
  if (o.val_split > 0) {
    const auto held = static_cast<std::int64_t>(o.val_split < 1 ? std::floor(o.val_split * static_cast<double>(all.count))
                                                                : o.val_split);
    parts = all.split(held, o.seed);
    train_set = &parts.first;
    val = std::move(parts.second);
  }

  const gg::nn::Spec spec = network(o, all.classes);
  const gg::nn::Layout layout = o.layout != "auto"       ? gg::nn::parse_layout(o.layout)
                                : spec.convolutional() ? gg::nn::Layout::nchw
                                                       : gg::nn::Layout::columns;
  gg::Graph g(dt);
  const gg::train::Model model = gg::train::classifier(g, spec, all.example, all.classes, layout);
  gg::train::TrainOptions to;
  to.optimizer.kind = gg::train::Optimizer::parse_kind(o.optimizer);
  to.optimizer.lr = o.lr;
  to.optimizer.momentum = o.momentum;
  to.optimizer.weight_decay = o.weight_decay;
  to.schedule.kind = gg::train::Schedule::parse_kind(o.schedule);
  to.schedule.warmup = o.warmup;
  to.schedule.step_size = o.lr_step;
  to.schedule.gamma = o.lr_gamma;
  to.compile.threads = o.threads;
  // "All cores" per rank would put ranks x cores threads on the cores under mpirun: OpenMP's
  // spinning threads then take turns (354 ms per step instead of 0.2 on 2 cores, 2 ranks). The
  // default shares the machine's cores among the ranks on it.
  if (mpi && o.threads == 0) to.compile.threads = std::max(1, omp_get_num_procs() / mpi->ranks_on_node());
  // An explicit count is taken as given, but one that puts more threads than cores on this
  // machine (or than this rank may use) is said, once: it is rarely meant.
  if (mpi && o.threads > 0 && mpi->rank() == 0) {
    const long cores = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
    const long threads = static_cast<long>(o.threads) * mpi->ranks_on_node();
    if (threads > cores || o.threads > omp_get_num_procs())
      std::fprintf(stderr,
                   "mnist-train: warning: %d ranks x %d threads on %ld cores (%d this rank may use): the threads will "
                   "take turns, which is slow; the default --threads 0 shares the cores\n",
                   mpi->ranks_on_node(), o.threads, cores, omp_get_num_procs());
  }
  to.compile.sparse_density = o.sparse_density;
  to.compile.seed = o.seed;
  to.compile.rng = o.init == "numpy" ? gg::RngKind::numpy : gg::RngKind::standard;
  // Every rank initialises its replica from the same seed (the initialisers are deterministic);
  // check_same below confirms the parameters agree bit for bit before the first step.
  if (mpi) {
    to.communicator = mpi;
    mpi->set_timeout(o.mpi_timeout);
  }
  gg::train::Trainer trainer(g, model, to);

  gg::train::BatchOptions bo;
  bo.batch_size = o.batch_size;
  bo.shuffle = o.shuffle;
  bo.seed = o.seed;
  bo.layout = layout;
  bo.dtype = dt;
  bo.threads = trainer.train_program().threads();
  bo.shift = static_cast<int>(o.shift);
  if (mpi) {
    bo.shard = mpi->rank();
    bo.shards = mpi->size();
  }
  gg::train::Batches batches(*train_set, bo);
  if (!o.load.empty()) trainer.load(o.load);
  if (!o.resume.empty()) trainer.resume(o.resume, batches);
  auto params_fingerprint = [&] {
    std::string h;
    for (const std::string& name : trainer.train_program().param_names()) {
      const gg::TensorView v = trainer.train_program().param(name);
      h += gg::train::hex(gg::train::fingerprint(v.data, gg::byte_size(v.numel(), v.dtype)));
    }
    return gg::train::hex(gg::train::fingerprint(h.data(), h.size()));
  };

  const bool full_batch = batches.batch_size() == train_set->count;
  gg::train::FitOptions fo;
  std::int64_t run_steps = o.iterations;
  if (o.epochs > 0 && (__builtin_mul_overflow(o.epochs, batches.steps_per_epoch(), &run_steps) || run_steps > kMaxSteps))
    throw UsageError("--epochs " + std::to_string(o.epochs) + " of " + std::to_string(batches.steps_per_epoch()) +
                     " steps each is more than the " + std::to_string(kMaxSteps) + " steps a run may take");
  if (o.epochs > 0 && !full_batch)
    fo.epochs = o.epochs;
  else
    fo.steps = run_steps;
  fo.max_param_abs = o.max_param_abs;
  fo.stop_after_epochs = o.stop_after_epochs;
  fo.validation = val ? &*val : nullptr;
  fo.checkpoint = o.save;
  const std::int64_t total = fo.steps > 0 ? fo.steps : fo.epochs * batches.steps_per_epoch();
  if (mpi) {
    // A rank that trained another network or other data would sum gradients of another shape or
    // meaning: compare everything that decides the run once, before the first step.
    auto data_print = [](const gg::train::Dataset& d) {
      return std::to_string(d.count) + " examples " + to_string(d.example) + " " +
             gg::train::hex(gg::train::fingerprint(d.pixels.data(), d.pixels.size(),
                                                   gg::train::fingerprint(d.labels.data(), d.labels.size() * 8)));
    };
    mpi->check_same({{"network", spec.text() + " " + gg::nn::layout_name(layout) + " " + gg::dtype_name(dt)},
                     {"training data", data_print(*train_set)},
                     {"batches", "batch " + std::to_string(batches.batch_size()) + " seed " + std::to_string(o.seed) +
                                     (o.shuffle ? " shuffled" : " in order") + " shift " + std::to_string(o.shift)},
                     {"run", std::to_string(trainer.steps_done()) + " to " + std::to_string(total) + " steps"},
                     {"optimizer", to.optimizer.text() + ", " + to.schedule.text()},
                     {"parameters", params_fingerprint()}});
  }
  if (trainer.steps_done() >= total)
    throw UsageError("the checkpoint has done " + std::to_string(trainer.steps_done()) + " steps already; the run ends at " +
                     std::to_string(total) + " (raise --epochs or --iterations)");

  gg::Program& step_program = trainer.train_program();
  // Under mpirun the step is profiled (a clock read per kernel) to report what the all-reduce
  // costs: packing the values into its buffer (the weight gradients' GEMMs write there
  // themselves, gemm_pack, and count as compute), then the communicator's copy where the other
  // ranks read it, the wait for them and the sum.
  if (mpi) step_program.set_profiling(true);
  if (o.verbose && rank0()) {
    std::fprintf(stderr, "# %s, network %s (%s), batch %lld, %lld steps, %d threads, %s init, %s, schedule %s\n",
                 gg::dtype_name(dt), spec.text().c_str(), gg::nn::layout_name(layout),
                 static_cast<long long>(batches.batch_size()), static_cast<long long>(total), step_program.threads(),
                 o.init.c_str(), to.optimizer.text().c_str(), to.schedule.text().c_str());
    std::fprintf(stderr, "# planned arena %.1f MB (%.1f MB without sharing), %d kernels per step, parameters %.1f KB\n",
                 static_cast<double>(step_program.planned_bytes(batches.batch_size())) / 1e6,
                 static_cast<double>(step_program.unshared_bytes(batches.batch_size())) / 1e6,
                 step_program.num_steps(batches.batch_size()), static_cast<double>(step_program.param_bytes()) / 1e3);
  }

  gg::train::Normalization test_norm;
  test_norm.divisor = o.test_divisor;
  auto test_accuracy = [&] { return trainer.evaluate(test, test_norm).accuracy * 100.0; };

  std::vector<gg::tools::MetricsRow> rows;
  std::vector<double> losses, accs, test_accs, test_at;
  gg::tools::Progress bar(total - trainer.steps_done(), o.progress && rank0() && gg::tools::stderr_is_terminal());
  const std::int64_t first_step = trainer.steps_done();
  // Under mpirun rank 0 also times each step and the communicator's part of it (copy, wait, sum;
  // batch norm's sums of its statistics too), for medians: now and then the machine stalls a rank
  // for up to a millisecond and the other waits, which a mean over the run counts in full.
  gg::tools::Durations step_times, sum_times;
  auto step_start = std::chrono::steady_clock::now();
  double sum_before = 0;
  gg::train::Callbacks cb;
  cb.on_step = [&](const gg::train::StepInfo& s) {
    // Every rank evaluates its shard of the test set at the same steps (Trainer::evaluate sums).
    std::optional<double> test_acc;
    if (o.eval_every > 0 && (s.step % o.eval_every == 0 || s.step == total - 1)) test_acc = test_accuracy();
    if (!rank0()) return true;  // the others only train: rank 0 has the same (global) loss
    if (mpi) {
      const auto now = std::chrono::steady_clock::now();
      if (s.step > first_step) {  // the first also made the shared window
        step_times.add(std::chrono::duration<double>(now - step_start).count());
        sum_times.add(mpi->seconds_in_sum() - sum_before);
      }
      step_start = now;
      sum_before = mpi->seconds_in_sum();
    }
    gg::tools::MetricsRow row{s.step, s.loss, s.accuracy * 100.0, std::nullopt};
    if (test_acc) {
      row.test_accuracy = test_acc;
      test_accs.push_back(*test_acc);
      test_at.push_back(static_cast<double>(s.step - first_step + 1));  // where the plot draws this step's loss
    }
    if (o.verbose && s.step == first_step) {
      bar.clear();
      for (const gg::Program::ProductChoice& c : step_program.product_choices())
        std::fprintf(stderr, "# %s '%s': %s (input '%s' %s)\n", c.op.c_str(), c.name.c_str(), c.sparse ? "sparse" : "dense GEMM",
                     c.input.c_str(),
                     c.density < 0 ? "fed without its nonzeros"
                                   : format("%.3f dense, sparse at most %g", c.density, o.sparse_density).c_str());
    }
    // Kept only for the files that want them: a long run would otherwise grow them without need.
    if (!o.metrics.empty()) rows.push_back(row);
    if (!o.plot.empty()) {
      losses.push_back(s.loss);
      accs.push_back(s.accuracy * 100.0);
    }
    if (s.step % o.print_every == 0) {
      bar.clear();
      std::printf("Iteration: %lld | Accuracy: %.3f%% | Loss:%.3f\n", static_cast<long long>(s.step), s.accuracy * 100.0, s.loss);
      std::fflush(stdout);
    }
    bar.update(s.step + 1 - first_step, format("loss %.3f", s.loss));
    return true;
  };
  cb.on_epoch = [&](const gg::train::EpochInfo& e) {
    if (full_batch || !rank0()) return true;  // every step is an epoch: the iteration lines say it all
    bar.clear();
    std::printf("Epoch %lld/%lld | loss %.4f | train %.2f%%%s | %.0f images/s | %.1f s\n", static_cast<long long>(e.epoch + 1),
                static_cast<long long>(total / batches.steps_per_epoch()), e.loss, e.accuracy * 100.0,
                e.val_accuracy ? format(" | val %.2f%%", *e.val_accuracy * 100.0).c_str() : "", e.images_per_second, e.elapsed);
    std::fflush(stdout);
    return true;
  };

  const auto t_train = std::chrono::steady_clock::now();
  gg::train::FitResult fit;
  try {
    fit = trainer.fit(batches, fo, cb);
  } catch (const gg::train::Diverged& d) {
    bar.clear();
    const bool kept = !o.save.empty() && std::filesystem::exists(o.save);
    throw std::runtime_error("training diverged at iteration " + std::to_string(d.step) + ": " + d.reason +
                             " (try a smaller --lr; --max-param-abs sets the limit); " +
                             (kept ? "the last checkpoint in " + o.save + " is kept" : std::string("nothing was saved")));
  }
  bar.finish();
  const double train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_train).count();
  const std::int64_t done = fit.steps - first_step;
  const double sum_seconds = mpi ? mpi->seconds_in_sum() : 0;  // training's, not the evaluation's below
  const double test_acc = test_accuracy();                       // on every rank: each evaluates its shard
  if (mpi) {
    // The same gradients on every rank make the same parameters: a difference here is a bug.
    double reduce_seconds = 0, kernel_seconds = 0;
    for (const gg::Program::StepProfile& s : step_program.profile()) {
      kernel_seconds += s.seconds;
      if (s.op == "pack" || s.op == "all_reduce") reduce_seconds += s.seconds;
    }
    // What moving the gradients between the ranks' cores costs on this machine, now (virtual
    // machines move their cores between dies): the context for the figures below.
    const double round_trip = mpi->core_round_trip();
    mpi->check_same({{"parameters after training", params_fingerprint()}});
    if (!rank0()) return 0;
    std::fprintf(stderr,
                 "# %d ranks x %d threads; rank 0 in the all-reduce (packs, copy, wait, sum) %.3f s = %.1f%% of its "
                 "kernels' time, %.1f%% of training (the communicator's copies, waits and sums, batch norm's included, %.1f%%)\n",
                 mpi->size(), step_program.threads(), reduce_seconds, 100.0 * reduce_seconds / kernel_seconds,
                 100.0 * reduce_seconds / train_seconds, 100.0 * sum_seconds / train_seconds);
    if (step_times.total > 0)
      std::fprintf(stderr,
                   "# rank 0 per step, median (90th percentile): step %.1f us (%.1f), copy, wait and sum %.1f us (%.1f) = "
                   "%.1f%% of the median step\n",
                   1e6 * step_times.quantile(0.5), 1e6 * step_times.quantile(0.9), 1e6 * sum_times.quantile(0.5),
                   1e6 * sum_times.quantile(0.9), 100.0 * sum_times.quantile(0.5) / step_times.quantile(0.5));
    if (round_trip > 0)
      std::fprintf(stderr, "# a cache line's round trip between the cores of ranks 0 and 1: %.0f ns (docs/distributed.md)\n",
                   1e9 * round_trip);
  }
  std::printf("Accuracy: %.2f %%\n", test_acc);
  std::fflush(stdout);
  std::fprintf(stderr, "# %lld iterations in %.2f s (%.1f ms/iteration), total %.2f s\n", static_cast<long long>(done),
               train_seconds, 1e3 * train_seconds / static_cast<double>(std::max<std::int64_t>(1, done)),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count());

  if (!o.metrics.empty()) gg::tools::write_metrics_csv(o.metrics, rows);
  if (!o.plot.empty() && !losses.empty() && !accs.empty()) {
    std::ostringstream title;
    title << "Training Results: " << format("%.2f", accs.back()) << "% (test " << format("%.2f", test_acc)
          << "%), learning rate=" << o.lr;
    gg::tools::plot_training_curves(o.plot, losses, accs, title.str(), test_accs, static_cast<int>(o.eval_every), test_at);
  }
  if (!o.save.empty())
    trainer.save(o.save, &batches, {{"data", o.data}, {"test_accuracy", format("%.2f", test_acc)}});
  if (!o.export_onnx.empty()) {
    trainer.export_onnx(o.export_onnx, bo.normalization);
    std::fprintf(stderr, "# wrote the ONNX model %s\n", o.export_onnx.c_str());
  }
  return 0;
}

}  // namespace

// Under mpirun (Open MPI sets OMPI_COMM_WORLD_SIZE in each rank's environment) MPI starts before
// the flags are parsed. An error every rank meets alike (a bad flag, ranks that disagree) ends
// each rank normally, rank 0 saying why; an error of one rank alone ends the whole job
// (MPI_Abort), since the others would wait for it forever.
int main(int argc, char** argv) {
  std::unique_ptr<gg::train::Mpi> world;
  if (std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE")) {
    if (!gg::train::mpi_available()) {
      const char* n = std::getenv("OMPI_COMM_WORLD_SIZE");
      if (n && std::string(n) != "1") {
        std::fprintf(stderr, "mnist-train: started by mpirun, but this gradgraph was built without MPI "
                             "(scripts/install-deps, then build again)\n");
        return 1;
      }
    } else {
      world = std::make_unique<gg::train::Mpi>(argc, argv);
      mpi = world.get();
    }
  }
  if (!mpi) return gg::tools::cli_main("mnist-train", argc, argv, parse, train);
  gg::io::remove_temp_files_on_signals();
  try {
    auto o = parse(argc, argv);
    return o ? train(*o) : 0;
  } catch (const UsageError& e) {
    if (rank0()) std::fprintf(stderr, "mnist-train: %s (see --help)\n", e.what());
    return 2;
  } catch (const gg::train::CollectiveError& e) {
    if (rank0()) std::fprintf(stderr, "mnist-train: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mnist-train: rank %d of %d: %s; ending every rank\n", mpi->rank(), mpi->size(), e.what());
    mpi->abort(1);
  }
}
