// Data parallelism. In one process (so that the sanitizer build runs them too): the all-reduce
// ops with a fake communicator, sharded batches, and ranks simulated by threads that must train
// exactly as one process fed the whole batch. Under mpirun (when the build has MPI, which
// scripts/install-deps installs): mnist-train on 2 ranks against one process, ranks that
// disagree, and a rank that dies.
#include "support.hpp"

#include <gradgraph/gradgraph.hpp>
#include <gradgraph/safetensors.hpp>

#include "../tools/common/metrics.hpp"

#include <catch2/catch.hpp>

#include <omp.h>

#include <algorithm>
#include <array>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>

namespace {

using Catch::Matchers::Contains;
using gg::Shape;
using gg::test::values;
namespace train = gg::train;
namespace nn = gg::nn;

// Learnable fake images: 4x4 pixels, class c brightens row c (of 3 classes), plus noise on
// every pixel, or with `sparse` on one pixel in eight (then 30% of the pixels are nonzero, and
// the products that read the images take the sparse kernels).
train::Dataset fake_data(std::int64_t n, bool sparse = false) {
  train::Dataset d;
  d.name = "fake";
  d.count = n;
  d.example = Shape{4, 4};
  d.classes = 3;
  std::uint32_t state = 5;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t c = (i * 5 + 1) % 3;
    d.labels.push_back(c);
    for (int p = 0; p < 16; ++p) {
      state = state * 1664525u + 1013904223u;
      const std::uint32_t noise = sparse && (state >> 20) % 8 != 0 ? 0 : state >> 27;
      d.pixels.push_back(static_cast<std::uint8_t>(noise + (p / 4 == c ? 180 : 0)));
    }
  }
  return d;
}

// Another rank whose buffer is `other`: sum() adds it, and counts the messages.
struct FakeRanks : gg::Communicator {
  std::vector<double> other;
  int calls = 0;
  std::int64_t last_count = 0;
  int rank() const override { return 0; }
  int size() const override { return 2; }
  void sum(void* data, std::int64_t count, gg::DType dtype) override {
    REQUIRE(dtype == gg::f64);
    REQUIRE(static_cast<std::size_t>(count) == other.size());
    for (std::int64_t i = 0; i < count; ++i) static_cast<double*>(data)[i] += other[static_cast<std::size_t>(i)];
    ++calls;
    last_count = count;
  }
};

// Ranks as threads of one process: rank 0 sums the buffers in rank order, the others copy.
struct Threads {
  explicit Threads(int n) : size(n), sync(n), buffers(static_cast<std::size_t>(n)) {}
  int size;
  std::barrier<> sync;
  std::vector<void*> buffers;
};
struct ThreadRank : gg::Communicator {
  Threads* world = nullptr;
  int r = 0;
  int rank() const override { return r; }
  int size() const override { return world->size; }
  void sum(void* data, std::int64_t count, gg::DType) override {
    world->buffers[static_cast<std::size_t>(r)] = data;
    world->sync.arrive_and_wait();
    if (r == 0)
      for (int k = 1; k < world->size; ++k)
        for (std::int64_t i = 0; i < count; ++i)
          static_cast<double*>(data)[i] += static_cast<const double*>(world->buffers[static_cast<std::size_t>(k)])[i];
    world->sync.arrive_and_wait();
    if (r != 0) std::memcpy(data, world->buffers[0], static_cast<std::size_t>(count) * sizeof(double));
    world->sync.arrive_and_wait();
  }
};

train::TrainOptions momentum_options() {
  train::TrainOptions o;
  o.optimizer.kind = train::Optimizer::Kind::momentum;
  o.optimizer.lr = 0.3;
  o.compile.threads = 1;
  o.compile.seed = 7;
  return o;
}

train::BatchOptions batches_of(std::int64_t size, int shard = 0, int shards = 1) {
  train::BatchOptions b;
  b.batch_size = size;
  b.seed = 11;
  b.dtype = gg::f64;
  b.shard = shard;
  b.shards = shards;
  return b;
}

struct Trained {
  std::vector<std::vector<double>> params;
  std::vector<double> losses;
  std::vector<gg::Program::ProductChoice> products;  // of the last step
};

// `shards` ranks (threads) fit `steps` steps of batches of `batch` on d; each rank's parameters
// and the losses its fit reported.
struct FitSetup {
  nn::Layout layout = nn::Layout::columns;
  bool local_batch_norm = false;
};
// Runs body(comm, r) for ranks r = 0 .. shards - 1, each on a thread with its ThreadRank (null for
// one rank, which is one process); each rank's result. A rank that throws fails the test.
template <typename R, typename F>
std::vector<R> on_thread_ranks(int shards, F body) {
  Threads world(shards);
  std::vector<R> out(static_cast<std::size_t>(shards));
  std::vector<std::string> errors(static_cast<std::size_t>(shards));
  std::vector<std::thread> ranks;
  for (int r = 0; r < shards; ++r)
    ranks.emplace_back([&, r] {
      try {
        ThreadRank comm;
        comm.world = &world;
        comm.r = r;
        out[static_cast<std::size_t>(r)] = body(shards > 1 ? &comm : nullptr, r);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
      }
    });
  for (std::thread& t : ranks) t.join();
  for (const std::string& e : errors) REQUIRE(e.empty());
  return out;
}

