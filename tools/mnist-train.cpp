// mnist-train: the NumpyNet notebook's MLP (784-H-10, ReLU, softmax cross-entropy) defined in
// the graph API, trained full-batch (the notebook) or in mini-batches, with metrics, plots and
// checkpoints. `mnist-train --help` documents every flag.
//
// Data layout: images are kept example-major ([N][784], as stored in the IDX file) and fed to
// the graph's X {784, batch} through a strided view (strides 1 and 784): the notebook's
// features-x-examples layout without a transposed copy; BLIS reads the strides.
#include <gradgraph/gradgraph.hpp>
#include <gradgraph/idx.hpp>
#include <gradgraph/safetensors.hpp>

#include "common/metrics.hpp"
#include "common/plot.hpp"
#include "common/progress.hpp"

#include <boost/program_options.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace po = boost::program_options;

namespace {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string data, metrics, plot, save, load, optimizer;
  std::int64_t hidden = 64, iterations = 500, batch_size = 0, epochs = 0, print_every = 100, eval_every = 0;
  double lr = 0.1, momentum = 0.9, test_divisor = 255.0;
  std::uint64_t seed = 33;
  std::string init = "numpy", dtype = "float32";
  int threads = 0;
  bool verbose = false, progress = true, shuffle = true;
};

// The dataset in the dtype of the graph: images example-major, labels as int64 class indices
// and as a one-hot matrix {10, N} (the notebook's layout; gathered per batch for mini-batches).
template <typename T>
struct Dataset {
  std::int64_t n = 0, features = 0;
  std::vector<T> images;               // [n][features]
  std::vector<std::int64_t> labels;    // [n]
  std::vector<T> onehot;               // [10][n]
};

// Pixels are divided in float32 (the notebook's `astype('float32') / 255`) and then promoted,
// exactly, to the graph's dtype.
template <typename T>
Dataset<T> to_dataset(gg::data::Split&& s, double divisor, bool with_onehot) {
  Dataset<T> d;
  d.n = s.count;
  d.features = s.rows * s.cols;
  d.images.resize(static_cast<std::size_t>(d.n * d.features));
  const float div = static_cast<float>(divisor);
  for (std::size_t i = 0; i < d.images.size(); ++i) d.images[i] = static_cast<T>(static_cast<float>(s.images[i]) / div);
  std::vector<std::uint8_t>().swap(s.images);  // keep the peak memory at one copy of the pixels
  d.labels.resize(static_cast<std::size_t>(d.n));
  for (std::int64_t i = 0; i < d.n; ++i) d.labels[static_cast<std::size_t>(i)] = s.labels[static_cast<std::size_t>(i)];
  if (with_onehot) {
    d.onehot.assign(static_cast<std::size_t>(10 * d.n), T(0));
    for (std::int64_t i = 0; i < d.n; ++i) d.onehot[static_cast<std::size_t>(s.labels[static_cast<std::size_t>(i)] * d.n + i)] = T(1);
  }
  return d;
}

std::string format(const char* fmt, double a, double b = 0, double c = 0) {
  char buf[256];
  std::snprintf(buf, sizeof buf, fmt, a, b, c);
  return buf;
}

void check_options(const Options& o) {
  auto bad = [](const std::string& flag, const std::string& what, const std::string& got) {
    throw UsageError("--" + flag + " " + what + " (got " + got + ")");
  };
  if (!(o.lr > 0) || !std::isfinite(o.lr)) bad("lr", "must be a positive number", format("%g", o.lr));
  if (o.hidden <= 0 || o.hidden > 1000000) bad("hidden", "must be between 1 and 1000000", std::to_string(o.hidden));
  if (o.iterations <= 0) bad("iterations", "must be at least 1", std::to_string(o.iterations));
  if (o.batch_size < 0) bad("batch-size", "must be 0 (full batch) or positive", std::to_string(o.batch_size));
  if (o.epochs < 0) bad("epochs", "must be 0 or positive", std::to_string(o.epochs));
  if (o.print_every <= 0) bad("print-every", "must be at least 1", std::to_string(o.print_every));
  if (o.eval_every < 0) bad("eval-every", "must be 0 (off) or positive", std::to_string(o.eval_every));
  if (!(o.test_divisor > 0) || !std::isfinite(o.test_divisor))
    bad("test-divisor", "must be a positive number", format("%g", o.test_divisor));
  if (o.threads < 0 || o.threads > 64) bad("threads", "must be 0 (all cores) to 64", std::to_string(o.threads));
  if (!(o.momentum >= 0 && o.momentum < 1)) bad("momentum", "must be in [0, 1)", format("%g", o.momentum));
  if (o.init != "numpy" && o.init != "default") bad("init", "must be numpy or default", o.init);
  if (o.dtype != "float32" && o.dtype != "float64") bad("dtype", "must be float32 or float64", o.dtype);
  if (o.optimizer != "sgd" && o.optimizer != "momentum" && o.optimizer != "adam")
    bad("optimizer", "must be sgd, momentum or adam", o.optimizer);
}

