// The training layer: data sets, batches, layer builders, schedules and optimizers, fit and
// evaluate, checkpoints and exact resume.
#include "support.hpp"

#include <gradgraph/gradgraph.hpp>
#include <gradgraph/safetensors.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <set>
#include <string>
#include <vector>

namespace {

using Catch::Matchers::Contains;
using gg::Shape;
using gg::test::message_of;
using gg::test::TempDir;
using gg::test::values;
namespace train = gg::train;
namespace nn = gg::nn;

// Learnable fake images: 4x4 pixels, class c brightens row c (of 3 classes), plus noise.
train::Dataset fake_data(std::int64_t n, std::uint32_t seed = 1) {
  train::Dataset d;
  d.name = "fake";
  d.count = n;
  d.example = Shape{4, 4};
  d.classes = 3;
  std::uint32_t state = seed;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t c = (i * 5 + 1) % 3;
    d.labels.push_back(c);
    for (int p = 0; p < 16; ++p) {
      state = state * 1664525u + 1013904223u;
      d.pixels.push_back(static_cast<std::uint8_t>((state >> 27) + (p / 4 == c ? 180 : 0)));
    }
  }
  return d;
}

struct Net {
  gg::Graph g;
  train::Model model;
  std::unique_ptr<train::Trainer> trainer;
  Net(gg::DType dt, const std::string& spec, nn::Layout layout, const train::TrainOptions& o) : g(dt) {
    model = train::classifier(g, nn::parse(spec), Shape{4, 4}, 3, layout);
    trainer = std::make_unique<train::Trainer>(g, model, o);
  }
};

train::TrainOptions options(train::Optimizer::Kind kind, double lr) {
  train::TrainOptions o;
  o.optimizer.kind = kind;
  o.optimizer.lr = lr;
  o.compile.threads = 1;
  o.compile.seed = 7;
  return o;
}

train::BatchOptions batch_options(std::int64_t size, nn::Layout layout = nn::Layout::columns, gg::DType dt = gg::f64) {
  train::BatchOptions b;
  b.batch_size = size;
  b.seed = 11;
  b.layout = layout;
  b.dtype = dt;
  return b;
}

// Which example each batch row holds, read back through the labels and pixels of a data set whose
// examples are all different.
std::vector<std::int64_t> example_ids(const train::Batch& b, const train::Dataset& d) {
  std::vector<std::int64_t> ids;
  for (std::int64_t j = 0; j < b.size; ++j) {
    // Pixel 0 of example i is i (the data set below), divided by 255.
    const double v = b.x.at({0, j});
    ids.push_back(std::llround(v * 255.0));
  }
  (void)d;
  return ids;
}

train::Dataset numbered(std::int64_t n) {
  train::Dataset d;
  d.name = "numbered";
  d.count = n;
  d.example = Shape{2};
  d.classes = 2;
  for (std::int64_t i = 0; i < n; ++i) {
    d.pixels.push_back(static_cast<std::uint8_t>(i));
    d.pixels.push_back(static_cast<std::uint8_t>(255 - i));
    d.labels.push_back(i % 2);
  }
  return d;
}

}  // namespace

// ---- data ---------------------------------------------------------------------------------------------

TEST_CASE("each epoch's batches are a seeded permutation: every example once, reproducible, different per epoch",
          "[train][batches]") {
  const train::Dataset d = numbered(23);
  train::Batches a(d, batch_options(5)), b(d, batch_options(5));
  CHECK(a.steps_per_epoch() == 5);
  std::vector<std::int64_t> first_epoch;
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::vector<std::int64_t> seen;
    for (std::int64_t s = 0; s < a.steps_per_epoch(); ++s) {
      const train::Batch& x = a.next();
      const train::Batch& y = b.next();
      CHECK(x.epoch == epoch);
      CHECK(x.index == s);
      CHECK(x.last == (s == 4));
      CHECK(x.size == (s == 4 ? 3 : 5));  // the last batch is partial
      const auto ids = example_ids(x, d);
      CHECK(ids == example_ids(y, d));    // same seed, same order
      for (std::int64_t j = 0; j < x.size; ++j) CHECK(x.labels.at({j}) == static_cast<double>(ids[static_cast<std::size_t>(j)] % 2));
      seen.insert(seen.end(), ids.begin(), ids.end());
    }
    std::vector<std::int64_t> sorted = seen;
    std::sort(sorted.begin(), sorted.end());
    std::vector<std::int64_t> all(23);
    for (std::int64_t i = 0; i < 23; ++i) all[static_cast<std::size_t>(i)] = i;
    CHECK(sorted == all);
    if (epoch == 0) first_epoch = seen;
    else CHECK(seen != first_epoch);
  }
  train::BatchOptions other = batch_options(5);
  other.seed = 12;
  train::Batches c(d, other);
  CHECK(example_ids(c.next(), d) != example_ids(train::Batches(d, batch_options(5)).next(), d));
}