std::vector<Trained> fit_on_ranks(const train::Dataset& d, int shards, std::int64_t batch, std::int64_t steps,
                                  const std::string& spec = "dense6,relu,dense3", const FitSetup& setup = {}) {
  return on_thread_ranks<Trained>(shards, [&](gg::Communicator* comm, int r) {
    gg::Graph g(gg::f64);
    const train::Model m = train::classifier(g, nn::parse(spec), Shape{4, 4}, 3, setup.layout);
    train::TrainOptions o = momentum_options();
    o.communicator = comm;
    o.local_batch_norm = setup.local_batch_norm;
    train::Trainer t(g, m, o);
    train::BatchOptions bo = batches_of(batch, r, shards);
    bo.layout = setup.layout;
    train::Batches b(d, bo);
    train::Callbacks cb;
    Trained mine;
    cb.on_step = [&](const train::StepInfo& s) {
      mine.losses.push_back(s.loss);
      return true;
    };
    t.fit(b, {.steps = steps}, cb);
    mine.products = t.train_program().product_choices();
    for (const std::string& name : t.train_program().param_names())
      mine.params.push_back(values(t.train_program().param(name)));
    return mine;
  });
}

double relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += a[i] * a[i];
  return std::sqrt(num / den);
}

// Within 1e-12 relative, or 1e-13 absolute for values that are rounding noise around zero (the
// bias of a layer before batch norm, whose gradient is zero but for rounding).
bool close(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += a[i] * a[i];
  return a.size() == b.size() && std::sqrt(num) <= 1e-12 * std::sqrt(den) + 1e-13;
}

}  // namespace

// mnist-train's per-step medians under mpirun (tools/common/metrics.hpp): a few stalls of a
// millisecond move the mean, not the median.
TEST_CASE("step durations give their quantiles to 1%, from microseconds to seconds", "[distributed]") {
  gg::tools::Durations d;
  CHECK(d.quantile(0.5) == 0);
  for (int i = 0; i < 90; ++i) d.add(100e-6 + i * 1e-6);  // 100 .. 189 us
  for (int i = 0; i < 10; ++i) d.add(5e-3);                // stalls
  auto near = [](double a, double b) { return std::abs(a - b) <= 0.01 * b; };
  CHECK(near(d.quantile(0.5), 150e-6));
  CHECK(near(d.quantile(0.1), 110e-6));
  CHECK(near(d.quantile(0.89), 189e-6));
  CHECK(near(d.quantile(0.95), 5e-3));
  gg::tools::Durations slow;  // a convolutional network's steps
  for (int i = 0; i < 5; ++i) slow.add(0.030 + i * 0.001);
  CHECK(near(slow.quantile(0.5), 0.032));
  slow.add(-1);  // a clock that went back: the shortest bucket
  CHECK(slow.quantile(0.0) < 1e-6);
}

TEST_CASE("all_reduce_sum sums every value across ranks in one message", "[distributed]") {
  gg::Graph g(gg::f64);
  const gg::Value a = g.input("a", {2, 3}), b = g.input("b", {4});
  FakeRanks ranks;
  ranks.other = {10, 20, 30, 40, 50, 60, 1, 2, 3, 4};
  const std::vector<gg::Value> s = gg::all_reduce_sum({a * 1.0, b * 1.0}, ranks);
  gg::Program p(g, s);
  p.run({{a, gg::Tensor::from<double>({2, 3}, {1, 2, 3, 4, 5, 6})}, {b, gg::Tensor::from<double>({4}, {0.5, 0.5, 0.5, 0.5})}});
  CHECK(values(p.get(s[0])) == std::vector<double>{11, 22, 33, 44, 55, 66});
  CHECK(values(p.get(s[1])) == std::vector<double>{1.5, 2.5, 3.5, 4.5});
  CHECK(p.get(s[0]).shape == Shape{2, 3});
  CHECK(ranks.calls == 1);
  CHECK(ranks.last_count == 10);
}

TEST_CASE("all_reduce_mean weighs each rank's shard mean by its shard's size", "[distributed]") {
  // Here 4 examples with mean 2; the other rank 2 examples with mean 8 (it sends 2 * 8 and its
  // count 2): the global mean is (4 * 2 + 2 * 8) / 6 = 4.
  gg::Graph g(gg::f64);
  const gg::Value x = g.input("x", {gg::dyn});
  FakeRanks ranks;
  ranks.other = {16, 2};
  const std::vector<gg::Value> m = gg::all_reduce_mean({gg::mean(x)}, ranks);
  gg::Program p(g, m);
  p.run({{x, gg::Tensor::from<double>({4}, {1, 2, 3, 2})}});
  CHECK(p.scalar(m[0]) == 4.0);
}

