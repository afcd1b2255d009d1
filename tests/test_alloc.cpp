// After the first run at a batch size, Program::run allocates nothing: every buffer was
// planned once. Proved by counting every malloc-family call in the process (libstdc++,
// libgomp and BLIS all allocate through them) across steady-state runs.
#include <gradgraph/gradgraph.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <cstddef>
#include <vector>

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
}  // namespace

#if defined(__SANITIZE_ADDRESS__)
// ASan owns malloc: count through its allocator hooks instead of interposing.
// (declared here: GCC ships the runtime but not clang's <sanitizer/allocator_interface.h>)
extern "C" int __sanitizer_install_malloc_and_free_hooks(void (*)(const volatile void*, std::size_t),
                                                         void (*)(const volatile void*));
namespace {
void on_malloc(const volatile void*, std::size_t) {
  if (counting.load(std::memory_order_relaxed)) ++allocations;
}
void on_free(const volatile void*) {}
const int hooks_installed = __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
}  // namespace
#else
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void* __libc_valloc(std::size_t);
void* __libc_pvalloc(std::size_t);

void* malloc(std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) ++allocations;
  return __libc_malloc(n);
}
void* calloc(std::size_t a, std::size_t b) {
  if (counting.load(std::memory_order_relaxed)) ++allocations;
  return __libc_calloc(a, b);
}
void* realloc(void* p, std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) ++allocations;
  return __libc_realloc(p, n);
}
void* aligned_alloc(std::size_t al, std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) ++allocations;
  return __libc_memalign(al, n);
}
void* memalign(std::size_t al, std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) ++allocations;
  return __libc_memalign(al, n);
}
void* valloc(std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) ++allocations;
  return __libc_valloc(n);
}
void* pvalloc(std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) ++allocations;
  return __libc_pvalloc(n);
}
int posix_memalign(void** out, std::size_t al, std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) ++allocations;
  *out = __libc_memalign(al, n);
  return *out ? 0 : 12;
}
}
#endif

namespace {

struct Mlp {
  gg::Graph g{gg::f32};
  gg::Value X, Y, L, loss, acc;
  std::vector<gg::Value> fetch;
  Mlp() {
    X = g.input("X", {784, gg::dyn});
    Y = g.input("Y", {10, gg::dyn});
    L = g.input("L", {gg::dyn}, gg::i64);
    auto W1 = g.param("W1", {64, 784}, gg::he_normal());
    auto b1 = g.param("b1", {64, 1});
    auto W2 = g.param("W2", {10, 64}, gg::he_normal());
    auto b2 = g.param("b2", {10, 1});
    auto Z2 = gg::matmul(W2, gg::relu(gg::matmul(W1, X) + b1)) + b2;
    loss = gg::softmax_cross_entropy(Z2, Y, 0);
    acc = gg::mean(gg::equal(gg::argmax(Z2, 0), L));
    std::vector<gg::Value> params = {W1, b1, W2, b2};
    fetch = gg::sgd(params, gg::gradients(loss, params), {.lr = 0.1, .momentum = 0.9});
    fetch.push_back(loss);
    fetch.push_back(acc);
  }
};

}  // namespace

namespace {
// `count` side x side images of 10 classes, bytes from a fixed pattern.
gg::train::Dataset fake_images(std::int64_t count, std::int64_t side) {
  gg::train::Dataset d;
  d.name = "fake";
  d.count = count;
  d.example = gg::Shape{side, side};
  d.classes = 10;
  for (std::int64_t i = 0; i < count * side * side; ++i) d.pixels.push_back(static_cast<std::uint8_t>((i * 7) % 251));
  for (std::int64_t i = 0; i < count; ++i) d.labels.push_back(i % 10);
  return d;
}
}  // namespace

TEST_CASE("a training step allocates nothing after the first run at each batch size") {
  Mlp net;
  gg::CompileOptions opts;
  // Two threads: libgomp reuses a cached team for every BLIS region of that size (a team of
  // one it allocates afresh each time, see lib/ops/matmul.cpp).
  opts.threads = 2;
  gg::Program p(net.g, net.fetch, opts);
  const std::int64_t big = 256, small = 96;
  gg::Tensor x(gg::f32, {big, 784}), y(gg::f32, {10, big}), l(gg::i64, {big});
  for (std::int64_t j = 0; j < big; ++j) {
    y.set({j % 10, j}, 1.0);
    l.set({j}, static_cast<double>(j % 10));
    for (std::int64_t i = 0; i < 784; ++i) x.set({j, i}, static_cast<double>((i * 7 + j) % 13) / 13.0);
  }
  // X is fed as a strided view of example-major storage, as mnist-train does.
  auto feed = [&](std::int64_t m) {
    gg::TensorView xv = x.view().slice_leading(0, m).transposed();
    p.run({{net.X, xv}, {net.Y, y.view().slice_trailing(0, m)}, {net.L, l.view().slice_leading(0, m)}});
  };
  feed(big);
  feed(small);  // both plans exist now
  double sum = 0;
  counting = true;
  for (int i = 0; i < 10; ++i) {
    feed(big);
    sum += p.scalar(net.loss) + p.scalar(net.acc);
    feed(small);
    sum += p.scalar(net.loss);
  }
  counting = false;
  CHECK(sum > 0);
  CHECK(allocations.load() == 0);
}