TEST_CASE("with a shift, each image is moved by at most that many pixels with a zero background, the same way "
          "for any thread count and after a seek, and differently each epoch",
          "[train][batches][augment]") {
  // 6x6 images whose pixels are all different (1..216 over the set), so each moved image shows
  // its offset.
  train::Dataset d;
  d.name = "distinct";
  d.count = 6;
  d.example = Shape{6, 6};
  d.classes = 2;
  for (std::int64_t i = 0; i < d.count * 36; ++i) d.pixels.push_back(static_cast<std::uint8_t>(1 + i));
  for (std::int64_t i = 0; i < d.count; ++i) d.labels.push_back(i % 2);
  train::BatchOptions o = batch_options(3, nn::Layout::nchw);
  o.shuffle = false;  // batch row j of step s is image 3 s + j
  o.shift = 2;
  train::BatchOptions two = o;
  two.threads = 2;
  train::Batches a(d, o), b(d, two);
  // The offset that moves image `src` to what row j of the batch holds, or none.
  auto offset = [&](const train::Batch& batch, std::int64_t j, std::int64_t src) {
    for (std::int64_t dy = -2; dy <= 2; ++dy)
      for (std::int64_t dx = -2; dx <= 2; ++dx) {
        bool same = true;
        for (std::int64_t y = 0; y < 6 && same; ++y)
          for (std::int64_t x = 0; x < 6 && same; ++x) {
            const std::int64_t sy = y - dy, sx = x - dx;
            const double want = sy >= 0 && sy < 6 && sx >= 0 && sx < 6 ? d.pixels[static_cast<std::size_t>(src * 36 + sy * 6 + sx)] : 0;
            same = std::llround(batch.x.at({j, 0, y, x}) * 255.0) == std::llround(want);
          }
        if (same) return dy * 10 + dx;
      }
    return std::int64_t{-100};
  };
  std::vector<std::int64_t> epochs[2];
  for (int epoch = 0; epoch < 2; ++epoch)
    for (int step = 0; step < 2; ++step) {
      const train::Batch& x = a.next();
      const train::Batch& y = b.next();
      for (std::int64_t j = 0; j < 3; ++j) {
        const std::int64_t src = step * 3 + j, at = offset(x, j, src);
        INFO("epoch " << epoch << " image " << src);
        CHECK(at != -100);
        CHECK(offset(y, j, src) == at);  // two threads: the same offsets
        CHECK(x.labels.at({j}) == static_cast<double>(src % 2));
        epochs[epoch].push_back(at);
      }
    }
  CHECK(epochs[0] != epochs[1]);  // a fresh offset per epoch
  CHECK(std::any_of(epochs[0].begin(), epochs[0].end(), [](std::int64_t v) { return v != 0; }));
  // A seek to the second epoch's second batch draws what the uninterrupted iterator drew.
  train::Batches c(d, o);
  c.seek({1, 1, a.position().rng});
  const train::Batch& z = c.next();
  for (std::int64_t j = 0; j < 3; ++j) CHECK(offset(z, j, 3 + j) == epochs[1][static_cast<std::size_t>(3 + j)]);
  train::BatchOptions big = o;
  big.shift = 6;
  CHECK_THROWS_AS(train::Batches(d, big), std::invalid_argument);
}

TEST_CASE("batches are normalised from bytes in float32 arithmetic, in either layout", "[train][batches]") {
  const train::Dataset d = numbered(4);
  train::BatchOptions o = batch_options(4, nn::Layout::rows, gg::f32);
  o.shuffle = false;
  o.normalization = {.divisor = 225.0, .mean = 0.1, .std = 0.5};
  train::Batches rows(d, o);
  const train::Batch& r = rows.next();
  REQUIRE(r.x.shape == Shape{4, 2});
  CHECK(r.x.at({3, 1}) == static_cast<float>((static_cast<float>(252) / 225.0f - 0.1f) / 0.5f));
  o.layout = nn::Layout::columns;
  train::Batches cols(d, o);
  const train::Batch& c = cols.next();
  REQUIRE(c.x.shape == Shape{2, 4});
  CHECK(c.x.at({1, 3}) == r.x.at({3, 1}));
  CHECK_FALSE(c.x.is_contiguous());  // examples stay rows in memory; the view is the transpose
}

TEST_CASE("a full batch is gathered once and reused", "[train][batches]") {
  const train::Dataset d = numbered(6);
  train::Batches b(d, batch_options(0));
  CHECK(b.batch_size() == 6);
  CHECK(b.steps_per_epoch() == 1);
  const std::vector<double> first = values(b.next().x);
  const void* at = b.next().x.data;
  CHECK(values(b.next().x) == first);
  CHECK(b.next().x.data == at);
  CHECK(example_ids(b.next(), d) == std::vector<std::int64_t>{0, 1, 2, 3, 4, 5});  // file order
}