TEST_CASE("all_reduce refuses values of different dtypes or with an open dimension", "[distributed]") {
  gg::Graph g(gg::f64);
  const gg::Value x = g.input("x", {3, gg::dyn}), i = g.input("i", {3}, gg::DType::i64);
  FakeRanks ranks;
  CHECK_THROWS_WITH(gg::all_reduce_sum({x}, ranks), Contains("open dimension"));
  CHECK_THROWS_WITH(gg::all_reduce_sum({gg::sum(x), i}, ranks), Contains("one float dtype"));
}

TEST_CASE("a data-parallel step sums before the update: the weight gradients' GEMMs write into the all-reduce buffer, not into the update", "[distributed]") {
  FakeRanks ranks;
  auto schedule = [&](gg::Communicator* comm) {
    gg::Graph g(gg::f64);
    const train::Model m = train::classifier(g, nn::parse("dense6,relu,dense3"), Shape{4, 4}, 3, nn::Layout::columns);
    train::TrainOptions o = momentum_options();
    o.optimizer.kind = train::Optimizer::Kind::sgd;
    o.communicator = comm;
    train::Trainer t(g, m, o);
    return t.train_program().schedule(8);
  };
  auto count = [](const std::vector<std::string>& steps, const std::string& op) {  // steps are "op name"
    return std::count_if(steps.begin(), steps.end(), [&](const std::string& s) { return s.rfind(op + " ", 0) == 0; });
  };
  const std::vector<std::string> alone = schedule(nullptr), parallel = schedule(&ranks);
  REQUIRE(count(alone, "gemm_sgd_update") > 0);  // one process folds the update into the weight gradient
  CHECK(count(parallel, "gemm_sgd_update") == 0);
  CHECK(count(parallel, "all_reduce") == 1);
  CHECK(count(parallel, "sgd_update") == 4);
  // Four gradients, the loss and the accuracy: the two weight gradients' GEMMs pack as they go.
  CHECK(count(parallel, "gemm_pack") == 2);
  CHECK(count(parallel, "pack") == 4);
}

TEST_CASE("the shards of a batch are exactly the batch one process sees, unequal shards included", "[distributed][batches]") {
  const train::Dataset d = fake_data(23);  // batches of 8: 8, 8 and 7 examples over 3 ranks
  auto rows = [](train::BatchOptions o) {  // example after example: the shards' x concatenate
    o.layout = nn::Layout::rows;
    return o;
  };
  train::Batches whole(d, rows(batches_of(8)));
  std::vector<std::unique_ptr<train::Batches>> shards;
  for (int r = 0; r < 3; ++r) shards.push_back(std::make_unique<train::Batches>(d, rows(batches_of(8, r, 3))));
  for (int step = 0; step < 6; ++step) {  // two epochs: each its own permutation
    const train::Batch& w = whole.next();
    std::vector<double> x, labels;
    std::int64_t sizes = 0;
    for (auto& s : shards) {
      const train::Batch& b = s->next();
      CHECK(b.global_size == w.size);
      CHECK(b.size >= w.size / 3);
      sizes += b.size;
      const std::vector<double> bx = values(gg::Tensor::copy_of(b.x, gg::f64).view()), bl = values(b.labels);
      x.insert(x.end(), bx.begin(), bx.end());
      labels.insert(labels.end(), bl.begin(), bl.end());
    }
    CHECK(sizes == w.size);
    CHECK(labels == values(w.labels));
    CHECK(x == values(gg::Tensor::copy_of(w.x, gg::f64).view()));
  }
}

TEST_CASE("a batch that would leave a rank without an example is refused", "[distributed][batches]") {
  const train::Dataset d = fake_data(17);  // batches of 8: the last one has 1 example
  CHECK_NOTHROW(train::Batches(d, batches_of(8, 0, 1)));
  CHECK_THROWS_WITH(train::Batches(d, batches_of(8, 1, 2)), Contains("the last batch of an epoch of 1 examples cannot be split over 2"));
  CHECK_THROWS_WITH(train::Batches(d, batches_of(8, 2, 2)), Contains("shard 2 of 2"));
}