std::optional<Options> parse(int argc, char** argv) {
  Options o;
  po::options_description desc(
      "mnist-train: train the NumpyNet MLP (784-H-10, ReLU, softmax) on MNIST with gradgraph.\n"
      "Prints the notebook's lines (accuracy and loss of the forward pass before each update),\n"
      "then the test accuracy.\n\nOptions");
  // clang-format off
  desc.add_options()
    ("help,h", "show this help and exit")
    ("data", po::value(&o.data)->default_value(gg::data::default_data_dir()),
       "directory with the four IDX files, raw or .gz (MNIST: fetched by scripts/fetch-mnist; "
       "Fashion-MNIST: /usr/share/datasets/fashion-mnist)")
    ("hidden", po::value(&o.hidden)->default_value(64), "hidden layer width")
    ("lr", po::value(&o.lr)->default_value(0.1), "learning rate")
    ("iterations", po::value(&o.iterations)->default_value(500), "parameter updates (steps)")
    ("batch-size", po::value(&o.batch_size)->default_value(0), "examples per step; 0 = the full training set (the notebook)")
    ("epochs", po::value(&o.epochs)->default_value(0), "with --batch-size: train this many passes over the data instead of --iterations")
    ("no-shuffle", "mini-batches in file order instead of a fresh shuffle every epoch")
    ("optimizer", po::value(&o.optimizer)->default_value("sgd"), "sgd | momentum | adam")
    ("momentum", po::value(&o.momentum)->default_value(0.9), "momentum coefficient for --optimizer momentum")
    ("seed", po::value(&o.seed)->default_value(33), "seed of the initialisers (and of the shuffles)")
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
    ("save", po::value(&o.save), "save the trained parameters (safetensors) to this file")
    ("load", po::value(&o.load), "start from parameters saved by --save (instead of the initialisers)")
    ("threads", po::value(&o.threads)->default_value(0), "threads for GEMMs and kernels (0: all cores)")
    ("no-progress", "no progress bar even on a terminal")
    ("verbose,v", "print the plan (buffer bytes, schedule length) and timings on stderr");
  // clang-format on
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    if (vm.count("help")) {
      std::cout << desc << "\n";
      return std::nullopt;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  o.verbose = vm.count("verbose") > 0;
  o.progress = vm.count("no-progress") == 0;
  o.shuffle = vm.count("no-shuffle") == 0;
  check_options(o);
  return o;
}

struct Net {
  gg::Graph g;
  gg::Value X, Y, L, loss, accuracy;
  std::vector<gg::Value> params, updates;
  Net(gg::DType dt, const Options& o) : g(dt) {
    X = g.input("X", {784, gg::dyn});
    Y = g.input("Y", {10, gg::dyn});
    L = g.input("labels", {gg::dyn}, gg::i64);
    // The notebook draws W1 then W2 from one stream; zero biases draw nothing.
    gg::Value W1 = g.param("W1", {o.hidden, 784}, gg::he_normal());
    gg::Value b1 = g.param("b1", {o.hidden, 1});
    gg::Value W2 = g.param("W2", {10, o.hidden}, gg::he_normal());
    gg::Value b2 = g.param("b2", {10, 1});
    gg::Value A1 = gg::relu(gg::matmul(W1, X) + b1);
    gg::Value Z2 = gg::matmul(W2, A1) + b2;
    loss = gg::softmax_cross_entropy(Z2, Y, 0).named("loss");
    accuracy = gg::mean(gg::equal(gg::argmax(Z2, 0), L)).named("accuracy");
    params = {W1, b1, W2, b2};
    std::vector<gg::Value> grads = gg::gradients(loss, params);
    if (o.optimizer == "adam")
      updates = gg::adam(params, grads, {o.lr, 0.9, 0.999, 1e-8, 0.0});
    else
      updates = gg::sgd(params, grads, {o.lr, o.optimizer == "momentum" ? o.momentum : 0.0, 0.0});
  }
};

template <typename T>
gg::TensorView images_view(const Dataset<T>& d, std::int64_t begin, std::int64_t count, const T* base = nullptr) {
  // {features, count} over example-major storage: strides (1, features).
  gg::Strides st;
  st[0] = 1;
  st[1] = d.features;
  const T* p = base ? base : d.images.data() + begin * d.features;
  return gg::TensorView(const_cast<T*>(p), gg::dtype_of<T>(), gg::Shape{d.features, count}, st);
}

template <typename T>
int train(const Options& o) {
  const gg::DType dt = gg::dtype_of<T>();
  auto t_start = std::chrono::steady_clock::now();
  Dataset<T> train_set = to_dataset<T>(gg::data::load_split(o.data, "train"), 255.0, true);
  Dataset<T> test_set = to_dataset<T>(gg::data::load_split(o.data, "t10k"), o.test_divisor, false);
  if (train_set.features != 784 || test_set.features != 784)
    throw gg::data::DataError(o.data + ": images are " + std::to_string(train_set.features) +
                              " pixels, the network takes 28x28 = 784");

  Net net(dt, o);
  gg::CompileOptions co;
  co.threads = o.threads;
  co.seed = o.seed;
  co.rng = o.init == "numpy" ? gg::RngKind::numpy : gg::RngKind::standard;
  std::vector<gg::Value> fetch = net.updates;
  fetch.push_back(net.loss);
  fetch.push_back(net.accuracy);
  gg::Program step(net.g, fetch, co);
  gg::CompileOptions eo = co;
  eo.share_params_with = &step;
  gg::Program eval(net.g, {net.accuracy}, eo);

  if (!o.load.empty()) {
    // Every parameter (and optimizer state) of the network must be in the file: a checkpoint of
    // another network must not load half-way and train from a mix.
    gg::io::SafetensorsFile f = gg::io::load_safetensors(o.load);
    for (const std::string& name : step.param_names()) {
      const gg::Tensor* t = nullptr;
      for (const auto& [n, v] : f.tensors)
        if (n == name) t = &v;
      if (!t) {
        if (gg::Value v = net.g.find(name); v.node().op_name() == std::string("state")) continue;  // optimizer state: starts fresh
        throw std::runtime_error(o.load + ": no tensor '" + name + "' (is it a checkpoint of this network?)");
      }
      try {
        step.set_param(name, t->view());
      } catch (const std::invalid_argument& e) {
        throw std::runtime_error(o.load + ": " + e.what());
      }
    }
  }

  const std::int64_t n = train_set.n;
  const std::int64_t bs = o.batch_size == 0 ? n : std::min(o.batch_size, n);
  const std::int64_t steps_per_epoch = (n + bs - 1) / bs;
  const std::int64_t iterations = o.epochs > 0 && o.batch_size > 0 ? o.epochs * steps_per_epoch : o.iterations;

  // Mini-batch buffers (gathered rows), allocated once.
  std::vector<T> bx, by;
  std::vector<std::int64_t> bl;
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
  gg::Generator shuffler(gg::RngKind::standard, o.seed);
  if (bs < n) {
    bx.resize(static_cast<std::size_t>(bs * 784));
    by.resize(static_cast<std::size_t>(bs * 10));
    bl.resize(static_cast<std::size_t>(bs));
  }

  auto evaluate = [&]() {
    eval.run({{net.X, images_view(test_set, 0, test_set.n)}, {net.L, gg::TensorView(test_set.labels.data(), gg::Shape{test_set.n})}});
    return eval.scalar(net.accuracy) * 100.0;
  };

  if (o.verbose) {
    std::fprintf(stderr, "# %s, hidden %lld, batch %lld, %lld iterations, %d threads, %s init\n", gg::dtype_name(dt),
                 static_cast<long long>(o.hidden), static_cast<long long>(bs), static_cast<long long>(iterations),
                 step.threads(), o.init.c_str());
    std::fprintf(stderr, "# planned arena %.1f MB (%.1f MB without sharing), %d kernels per step, parameters %.1f KB\n",
                 static_cast<double>(step.planned_bytes(bs)) / 1e6, static_cast<double>(step.unshared_bytes(bs)) / 1e6,
                 step.num_steps(bs), static_cast<double>(step.param_bytes()) / 1e3);
  }

  std::vector<gg::tools::MetricsRow> rows;
  std::vector<double> losses, accs, test_accs;
  rows.reserve(static_cast<std::size_t>(iterations));
  gg::tools::Progress bar(iterations, o.progress && gg::tools::stderr_is_terminal());
  auto t_train = std::chrono::steady_clock::now();
  std::int64_t cursor = n;  // position in the current epoch's order
  for (std::int64_t it = 0; it < iterations; ++it) {
    if (bs == n) {
      step.run({{net.X, images_view(train_set, 0, n)},
                {net.Y, gg::TensorView(train_set.onehot.data(), dt, gg::Shape{10, n})},
                {net.L, gg::TensorView(train_set.labels.data(), gg::Shape{n})}});
    } else {
      if (cursor >= n) {
        if (o.shuffle) shuffler.shuffle(order);
        cursor = 0;
      }
      const std::int64_t b = std::min(bs, n - cursor);
      // The gather is memory-latency bound (random rows): split it over the program's threads
      // (the same team size as its GEMMs, so libgomp reuses the team).
      const int gather_threads = step.threads();
#pragma omp parallel for num_threads(gather_threads) schedule(static)
      for (std::int64_t j = 0; j < b; ++j) {
        const std::int64_t src = order[static_cast<std::size_t>(cursor + j)];
        std::memcpy(bx.data() + j * 784, train_set.images.data() + src * 784, 784 * sizeof(T));
        bl[static_cast<std::size_t>(j)] = train_set.labels[static_cast<std::size_t>(src)];
        for (int c = 0; c < 10; ++c) by[static_cast<std::size_t>(c * b + j)] = train_set.onehot[static_cast<std::size_t>(c * n + src)];
      }
      cursor += b;
      step.run({{net.X, images_view(train_set, 0, b, bx.data())},
                {net.Y, gg::TensorView(by.data(), dt, gg::Shape{10, b})},
                {net.L, gg::TensorView(bl.data(), gg::Shape{b})}});
    }
    const double loss = step.scalar(net.loss), acc = step.scalar(net.accuracy) * 100.0;
    if (!std::isfinite(loss)) {
      bar.clear();
      throw std::runtime_error("the loss became " + std::string(std::isnan(loss) ? "NaN" : "infinite") + " at iteration " +
                               std::to_string(it) + " (try a smaller --lr); nothing was saved");
    }
    gg::tools::MetricsRow row{it, loss, acc, std::nullopt};
    if (o.eval_every > 0 && (it % o.eval_every == 0 || it == iterations - 1)) {
      row.test_accuracy = evaluate();
      test_accs.push_back(*row.test_accuracy);
    }
    rows.push_back(row);
    losses.push_back(loss);
    accs.push_back(acc);
    if (it % o.print_every == 0) {
      bar.clear();
      std::printf("Iteration: %lld | Accuracy: %.3f%% | Loss:%.3f\n", static_cast<long long>(it), acc, loss);
      std::fflush(stdout);
    }
    bar.update(it + 1, format("loss %.3f", loss));
  }
  bar.finish();
  const double train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_train).count();
  const double test_acc = evaluate();
  std::printf("Accuracy: %.2f %%\n", test_acc);
  std::fflush(stdout);
  std::fprintf(stderr, "# %lld iterations in %.2f s (%.1f ms/iteration), total %.2f s\n", static_cast<long long>(iterations),
               train_seconds, 1e3 * train_seconds / static_cast<double>(iterations),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count());

  if (!o.metrics.empty()) gg::tools::write_metrics_csv(o.metrics, rows);
  if (!o.plot.empty()) {
    std::ostringstream title;
    title << "Training Results: " << format("%.2f", accs.back()) << "% (test " << format("%.2f", test_acc)
          << "%), learning rate=" << o.lr;
    gg::tools::plot_training_curves(o.plot, losses, accs, title.str(), test_accs, static_cast<int>(o.eval_every));
  }
  if (!o.save.empty()) {
    std::vector<std::pair<std::string, gg::TensorView>> tensors;
    for (const std::string& name : step.param_names()) tensors.emplace_back(name, step.param(name));
    gg::io::save_safetensors(o.save, tensors,
                             {{"format", "gradgraph mnist-train"},
                              {"network", "784-" + std::to_string(o.hidden) + "-10 relu softmax, X {784, batch}"},
                              {"graph", gg::describe(net.g)},
                              {"iterations", std::to_string(iterations)},
                              {"test_accuracy", format("%.2f", test_acc)}});
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::optional<Options> o = parse(argc, argv);
    if (!o) return 0;
    return o->dtype == "float64" ? train<double>(*o) : train<float>(*o);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "mnist-train: %s (see --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mnist-train: %s\n", e.what());
    return 1;
  }
}