namespace {
// n images of h x w bytes, two classes: pixel p of example i is value(i, p), 0 where it is dark.
template <typename Value>
train::Dataset images(const std::string& name, int h, int w, std::int64_t n, Value value) {
  train::Dataset d;
  d.name = name;
  d.count = n;
  d.example = Shape{h, w};
  d.classes = 2;
  for (std::int64_t i = 0; i < n; ++i) {
    d.labels.push_back(i % 2);
    for (int p = 0; p < h * w; ++p) d.pixels.push_back(value(i, p));
  }
  return d;
}

// Sparse 6x6 images: a bright square at a position that depends on the example.
train::Dataset sparse_images(std::int64_t n) {
  return images("sparse", 6, 6, n, [](std::int64_t i, int p) {
    const int y = p / 6, x = p % 6;
    const bool on = y >= i % 4 && y < i % 4 + 2 && x >= i % 3 && x < i % 3 + 2 + i % 2;
    return on ? static_cast<std::uint8_t>(40 + (p * 7 + i) % 200) : std::uint8_t{0};
  });
}

// 5x7 images, most with one lit pixel and every seventh lit all over: rows whose every 16
// consecutive values are nonzero, and widths that are no multiple of 16.
train::Dataset sparse_with_full_images(std::int64_t n) {
  return images("sparse, some full", 5, 7, n, [](std::int64_t i, int p) {
    return i % 7 == 0 || p == i % 35 ? static_cast<std::uint8_t>(1 + (p * 13 + i) % 255) : std::uint8_t{0};
  });
}
}  // namespace

TEST_CASE("each batch carries its nonzeros, equal to the gathered values, in either layout and dtype, shifted or not",
          "[train][batches][sparse]") {
  for (const train::Dataset& d : {sparse_images(23), sparse_with_full_images(40)})
  for (gg::DType dt : {gg::f64, gg::f32})
  for (nn::Layout layout : {nn::Layout::columns, nn::Layout::rows})
    for (int shift : {0, 1})
      for (std::int64_t size : {std::int64_t{5}, std::int64_t{0}}) {
        CAPTURE(d.name, gg::dtype_name(dt), nn::layout_name(layout), shift, size);
        train::BatchOptions o = batch_options(size, layout, dt);
        o.layout = layout;
        o.shift = shift;
        o.threads = 2;
        train::Batches b(d, o);
        CHECK(b.density() < 0.2);
        for (int s = 0; s < 12; ++s) {  // more than two epochs: the last batches are partial
          const train::Batch& batch = b.next();
          REQUIRE(batch.sparse);
          CHECK(batch.sparse->shape == batch.x.shape);
          CHECK(batch.sparse->major == (layout == nn::Layout::columns ? 1 : 0));
          CHECK(values(gg::to_dense(*batch.sparse).view()) == values(batch.x));
        }
      }
}

TEST_CASE("a full batch of a large data set also carries its cross blocks, a mini-batch or a shifted one does not",
          "[train][batches][sparse]") {
  const train::Dataset d = sparse_images(train::kCrossGroups);
  train::BatchOptions o = batch_options(0);
  o.layout = nn::Layout::columns;
  train::Batches full(d, o);
  for (int step = 0; step < 2; ++step) {  // built with the first batch, kept for the next
    const train::Batch& b = full.next();
    REQUIRE(b.sparse);
    CHECK(b.sparse->has_cross());
  }
  o.batch_size = 100;
  CHECK_FALSE(train::Batches(d, o).next().sparse->has_cross());
  o.batch_size = 0;
  o.shift = 1;  // the images move every epoch
  CHECK_FALSE(train::Batches(d, o).next().sparse->has_cross());
}

TEST_CASE("no nonzeros are kept for dense data, images, or when switched off", "[train][batches][sparse]") {
  train::BatchOptions o = batch_options(4);
  o.layout = nn::Layout::rows;
  CHECK_FALSE(train::Batches(fake_data(12), o).next().sparse);  // noisy pixels: dense
  const train::Dataset d = sparse_images(12);
  CHECK(train::Batches(d, o).next().sparse);
  o.sparse = false;
  CHECK_FALSE(train::Batches(d, o).next().sparse);
  o.sparse = true;
  o.normalization.mean = 0.5;  // byte 0 is no longer 0
  CHECK_FALSE(train::Batches(d, o).next().sparse);
  o.normalization.mean = 0;
  o.layout = nn::Layout::nchw;
  CHECK_FALSE(train::Batches(d, o).next().sparse);
}

TEST_CASE("a batch iterator sought to a saved position continues the same sequence", "[train][batches]") {
  const train::Dataset d = numbered(17);
  train::Batches a(d, batch_options(4));
  for (int i = 0; i < 7; ++i) a.next();  // into the second epoch
  const train::Batches::Position p = a.position();
  CHECK(p.epoch == 1);
  CHECK(p.index == 2);
  std::vector<std::vector<std::int64_t>> expect;
  for (int i = 0; i < 9; ++i) expect.push_back(example_ids(a.next(), d));
  train::Batches b(d, batch_options(4));
  b.seek(p);
  for (int i = 0; i < 9; ++i) CHECK(example_ids(b.next(), d) == expect[static_cast<std::size_t>(i)]);
}