TEST_CASE("ranks that each train on a shard end with the parameters of one process fed the whole batch", "[distributed]") {
  const train::Dataset d = fake_data(46);  // batches of 16: 16, 16, 14; over 3 ranks 5/5/6 and 4/5/5
  const std::vector<Trained> one = fit_on_ranks(d, 1, 16, 7);
  const std::vector<Trained> three = fit_on_ranks(d, 3, 16, 7);
  REQUIRE(one[0].params.size() == 8);  // W1, b1, W2, b2 and their velocities
  for (const Trained& rank : three) {
    REQUIRE(rank.params.size() == 8);
    for (std::size_t i = 0; i < 8; ++i) CHECK(relative_difference(one[0].params[i], rank.params[i]) < 1e-12);
    CHECK(rank.params == three[0].params);  // the same bits on every rank
    REQUIRE(rank.losses.size() == one[0].losses.size());
    for (std::size_t s = 0; s < rank.losses.size(); ++s) CHECK_THAT(rank.losses[s], Catch::Matchers::WithinRel(one[0].losses[s], 1e-12));
  }
  CHECK(one[0].params[0] != fit_on_ranks(d, 1, 16, 6)[0].params[0]);  // the steps did move them
}

// Each rank draws the dropout masks of its own examples, those one process draws for them; not
// the masks of the first examples of the batch, which every rank would then share.
TEST_CASE("ranks that train a network with dropout end with the parameters of one process fed the whole batch",
          "[distributed][dropout]") {
  const train::Dataset d = fake_data(46);
  const std::vector<Trained> one = fit_on_ranks(d, 1, 16, 7, "dense6,relu,dropout0.5,dense3");
  const std::vector<Trained> three = fit_on_ranks(d, 3, 16, 7, "dense6,relu,dropout0.5,dense3");
  for (const Trained& rank : three) {
    REQUIRE(rank.params.size() == one[0].params.size());
    for (std::size_t i = 0; i < rank.params.size(); ++i) CHECK(relative_difference(one[0].params[i], rank.params[i]) < 1e-12);
  }
}

// Batch norm's statistics (and the sums in its gradient) are the global batch's: its per-channel
// sums are summed across ranks, so the ranks train as one process, running statistics included.
TEST_CASE("ranks that train a network with batch norm end with the parameters and running statistics of one process",
          "[distributed][batch_norm]") {
  const train::Dataset d = fake_data(46);  // batches of 16, 16, 14: shards of 5/5/6 and 4/5/5
  struct Net {
    std::string spec;
    nn::Layout layout;
  };
  const Net net = GENERATE(Net{"dense6,bn,relu,dense3", nn::Layout::columns}, Net{"dense6,bn,relu,dense3", nn::Layout::rows},
                           Net{"conv2k3p1,bn,relu,pool2,flatten,dense3", nn::Layout::nchw});
  INFO(net.spec << " " << nn::layout_name(net.layout));
  const std::vector<Trained> one = fit_on_ranks(d, 1, 16, 7, net.spec, {.layout = net.layout});
  const std::vector<Trained> three = fit_on_ranks(d, 3, 16, 7, net.spec, {.layout = net.layout});
  for (const Trained& rank : three) {
    REQUIRE(rank.params.size() == one[0].params.size());
    for (std::size_t i = 0; i < rank.params.size(); ++i) CHECK(close(one[0].params[i], rank.params[i]));
    CHECK(rank.params == three[0].params);  // the running statistics too: the same bits on every rank
    REQUIRE(rank.losses.size() == one[0].losses.size());
    for (std::size_t s = 0; s < rank.losses.size(); ++s) CHECK_THAT(rank.losses[s], Catch::Matchers::WithinRel(one[0].losses[s], 1e-12));
  }
}

TEST_CASE("with local_batch_norm each rank normalises by its own shard's statistics, and the run is not one process's",
          "[distributed][batch_norm]") {
  const train::Dataset d = fake_data(46);
  const std::vector<Trained> one = fit_on_ranks(d, 1, 16, 7, "dense6,bn,relu,dense3");
  const std::vector<Trained> local = fit_on_ranks(d, 3, 16, 7, "dense6,bn,relu,dense3", {.local_batch_norm = true});
  double farthest = 0;
  for (std::size_t i = 0; i < one[0].params.size(); ++i)
    farthest = std::max(farthest, relative_difference(one[0].params[i], local[0].params[i]));
  CHECK(farthest > 1e-3);
  CHECK(local[0].params != local[1].params);  // the running statistics differ between ranks
}

TEST_CASE("a shard of one example trains through batch norm when the global batch has more", "[distributed][batch_norm]") {
  const train::Dataset d = fake_data(12);  // batches of 3 over 3 ranks: one example each
  const std::vector<Trained> one = fit_on_ranks(d, 1, 3, 4, "dense6,bn,relu,dense3", {.layout = nn::Layout::rows});
  const std::vector<Trained> three = fit_on_ranks(d, 3, 3, 4, "dense6,bn,relu,dense3", {.layout = nn::Layout::rows});
  for (std::size_t i = 0; i < one[0].params.size(); ++i) CHECK(close(one[0].params[i], three[2].params[i]));
}