TEST_CASE("training epochs through the library's batches and trainer allocate nothing after the first epoch") {
  const gg::train::Dataset d = fake_images(300, 28);
  gg::Graph g(gg::f32);
  const gg::train::Model m = gg::train::classifier(g, gg::nn::parse("dense32,relu,dense10"), d.example, 10, gg::nn::Layout::rows);
  gg::train::TrainOptions o;
  o.optimizer = {.kind = gg::train::Optimizer::Kind::adam, .lr = 1e-3};
  o.schedule.kind = gg::train::Schedule::Kind::cosine;  // a new learning rate every step
  o.compile.threads = 2;
  gg::train::Trainer t(g, m, o);
  gg::train::Batches b(d, {.batch_size = 32, .seed = 3, .layout = gg::nn::Layout::rows, .threads = 2});
  double sum = 0;
  gg::train::Callbacks cb;
  cb.on_step = [&](const gg::train::StepInfo& s) { return sum += s.loss, true; };
  t.fit(b, {.epochs = 3, .stop_after_epochs = 1}, cb);  // plans both batch sizes (32 and the last, 12)
  counting = true;
  t.fit(b, {.epochs = 3}, cb);
  counting = false;
  CHECK(t.steps_done() == 30);
  CHECK(sum > 0);
  CHECK(allocations.load() == 0);
}

TEST_CASE("epochs on sparse images (the products from the nonzeros) allocate nothing after the first epoch") {
  gg::train::Dataset d = fake_images(300, 28);
  for (std::size_t i = 0; i < d.pixels.size(); ++i)
    if ((i * 2654435761u) % 5 != 0) d.pixels[i] = 0;  // about a fifth nonzero, unevenly per image
  for (gg::nn::Layout layout : {gg::nn::Layout::columns, gg::nn::Layout::rows}) {
    gg::Graph g(gg::f32);
    const gg::train::Model m = gg::train::classifier(g, gg::nn::parse("dense32,relu,dense10"), d.example, 10, layout);
    gg::train::TrainOptions o;
    o.optimizer = {.kind = gg::train::Optimizer::Kind::momentum, .lr = 0.05};
    o.compile.threads = 2;
    gg::train::Trainer t(g, m, o);
    gg::train::Batches b(d, {.batch_size = 32, .seed = 3, .layout = layout, .threads = 2});
    REQUIRE(b.density() < 0.3);
    double sum = 0;
    gg::train::Callbacks cb;
    cb.on_step = [&](const gg::train::StepInfo& s) { return sum += s.loss, true; };
    t.fit(b, {.epochs = 3, .stop_after_epochs = 1}, cb);
    const auto choices = t.train_program().product_choices();
    REQUIRE(choices.size() == 2);  // the first layer's product and its weight gradient
    for (const auto& c : choices) CHECK(c.sparse);
    allocations = 0;
    counting = true;
    t.fit(b, {.epochs = 3}, cb);
    counting = false;
    CHECK(sum > 0);
    CHECK(allocations.load() == 0);
  }
}

TEST_CASE("full-batch steps on a sparse data set (wide kernels, cross blocks, folded SGD) allocate nothing after the first") {
  // The notebook's setting at a smaller size: every example in one batch, past the size from
  // which the batch carries cross blocks and the products take their wide kernels.
  gg::train::Dataset d = fake_images(gg::train::kCrossGroups + 500, 28);
  for (std::size_t i = 0; i < d.pixels.size(); ++i)
    if ((i * 2654435761u) % 5 != 0) d.pixels[i] = 0;
  gg::Graph g(gg::f32);
  const gg::train::Model m =
      gg::train::classifier(g, gg::nn::parse("dense16,relu,dense10"), d.example, 10, gg::nn::Layout::columns);
  gg::train::TrainOptions o;
  o.optimizer = {.kind = gg::train::Optimizer::Kind::sgd, .lr = 0.1};
  o.compile.threads = 2;
  gg::train::Trainer t(g, m, o);
  gg::train::Batches b(d, {.batch_size = 0, .seed = 3, .layout = gg::nn::Layout::columns, .threads = 2});
  double sum = 0;
  gg::train::Callbacks cb;
  cb.on_step = [&](const gg::train::StepInfo& s) { return sum += s.loss, true; };
  t.fit(b, {.steps = 2}, cb);
  REQUIRE(b.next().sparse->has_cross());
  for (const auto& c : t.train_program().product_choices()) CHECK(c.sparse);
  allocations = 0;
  counting = true;
  t.fit(b, {.steps = 5}, cb);
  counting = false;
  CHECK(sum > 0);
  CHECK(allocations.load() == 0);
}

TEST_CASE("a convolutional network's epochs (conv, batch norm, pooling, dropout) allocate nothing after the first") {
  const gg::train::Dataset d = fake_images(100, 12);
  gg::Graph g(gg::f32);
  const gg::train::Model m =
      gg::train::classifier(g, gg::nn::parse("conv8k3p1,bn,relu,pool2,conv8k3p1,relu,pool2,flatten,dense16,bn,relu,dropout0.25,dense10"),
                            d.example, 10, gg::nn::Layout::nchw);
  gg::train::TrainOptions o;
  o.optimizer = {.kind = gg::train::Optimizer::Kind::adam, .lr = 1e-3};
  o.compile.threads = 2;
  gg::train::Trainer t(g, m, o);
  gg::train::Batches b(d, {.batch_size = 32, .seed = 3, .layout = gg::nn::Layout::nchw, .threads = 2});
  double sum = 0;
  gg::train::Callbacks cb;
  cb.on_step = [&](const gg::train::StepInfo& s) { return sum += s.loss, true; };
  t.fit(b, {.epochs = 3, .stop_after_epochs = 1}, cb);  // plans both batch sizes (32 and the last, 4)
  counting = true;
  t.fit(b, {.epochs = 3}, cb);
  counting = false;
  CHECK(t.steps_done() == 12);
  CHECK(sum > 0);
  CHECK(allocations.load() == 0);
}