TEST_CASE("a validation split is a seeded, disjoint partition in file order", "[train][data]") {
  const train::Dataset d = numbered(50);
  auto [keep, val] = d.split(12, 3);
  CHECK(keep.count == 38);
  CHECK(val.count == 12);
  std::set<int> ids;
  for (const auto* part : {&keep, &val})
    for (std::int64_t i = 0; i < part->count; ++i) ids.insert(part->pixels[static_cast<std::size_t>(2 * i)]);
  CHECK(ids.size() == 50);
  // File order: the ids (pixel 0 of each example) increase.
  for (std::int64_t i = 1; i < val.count; ++i) CHECK(val.pixels[static_cast<std::size_t>(2 * i)] > val.pixels[static_cast<std::size_t>(2 * i - 2)]);
  auto [keep2, val2] = d.split(12, 3);
  CHECK(val2.pixels == val.pixels);
  CHECK(d.split(12, 4).second.pixels != val.pixels);
  CHECK_THROWS_AS(d.split(50, 1), std::invalid_argument);
}

// ---- layers ----------------------------------------------------------------------------------------------

TEST_CASE("a spec builds dense layers named W1, b1, ... in either layout", "[train][nn]") {
  const nn::Spec s = nn::parse("dense8,relu,dense5,tanh,dense3");
  CHECK(s.text() == "dense8,relu,dense5,tanh,dense3");
  CHECK(s.outputs() == 3);
  for (nn::Layout layout : {nn::Layout::columns, nn::Layout::rows}) {
    gg::Graph g(gg::f32);
    gg::Value x = layout == nn::Layout::columns ? g.input("x", {16, gg::dyn}) : g.input("x", {gg::dyn, 16});
    gg::Value z = nn::build(s, x, layout);
    CHECK(z.shape() == (layout == nn::Layout::columns ? Shape{3, gg::dyn} : Shape{gg::dyn, 3}));
    std::vector<std::string> names;
    for (const gg::Value& p : g.params()) names.push_back(p.name());
    CHECK(names == std::vector<std::string>{"W1", "b1", "W2", "b2", "W3", "b3"});
    CHECK(g.find("W1").shape() == (layout == nn::Layout::columns ? Shape{8, 16} : Shape{16, 8}));
  }
  CHECK(nn::mlp({256, 128}, nn::Activation::relu, 10).text() == "dense256,relu,dense128,relu,dense10");
}

TEST_CASE("a convolutional spec builds conv, pooling, flatten and dropout layers on NCHW images", "[train][nn]") {
  const nn::Spec s = nn::reference_cnn(10);
  CHECK(s.text() == "conv32k3p1,relu,pool2,conv64k3p1,relu,pool2,flatten,dense128,relu,dropout0.25,dense10");
  CHECK(s.convolutional());
  CHECK_FALSE(nn::parse("dense8,relu,dropout0.5,dense3").convolutional());
  CHECK(nn::parse("conv8k5p2s2,tanh,avgpool2,gap,dense3").text() == "conv8k5p2s2,tanh,avgpool2,gap,dense3");
  CHECK(nn::parse("conv8,pool3s2,flatten,dense3").text() == "conv8k3,pool3s2,flatten,dense3");
  gg::Graph g(gg::f32);
  const train::Model m = train::classifier(g, s, Shape{28, 28}, 10, nn::Layout::nchw);
  CHECK(m.x.shape() == Shape{gg::dyn, 1, 28, 28});
  CHECK(m.logits.shape() == Shape{gg::dyn, 10});
  CHECK(m.class_axis == 1);
  CHECK(g.find("W1").shape() == Shape{32, 1, 3, 3});
  CHECK(g.find("W2").shape() == Shape{64, 32, 3, 3});
  CHECK(g.find("W3").shape() == Shape{3136, 128});
  CHECK(g.find("b2").shape() == Shape{64});
}

TEST_CASE("a spec that does not fit its input is refused at build time with the shapes", "[train][nn]") {
  gg::Graph g(gg::f32);
  gg::Value x = g.input("x", {gg::dyn, 1, 28, 28});
  CHECK_THAT(message_of<gg::GraphError>([&] { nn::build(nn::parse("conv8k3,dense10"), x, nn::Layout::nchw); }),
             Contains("'dense10'") && Contains("flatten"));
  gg::Graph h(gg::f32);
  gg::Value y = h.input("y", {gg::dyn, 1, 28, 28});
  CHECK_THAT(message_of<gg::GraphError>([&] { nn::build(nn::parse("pool8,conv4k5,flatten,dense10"), y, nn::Layout::nchw); }),
             Contains("conv2d") && Contains("5x5 kernel does not fit the 3x3 image"));
  gg::Graph f(gg::f32);
  gg::Value z = f.input("z", {784, gg::dyn});
  CHECK_THAT(message_of<gg::GraphError>([&] { nn::build(nn::parse("conv8,flatten,dense10"), z, nn::Layout::columns); }),
             Contains("takes NCHW images"));
}