// Second derivatives through batch norm would need sums across ranks in the graph ops of its
// gradient's VJP: a data-parallel program refuses them rather than compute them from one shard.
TEST_CASE("a data-parallel program refuses second derivatives through batch norm, and runs its first derivatives",
          "[distributed][batch_norm]") {
  struct OneRank : gg::Communicator {  // a run of one rank: the sums change nothing
    int rank() const override { return 0; }
    int size() const override { return 1; }
    void sum(void*, std::int64_t, gg::DType) override {}
  } one;
  gg::Graph g(gg::f64);
  const gg::Value x = g.input("x", {gg::dyn, 3});
  const gg::Value w = g.param("w", {3, 3}, gg::uniform(-1.0, 1.0));
  const gg::Value y = nn::batch_norm(gg::matmul(x, w), {.layout = nn::Layout::rows});
  const gg::Value loss = gg::sum(y * y * g.constant(gg::Tensor::from<double>({3}, {1, 2, 3})));
  const gg::Value dw = gg::gradients(loss, {w})[0];
  const gg::Value ddw = gg::gradients(gg::sum(dw * dw), {w})[0];
  const gg::Tensor feed = gg::Tensor::from<double>({4, 3}, {1, 2, 0, -1, 0.5, 3, 2, -2, 1, 0, 1, 1});
  gg::CompileOptions o;
  o.ranks = &one;
  gg::Program first(g, {dw}, o);
  CHECK_NOTHROW(first.run({{x, feed}}));
  gg::Program second(g, {ddw}, o);
  CHECK_THROWS_WITH(second.run({{x, feed}}), Contains("batch_norm's second derivatives") && Contains("CompileOptions::ranks"));
  gg::Program alone(g, {ddw});  // one process: the shard is the batch
  CHECK_NOTHROW(alone.run({{x, feed}}));
}

// `shards` ranks (threads) evaluate d in batches of `batch` with a freshly initialised network
// (the same on every rank: the same seed); each rank's evaluation.
std::vector<train::Evaluation> evaluate_on_ranks(const train::Dataset& d, int shards, std::int64_t batch) {
  return on_thread_ranks<train::Evaluation>(shards, [&](gg::Communicator* comm, int) {
    gg::Graph g(gg::f64);
    const train::Model m = train::classifier(g, nn::parse("dense6,relu,dense3"), Shape{4, 4}, 3, nn::Layout::columns);
    train::TrainOptions o = momentum_options();
    o.communicator = comm;
    train::Trainer t(g, m, o);
    return t.evaluate(d, {}, batch);
  });
}

TEST_CASE("ranks evaluate their shards of a data set and all get the whole set's loss, accuracy and confusion matrix",
          "[distributed][evaluate]") {
  const train::Dataset d = fake_data(46);  // batches of 16, 16 and 14 over 3 ranks
  const train::Evaluation one = evaluate_on_ranks(d, 1, 16)[0];
  REQUIRE(one.predicted.size() == 46);
  for (const train::Evaluation& rank : evaluate_on_ranks(d, 3, 16)) {
    CHECK(rank.count == 46);
    CHECK(rank.confusion == one.confusion);
    CHECK(rank.accuracy == one.accuracy);
    CHECK_THAT(rank.loss, Catch::Matchers::WithinRel(one.loss, 1e-12));
    CHECK(rank.per_class.size() == one.per_class.size());
    CHECK(rank.predicted.empty());  // each rank saw its shard only
  }
}

TEST_CASE("a data set whose last batch cannot give every rank an example is evaluated whole by every rank",
          "[distributed][evaluate]") {
  const train::Dataset d = fake_data(17);  // batches of 8: the last has one example, for 3 ranks
  const train::Evaluation one = evaluate_on_ranks(d, 1, 8)[0];
  for (const train::Evaluation& rank : evaluate_on_ranks(d, 3, 8)) {
    CHECK(rank.confusion == one.confusion);
    CHECK(rank.loss == one.loss);
    CHECK(rank.predicted == one.predicted);
  }
}

TEST_CASE("with sparse images the weight gradient's GEMM packs through the sparse kernel, to one process's parameters", "[distributed]") {
  const train::Dataset d = fake_data(46, true);
  const std::vector<Trained> one = fit_on_ranks(d, 1, 16, 7);
  const std::vector<Trained> three = fit_on_ranks(d, 3, 16, 7);
  auto packed_sparse = [](const Trained& t) {
    return std::any_of(t.products.begin(), t.products.end(),
                       [](const gg::Program::ProductChoice& c) { return c.op == "gemm_pack" && c.sparse; });
  };
  for (const Trained& rank : three) {
    CHECK(packed_sparse(rank));
    REQUIRE(rank.params.size() == one[0].params.size());
    for (std::size_t i = 0; i < rank.params.size(); ++i) CHECK(relative_difference(one[0].params[i], rank.params[i]) < 1e-12);
    CHECK(rank.params == three[0].params);
  }
}