TEST_CASE("a small CNN trains on NCHW batches: its loss falls and it classifies held-out images", "[train][fit][cnn]") {
  const train::Dataset d = fake_data(192), test = fake_data(48, 77);
  gg::Graph g(gg::f32);
  const train::Model m = train::classifier(g, nn::parse("conv4k3p1,relu,pool2,flatten,dropout0.1,dense3"), Shape{4, 4}, 3,
                                           nn::Layout::nchw);
  train::Trainer t(g, m, options(train::Optimizer::Kind::adam, 0.02));
  train::Batches b(d, batch_options(16, nn::Layout::nchw, gg::f32));
  CHECK(b.next().x.shape == Shape{16, 1, 4, 4});
  std::vector<double> losses;
  train::Callbacks cb;
  cb.on_step = [&](const train::StepInfo& s) { return losses.push_back(s.loss), true; };
  t.fit(b, {.epochs = 6}, cb);
  CHECK(losses.front() > 0.9);
  CHECK(losses.back() < 0.2);
  CHECK(t.evaluate(test).accuracy >= 0.95);
}

TEST_CASE("bn layers normalise with batch statistics in training and running ones in evaluation", "[train][nn][cnn]") {
  const train::Dataset d = fake_data(192), test = fake_data(48, 77);
  gg::Graph g(gg::f32);
  const nn::Spec spec = nn::parse("conv4k3p1,bn,relu,pool2,flatten,dense8,bn,relu,dense3");
  CHECK(spec.text() == "conv4k3p1,bn,relu,pool2,flatten,dense8,bn,relu,dense3");
  const train::Model m = train::classifier(g, spec, Shape{4, 4}, 3, nn::Layout::nchw);
  // Per channel for images, per feature after the flatten.
  CHECK(g.find("bn1/gamma").shape() == Shape{4});
  CHECK(g.find("bn1/beta").shape() == Shape{4});
  CHECK(g.find("bn2/gamma").shape() == Shape{8});
  std::vector<std::string> states;
  for (const gg::Value& v : g.states()) states.push_back(v.name());
  CHECK(std::count(states.begin(), states.end(), "bn1/running_mean") == 1);
  CHECK(std::count(states.begin(), states.end(), "bn2/running_var") == 1);
  train::Trainer t(g, m, options(train::Optimizer::Kind::adam, 0.02));
  CHECK(gg::test::values(t.train_program().param("bn1/running_var")) == std::vector<double>(4, 1.0));
  train::Batches b(d, batch_options(16, nn::Layout::nchw, gg::f32));
  std::vector<double> losses;
  train::Callbacks cb;
  cb.on_step = [&](const train::StepInfo& s) { return losses.push_back(s.loss), true; };
  t.fit(b, {.epochs = 6}, cb);
  CHECK(losses.back() < 0.2);
  // Training moved the running statistics away from their start.
  CHECK(gg::test::values(t.train_program().param("bn1/running_mean")) != std::vector<double>(4, 0.0));
  // Evaluation reads them, not the batch's: every example's probabilities are the same whatever
  // batch it is evaluated in.
  const train::Evaluation whole = t.evaluate(test, {}, 48), sevens = t.evaluate(test, {}, 7);
  CHECK(whole.probabilities == sevens.probabilities);
  CHECK(whole.accuracy >= 0.95);
}

TEST_CASE("a malformed spec is refused naming the layer", "[train][nn]") {
  CHECK_THAT(message_of<std::invalid_argument>([] { nn::parse("dense64,rleu,dense10"); }), Contains("layer 2 'rleu'"));
  CHECK_THAT(message_of<std::invalid_argument>([] { nn::parse("dense0"); }), Contains("denseN"));
  CHECK_THAT(message_of<std::invalid_argument>([] { nn::parse("relu"); }), Contains("no dense layer"));
  CHECK_THAT(message_of<std::invalid_argument>([] { nn::parse("dense12x"); }), Contains("'dense12x'"));
  CHECK_THAT(message_of<std::invalid_argument>([] { nn::parse("conv8q3,flatten,dense2"); }), Contains("'conv8q3'"));
  CHECK_THAT(message_of<std::invalid_argument>([] { nn::parse("dense8,dropout1.5,dense2"); }), Contains("'dropout1.5'"));
  CHECK_THAT(message_of<std::invalid_argument>([] { nn::parse("dense8,relu"); }), Contains("must end in the dense layer"));
}

// ---- schedules and optimizers --------------------------------------------------------------------------------

TEST_CASE("learning-rate schedules give the hand-computed rates", "[train][schedule]") {
  train::Schedule s;
  CHECK(s.lr_at(0.5, 0, 100) == 0.5);
  CHECK(s.lr_at(0.5, 99, 100) == 0.5);
  s.warmup = 4;
  CHECK(s.lr_at(0.4, 0, 100) == 0.1);
  CHECK(s.lr_at(0.4, 3, 100) == 0.4);
  CHECK(s.lr_at(0.4, 4, 100) == 0.4);
  s.kind = train::Schedule::Kind::step;
  s.step_size = 10;
  s.gamma = 0.5;
  CHECK(s.lr_at(0.4, 13, 100) == 0.4);
  CHECK(s.lr_at(0.4, 14, 100) == 0.2);
  CHECK(s.lr_at(0.4, 34, 100) == 0.05);
  s.kind = train::Schedule::Kind::cosine;
  s.min_lr = 0.1;
  CHECK(s.lr_at(0.5, 4, 104) == 0.5);
  CHECK_THAT(s.lr_at(0.5, 54, 104), Catch::Matchers::WithinAbs(0.3, 1e-15));
  CHECK_THAT(s.lr_at(0.5, 29, 104), Catch::Matchers::WithinAbs(0.1 + 0.4 * 0.5 * (1 + std::cos(std::numbers::pi / 4)), 1e-15));
  CHECK(s.lr_at(0.5, 104, 104) == 0.1);
}

TEST_CASE("each optimizer kind makes its update with the weight decay where it belongs", "[train][optim]") {
  using K = train::Optimizer::Kind;
  const std::vector<std::pair<K, std::string>> expect = {
      {K::sgd, "sgd_update"}, {K::momentum, "momentum_update"}, {K::nesterov, "momentum_update"},
      {K::adam, "adam_update"}, {K::adamw, "adam_update"}};
  for (const auto& [kind, op] : expect) {
    INFO(train::Optimizer::kind_name(kind));
    gg::Graph g(gg::f32);
    gg::Value w = g.param("w", {3});
    gg::Value grad = g.input("g", {3});
    train::Optimizer o;
    o.kind = kind;
    o.weight_decay = 0.25;
    const gg::Value up = train::updates(o, {w}, {grad})[0];
    CHECK(up.op_name() == op);
    const std::string attrs = up.node().attrs.to_string();
    if (kind == K::nesterov) CHECK_THAT(attrs, Contains("nesterov=true"));
    if (kind == K::adam) CHECK_THAT(attrs, Contains("weight_decay=0,") && Contains("l2=0.25"));
    if (kind == K::adamw) CHECK_THAT(attrs, Contains("weight_decay=0.25") && Contains("l2=0"));
  }
  CHECK_THROWS_AS(train::Optimizer::parse_kind("rmsprop"), std::invalid_argument);
}

// ---- fit, evaluate ---------------------------------------------------------------------------------------------

TEST_CASE("a short mini-batch run learns: its loss falls below a threshold and it classifies held-out data", "[train][fit]") {
  const train::Dataset d = fake_data(240), test = fake_data(60, 99);
  for (auto kind : {train::Optimizer::Kind::momentum, train::Optimizer::Kind::adam}) {
    INFO(train::Optimizer::kind_name(kind));
    Net net(gg::f32, "dense16,relu,dense3", nn::Layout::rows, options(kind, kind == train::Optimizer::Kind::adam ? 0.01 : 0.1));
    train::Batches b(d, batch_options(16, nn::Layout::rows, gg::f32));
    std::vector<double> losses;
    std::vector<train::EpochInfo> epochs;
    train::Callbacks cb;
    cb.on_step = [&](const train::StepInfo& s) { return losses.push_back(s.loss), true; };
    cb.on_epoch = [&](const train::EpochInfo& e) { return epochs.push_back(e), true; };
    const train::FitResult r = net.trainer->fit(b, {.epochs = 4}, cb);
    CHECK(r.steps == 60);
    CHECK(r.epochs == 4);
    REQUIRE(epochs.size() == 4);
    CHECK(epochs[0].steps == 15);
    CHECK(losses.front() > 0.9);
    CHECK(epochs.back().loss < 0.1);
    CHECK(net.trainer->evaluate(test).accuracy >= 0.95);
  }
}

TEST_CASE("a callback returning false stops the run after that step", "[train][fit]") {
  const train::Dataset d = fake_data(64);
  Net net(gg::f64, "dense3", nn::Layout::columns, options(train::Optimizer::Kind::sgd, 0.1));
  train::Batches b(d, batch_options(8));
  train::Callbacks cb;
  cb.on_step = [](const train::StepInfo& s) { return s.step < 4; };
  const train::FitResult r = net.trainer->fit(b, {.epochs = 3}, cb);
  CHECK(r.stopped_early);
  CHECK(r.steps == 5);
}

TEST_CASE("evaluate's confusion matrix, per-class accuracy and confidences match a hand-made case", "[train][evaluate]") {
  // One input feature per class and identity weights: the logits are the pixels, so each
  // example's prediction is its brightest pixel.
  train::Dataset d;
  d.name = "hand";
  d.count = 5;
  d.example = Shape{3};
  d.classes = 3;
  d.pixels = {255, 0, 0, /**/ 0, 255, 0, /**/ 0, 255, 0, /**/ 0, 0, 255, /**/ 255, 0, 0};
  d.labels = {0, 1, 0, 2, 2};  // examples 2 and 4 are wrong: true 0 predicted 1, true 2 predicted 0
  gg::Graph g(gg::f64);
  const train::Model m = train::classifier(g, nn::parse("dense3"), Shape{3}, 3, nn::Layout::columns);
  train::Trainer t(g, m, options(train::Optimizer::Kind::sgd, 0.1));
  t.train_program().set_param("W1", gg::Tensor::from<double>({3, 3}, {1, 0, 0, 0, 1, 0, 0, 0, 1}));
  const train::Evaluation e = t.evaluate(d, {}, 2);  // batches of 2: the last one partial
  CHECK(e.confusion == std::vector<std::int64_t>{1, 1, 0, /**/ 0, 1, 0, /**/ 1, 0, 1});
  CHECK(e.accuracy == 0.6);
  CHECK(e.per_class == std::vector<double>{0.5, 1.0, 0.5});
  CHECK(e.predicted == std::vector<std::int64_t>{0, 1, 1, 2, 0});
  const double p = std::exp(1.0) / (std::exp(1.0) + 2.0);  // softmax of (1, 0, 0)
  for (double c : e.confidence) CHECK_THAT(c, Catch::Matchers::WithinRel(p, 1e-12));
  CHECK_THAT(e.loss, Catch::Matchers::WithinRel((3 * -std::log(p) + 2 * -std::log(1 / (std::exp(1.0) + 2.0))) / 5, 1e-12));
}