#ifdef GG_MPIRUN  // the build found MPI: these run, they are never skipped
namespace {

using gg::test::TempDir;

void write_idx(const std::string& path, const gg::test::Bytes& b) {
  FILE* f = std::fopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(std::fwrite(b.data(), 1, b.size(), f) == b.size());
  REQUIRE(std::fclose(f) == 0);
}

// Fake digits as in test_mnist_tool.cpp: class c brightens rows [2c + 4, 2c + 6), plus noise.
void write_digits(const TempDir& dir) {
  for (auto [prefix, n] : {std::pair<std::string, std::uint32_t>{"train", 300}, {"t10k", 100}}) {
    gg::test::Bytes images, labels;
    std::uint32_t state = 12345u + n;
    for (std::uint32_t i = 0; i < n; ++i) {
      const std::uint32_t c = (i * 7u + 3u) % 10u;
      labels.push_back(static_cast<std::uint8_t>(c));
      for (int p = 0; p < 784; ++p) {
        state = state * 1664525u + 1013904223u;
        const bool lit = p / 28 >= static_cast<int>(2 * c + 4) && p / 28 < static_cast<int>(2 * c + 6);
        images.push_back(static_cast<std::uint8_t>((state >> 26) + (lit ? 200 : 0)));
      }
    }
    write_idx(dir / (prefix + "-images-idx3-ubyte"), gg::test::idx({n, 28, 28}, images));
    write_idx(dir / (prefix + "-labels-idx1-ubyte"), gg::test::idx({n}, labels));
  }
}

struct Run {
  int code = -1;
  std::string out;  // stdout and stderr
};

// A shell command with stdout and stderr together; a run that hangs ends after 120 s (code 124).
Run shell(const std::string& cmd) {
  Run r;
  FILE* p = popen(("timeout 120 " + cmd + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  std::array<char, 4096> buf{};
  std::size_t got = 0;
  while ((got = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), got);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// mpirun as CI runs it: as root (allowed explicitly), 2 ranks on however many cores. Open MPI's
// own allocations are not ours to check for leaks under the sanitizer build.
// shared: the ranks sum through a shared-memory window (all on this machine, the default); else
// by messages (GRADGRAPH_MPI_SHARED=0), as ranks on several machines do.
std::string mpirun(const std::string& ranks, bool shared = true) {
  return std::string("env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 "
                     "ASAN_OPTIONS=detect_leaks=0 GRADGRAPH_MPI_SHARED=") +
         (shared ? "1" : "0") + " " GG_MPIRUN " --oversubscribe -x GRADGRAPH_MPI_SHARED " + ranks;
}

std::string mnist_train(const std::string& args) { return std::string(MNIST_TRAIN_PATH) + " --threads 1 --no-progress " + args; }

std::vector<std::string> lines_matching(const std::string& out, const std::regex& re) {
  std::vector<std::string> found;
  for (std::sregex_iterator it(out.begin(), out.end(), re), end; it != end; ++it) found.push_back(it->str());
  return found;
}

std::vector<std::vector<double>> saved_params(const std::string& path,
                                              const std::vector<std::string>& names = {"W1", "b1", "W2", "b2"}) {
  std::vector<std::vector<double>> out;
  const gg::io::SafetensorsFile f = gg::io::load_safetensors(path);
  for (const std::string& name : names)
    for (const auto& [n, t] : f.tensors)
      if (n == name) out.push_back(values(t.view()));
  REQUIRE(out.size() == names.size());
  return out;
}

}  // namespace

TEST_CASE("mpirun -np 2 mnist-train ends with the parameters and prints the lines of one process at the same global batch",
          "[distributed][mpi]") {
  TempDir dir;
  write_digits(dir);
  // 300 examples in batches of 63: shards of 31 and 32, weighed unequally; the last batch has 48.
  const std::string args = "--data " + dir.path.string() + " --dtype float64 --batch-size 63 --epochs 2 --hidden 16 "
                           "--optimizer momentum --lr 0.05 --print-every 1 ";
  const Run one = shell(mnist_train(args + "--save " + (dir / "one.st")));
  const bool shared = GENERATE(true, false);  // a shared-memory window, or one exchange of messages
  const Run two = shell(mpirun("-np 2 " + mnist_train(args + "--save " + (dir / "two.st")), shared));
  INFO((shared ? "shared memory" : "messages") << "\n" << one.out << "\n---- mpirun:\n" << two.out);
  REQUIRE(one.code == 0);
  REQUIRE(two.code == 0);
  const std::regex step(R"(Iteration: \d+ \| Accuracy: \S+ \| Loss:\S+)"), epoch(R"(Epoch \d/2 \| loss \S+ \| train \S+)"),
      accuracy(R"(\nAccuracy: \S+ %)");
  CHECK(lines_matching(one.out, step).size() == 10);
  CHECK(lines_matching(two.out, step) == lines_matching(one.out, step));  // rank 0 alone prints, the global batch's loss
  CHECK(lines_matching(two.out, epoch) == lines_matching(one.out, epoch));
  CHECK(lines_matching(two.out, accuracy) == lines_matching(one.out, accuracy));
  const auto a = saved_params(dir / "one.st"), b = saved_params(dir / "two.st");
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(relative_difference(a[i], b[i]) < 1e-9);
  // Through the shared window, what a line's trip between the ranks' cores costs (the context for
  // the all-reduce's figures); by messages there is no such line.
  const std::regex trip(R"(round trip between the cores of ranks 0 and 1: [1-9]\d* ns)");
  CHECK(lines_matching(two.out, trip).size() == (shared ? 1u : 0u));
}

TEST_CASE("mpirun -np 2 mnist-train with batch norm ends with the parameters and running statistics of one process",
          "[distributed][mpi][batch_norm]") {
  TempDir dir;
  write_digits(dir);
  const std::string args = "--data " + dir.path.string() + " --dtype float64 --batch-size 63 --epochs 2 "
                           "--model dense16,bn,relu,dense10 --optimizer momentum --lr 0.05 --print-every 1 ";
  const Run one = shell(mnist_train(args + "--save " + (dir / "one.st")));
  const Run two = shell(mpirun("-np 2 " + mnist_train(args + "--save " + (dir / "two.st"))));
  INFO(one.out << "\n---- mpirun:\n" << two.out);
  REQUIRE(one.code == 0);
  REQUIRE(two.code == 0);
  const std::regex step(R"(Iteration: \d+ \| Accuracy: \S+ \| Loss:\S+)");
  CHECK(lines_matching(one.out, step).size() == 10);
  CHECK(lines_matching(two.out, step) == lines_matching(one.out, step));
  const std::vector<std::string> names = {"W1", "W2", "b2", "bn1/gamma", "bn1/beta", "bn1/running_mean", "bn1/running_var"};
  const auto a = saved_params(dir / "one.st", names), b = saved_params(dir / "two.st", names);
  for (std::size_t i = 0; i < a.size(); ++i) {
    INFO(names[i]);
    CHECK(relative_difference(a[i], b[i]) < 1e-9);
  }
}

TEST_CASE("mpirun -np 2 mnist-train writes the same checkpoint byte for byte on every run", "[distributed][mpi]") {
  TempDir dir;
  write_digits(dir);
  const std::string args = "--data " + dir.path.string() + " --batch-size 64 --epochs 1 --hidden 16 --optimizer momentum ";
  const Run a = shell(mpirun("-np 2 " + mnist_train(args + "--save " + (dir / "a.st"))));
  const Run b = shell(mpirun("-np 2 " + mnist_train(args + "--save " + (dir / "b.st"))));
  INFO(a.out << "\n----\n" << b.out);
  REQUIRE(a.code == 0);
  REQUIRE(b.code == 0);
  auto bytes = [](const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  const std::string first = bytes(dir / "a.st");
  CHECK(first.size() > 1000);
  CHECK(first == bytes(dir / "b.st"));  // parameters, optimizer state, and the graph's text
}

// tests/mpi_sum_check.cpp: sums and means of float32 and float64 values with lines of zeros, -0s
// and a NaN, counts that end inside a line; through the shared window, the formula's bits.
TEST_CASE("mpirun: every rank's sum and mean are the same bits, through the shared window exactly the rank-order formula",
          "[distributed][mpi]") {
  const std::string ranks = GENERATE(std::string("2"), std::string("3"));
  const std::string way = GENERATE(std::string("shared"), std::string("portable"), std::string("messages"));
  // portable: the window's lines written and summed in portable C++, as without AVX-512
  const std::string env = std::string("env GRADGRAPH_MPI_PORTABLE=") + (way == "portable" ? "1 " : "0 ");
  const Run r = shell(env + mpirun("-x GRADGRAPH_MPI_PORTABLE -np " + ranks + " " MPI_SUM_CHECK_PATH, way != "messages"));
  INFO(ranks << " ranks, " << way << "\n" << r.out);
  CHECK(r.code == 0);
  CHECK(r.out.find("every rank the same bits") != std::string::npos);
}

// Without the shared window, two ranks exchange whole buffers and three or more sum around the
// ring (reduce-scatter, then all-gather): both ways are run here with three ranks.
TEST_CASE("mpirun -np 3 mnist-train (the ring) ends with the parameters of one process at the same global batch",
          "[distributed][mpi]") {
  TempDir dir;
  write_digits(dir);
  // 300 examples in batches of 64: shards of 22, 21, 21 and, in the last batch, 15, 15, 14.
  const std::string args = "--data " + dir.path.string() + " --dtype float64 --batch-size 64 --epochs 1 --hidden 16 "
                           "--optimizer momentum --lr 0.05 ";
  const Run one = shell(mnist_train(args + "--save " + (dir / "one.st")));
  const bool shared = GENERATE(true, false);
  const Run three = shell(mpirun("-np 3 " + mnist_train(args + "--save " + (dir / "three.st")), shared));
  INFO((shared ? "shared memory" : "messages") << "\n" << one.out << "\n---- mpirun:\n" << three.out);
  REQUIRE(one.code == 0);
  REQUIRE(three.code == 0);
  const auto a = saved_params(dir / "one.st"), b = saved_params(dir / "three.st");
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(relative_difference(a[i], b[i]) < 1e-9);
}

TEST_CASE("under mpirun, mnist-train's default threads share the machine's cores among its ranks", "[distributed][mpi]") {
  TempDir dir;
  write_digits(dir);
  const std::string args = "--data " + dir.path.string() + " --iterations 2 --hidden 8 --no-progress";
  // Unbound ranks (--bind-to none) see every core: without the division each would take them all.
  const Run r = shell(mpirun("-np 2 --bind-to none " + std::string(MNIST_TRAIN_PATH) + " " + args));
  INFO(r.out);
  REQUIRE(r.code == 0);
  const int per_rank = std::max(1, omp_get_num_procs() / 2);
  CHECK_THAT(r.out, Contains("# 2 ranks x " + std::to_string(per_rank) + " threads"));
  CHECK_THAT(r.out, !Contains("warning"));
  const Run pinned = shell(mpirun("-np 2 " + std::string(MNIST_TRAIN_PATH) + " " + args + " --threads 3"));
  CHECK_THAT(pinned.out, Contains("# 2 ranks x 3 threads"));  // an explicit count is taken as given
  CHECK_THAT(pinned.out, Contains("mnist-train: warning: 2 ranks x 3 threads on"));  // but more than the cores are said
}

TEST_CASE("mpirun -np 2 mnist-train --resume continues a run exactly", "[distributed][mpi]") {
  TempDir dir;
  write_digits(dir);
  const std::string args = "--data " + dir.path.string() + " --dtype float64 --batch-size 50 --epochs 3 --hidden 16 "
                           "--optimizer adam --lr 0.01 --print-every 1 ";
  const Run whole = shell(mpirun("-np 2 " + mnist_train(args + "--save " + (dir / "whole.st"))));
  const Run first = shell(mpirun("-np 2 " + mnist_train(args + "--stop-after-epochs 1 --save " + (dir / "part.st"))));
  const Run rest = shell(mpirun("-np 2 " + mnist_train(args + "--resume " + (dir / "part.st") + " --save " + (dir / "part.st"))));
  INFO(whole.out << "\n----\n" << first.out << "\n----\n" << rest.out);
  REQUIRE(whole.code == 0);
  REQUIRE(first.code == 0);
  REQUIRE(rest.code == 0);
  const std::regex step(R"(Iteration: \d+ \| Accuracy: \S+ \| Loss:\S+)");
  std::vector<std::string> parts = lines_matching(first.out, step);
  const std::vector<std::string> resumed = lines_matching(rest.out, step);
  parts.insert(parts.end(), resumed.begin(), resumed.end());
  CHECK(parts.size() == 18);
  CHECK(parts == lines_matching(whole.out, step));
  CHECK(saved_params(dir / "part.st") == saved_params(dir / "whole.st"));
}

TEST_CASE("ranks that train different networks end with one message from rank 0 and exit 1, before training",
          "[distributed][mpi]") {
  TempDir dir;
  write_digits(dir);
  const std::string args = "--data " + dir.path.string() + " --batch-size 64 --epochs 1 ";
  const Run r = shell(mpirun("-np 1 " + mnist_train(args + "--hidden 16") + " : -np 1 " + mnist_train(args + "--hidden 8")));
  INFO(r.out);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("mnist-train: the ranks do not run the same training (network: rank 0 has dense16,relu,dense10"));
  CHECK_THAT(r.out, Contains("rank 1 has dense8,relu,dense10"));
  CHECK_THAT(r.out, !Contains("Iteration"));
  CHECK(lines_matching(r.out, std::regex("mnist-train: ")).size() == 1);  // rank 0 alone says it (mpirun adds its own note)
}

TEST_CASE("a rank that dies mid-run ends the whole job with a non-zero exit, not a hang", "[distributed][mpi]") {
  TempDir dir;
  write_digits(dir);
  const std::string args = "--data " + dir.path.string() + " --iterations 1000000 --hidden 16 --print-every 100000 ";
  const auto t0 = std::chrono::steady_clock::now();
  const Run r = shell(mpirun("-np 1 " + mnist_train(args) + " : -np 1 timeout -s KILL 2 " + mnist_train(args)));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(r.out);
  CHECK(r.code != 0);
  CHECK(r.code != 124);  // not the test's own timeout
  CHECK(seconds < 60);
}
#endif  // GG_MPIRUN