TEST_CASE("the gradient hook between backward and update changes what the updates use", "[train][fit]") {
  const train::Dataset d = fake_data(32);
  train::TrainOptions o = options(train::Optimizer::Kind::sgd, 0.5);
  o.gradient_hook = [](gg::Graph&, const std::vector<gg::Value>&, const std::vector<gg::Value>& grads) {
    std::vector<gg::Value> out;
    for (const gg::Value& g : grads) out.push_back(g * 0.0);  // no update at all
    return out;
  };
  Net net(gg::f64, "dense4,relu,dense3", nn::Layout::columns, o);
  const std::vector<double> before = values(net.trainer->train_program().param("W1"));
  train::Batches b(d, batch_options(8));
  net.trainer->fit(b, {.steps = 3});
  CHECK(values(net.trainer->train_program().param("W1")) == before);
}

TEST_CASE("a non-finite loss stops fit naming the step, and the last checkpoint stays as it was", "[train][fit]") {
  TempDir dir;
  const train::Dataset d = fake_data(64);
  Net net(gg::f32, "dense8,relu,dense3", nn::Layout::columns, options(train::Optimizer::Kind::sgd, 1e30));
  train::Batches b(d, batch_options(16, nn::Layout::columns, gg::f32));
  const std::string ck = dir / "ck.st";
  net.trainer->save(ck, &b);
  const std::string before = gg::test::slurp(ck);
  try {
    net.trainer->fit(b, {.epochs = 5, .checkpoint = ck});
    FAIL("no divergence");
  } catch (const train::Diverged& e) {
    CHECK_THAT(e.what(), Contains("at step " + std::to_string(e.step)));
    CHECK(e.step < 4);  // within the first epoch, before any checkpoint
  }
  CHECK(gg::test::slurp(ck) == before);
}

TEST_CASE("the divergence guard holds float parameters to the limit exactly, not to the limit rounded to a float", "[train][fit]") {
  const train::Dataset d = fake_data(32);
  Net net(gg::f32, "dense4,relu,dense3", nn::Layout::columns, options(train::Optimizer::Kind::sgd, 0.0));
  gg::Program& p = net.trainer->train_program();
  auto fit_with = [&](float w, double limit) {  // W1[0] = w, then one step that changes nothing
    gg::Tensor t = gg::Tensor::copy_of(p.param("W1"), gg::f32);
    t.view().ptr<float>()[0] = w;
    p.set_param("W1", t.view());
    train::Batches b(d, batch_options(8, nn::Layout::columns, gg::f32));
    train::FitOptions fo;
    fo.steps = net.trainer->steps_done() + 1;  // the run's length, not this call's
    fo.max_param_abs = limit;
    try {
      net.trainer->fit(b, fo);
      return std::string("within");
    } catch (const train::Diverged& e) {
      return std::string(e.what());
    }
  };
  // 100 + 1e-10 and 100 - 1e-10 both round to the float 100.
  CHECK(fit_with(100.0f, 100 + 1e-10) == "within");
  CHECK_THAT(fit_with(std::nextafter(100.0f, 200.0f), 100 + 1e-10), Contains("'W1'"));
  CHECK_THAT(fit_with(100.0f, 100 - 1e-10), Contains("'W1'"));
  CHECK_THAT(fit_with(-100.0f, 100 - 1e-10), Contains("'W1'"));
  CHECK(fit_with(std::nextafter(100.0f, 0.0f), 100 - 1e-10) == "within");
  // A limit past the largest float: every finite float is within it.
  CHECK(fit_with(3e38f, 1e300) == "within");
}

// ---- checkpoints --------------------------------------------------------------------------------------------------

TEST_CASE("a checkpoint round trip restores parameters and optimizer state bit for bit", "[train][checkpoint]") {
  TempDir dir;
  const train::Dataset d = fake_data(48);
  Net a(gg::f32, "dense6,tanh,dense3", nn::Layout::rows, options(train::Optimizer::Kind::adam, 0.01));
  train::Batches ba(d, batch_options(16, nn::Layout::rows, gg::f32));
  a.trainer->fit(ba, {.epochs = 2});
  a.trainer->save(dir / "ck.st", &ba, {{"note", "x"}});
  Net b(gg::f32, "dense6,tanh,dense3", nn::Layout::rows, options(train::Optimizer::Kind::adam, 0.01));
  b.trainer->load(dir / "ck.st");
  for (const std::string& name : a.trainer->train_program().param_names()) {
    INFO(name);
    CHECK(values(b.trainer->train_program().param(name)) == values(a.trainer->train_program().param(name)));
  }
  CHECK(a.trainer->train_program().param_names().size() == 4 + 3 * 4);  // W, b and Adam's m, v, t for each
  const train::CheckpointInfo info = train::read_checkpoint_info(dir / "ck.st");
  CHECK(info.get("spec") == "dense6,tanh,dense3");
  CHECK(info.get("step") == "6");
  CHECK(info.get("note") == "x");
  CHECK_THAT(info.get("graph"), Contains("matmul(X, W1)"));
}

TEST_CASE("a resumed run's losses and parameters equal the uninterrupted run's, bit for bit", "[train][checkpoint]") {
  TempDir dir;
  const train::Dataset d = fake_data(70);
  train::TrainOptions o = options(train::Optimizer::Kind::adamw, 0.02);
  o.optimizer.weight_decay = 0.01;
  o.schedule.kind = train::Schedule::Kind::cosine;
  o.schedule.warmup = 3;
  auto run = [&](train::Trainer& t, train::Batches& b, const train::FitOptions& fo) {
    std::vector<double> losses;
    train::Callbacks cb;
    cb.on_step = [&](const train::StepInfo& s) { return losses.push_back(s.loss), true; };
    t.fit(b, fo, cb);
    return losses;
  };
  Net whole(gg::f32, "dense8,relu,dense3", nn::Layout::columns, o);
  train::Batches bw(d, batch_options(16, nn::Layout::columns, gg::f32));
  const std::vector<double> all = run(*whole.trainer, bw, {.epochs = 5});
  REQUIRE(all.size() == 25);

  Net first(gg::f32, "dense8,relu,dense3", nn::Layout::columns, o);
  train::Batches b1(d, batch_options(16, nn::Layout::columns, gg::f32));
  const std::vector<double> head = run(*first.trainer, b1, {.epochs = 5, .stop_after_epochs = 2, .checkpoint = dir / "ck.st"});
  REQUIRE(head.size() == 10);
  Net second(gg::f32, "dense8,relu,dense3", nn::Layout::columns, o);
  train::Batches b2(d, batch_options(16, nn::Layout::columns, gg::f32));
  second.trainer->resume(dir / "ck.st", b2);
  CHECK(second.trainer->steps_done() == 10);
  const std::vector<double> tail = run(*second.trainer, b2, {.epochs = 5});
  std::vector<double> joined = head;
  joined.insert(joined.end(), tail.begin(), tail.end());
  CHECK(joined == all);
  for (const std::string& name : whole.trainer->train_program().param_names()) {
    INFO(name);
    CHECK(values(second.trainer->train_program().param(name)) == values(whole.trainer->train_program().param(name)));
  }
}

TEST_CASE("loading refuses a checkpoint of another network, dtype, batch size or optimizer, naming the file", "[train][checkpoint]") {
  TempDir dir;
  const train::Dataset d = fake_data(32);
  Net a(gg::f32, "dense6,relu,dense3", nn::Layout::columns, options(train::Optimizer::Kind::sgd, 0.1));
  train::Batches ba(d, batch_options(8, nn::Layout::columns, gg::f32));
  a.trainer->save(dir / "ck.st", &ba);
  Net other(gg::f32, "dense7,relu,dense3", nn::Layout::columns, options(train::Optimizer::Kind::sgd, 0.1));
  CHECK_THAT(message_of<std::runtime_error>([&] { other.trainer->load(dir / "ck.st"); }),
             Contains("ck.st") && Contains("another network") && Contains("dense7"));
  Net wide(gg::f64, "dense6,relu,dense3", nn::Layout::columns, options(train::Optimizer::Kind::sgd, 0.1));
  CHECK_THAT(message_of<std::runtime_error>([&] { wide.trainer->load(dir / "ck.st"); }), Contains("float32") && Contains("float64"));
  Net same(gg::f32, "dense6,relu,dense3", nn::Layout::columns, options(train::Optimizer::Kind::sgd, 0.1));
  train::Batches b16(d, batch_options(16, nn::Layout::columns, gg::f32));
  CHECK_THAT(message_of<std::runtime_error>([&] { same.trainer->resume(dir / "ck.st", b16); }), Contains("batches of 8"));
  Net adam(gg::f32, "dense6,relu,dense3", nn::Layout::columns, options(train::Optimizer::Kind::adam, 0.01));
  train::Batches b8(d, batch_options(8, nn::Layout::columns, gg::f32));
  CHECK_THAT(message_of<std::runtime_error>([&] { adam.trainer->resume(dir / "ck.st", b8); }),
             Contains("ck.st") && Contains("saved with the sgd optimizer, resumed with adam"));
  gg::io::save_safetensors(dir / "plain.st", {{"x", gg::Tensor(gg::f32, {2})}});
  CHECK_THAT(message_of<std::runtime_error>([&] { train::read_checkpoint_info(dir / "plain.st"); }),
             Contains("plain.st") && Contains("not a gradgraph checkpoint"));
}
