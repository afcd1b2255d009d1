// Sparse inputs: gg::to_sparse, and products that read an input fed with its nonzeros, which
// must equal the dense GEMM's (within rounding: the order of the sums differs) in every
// arrangement a network uses them: W X and dZ X^T with examples as columns (the notebook), X W
// and X^T dZ with examples as rows, transposed operands, widths that are not whole vectors.
#include <gradgraph/gradgraph.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

using namespace gg;

namespace {

// A dense tensor with about `density` of its entries nonzero (uniform in [-1, 1] otherwise).
Tensor random_sparse(DType t, const Shape& s, double density, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1), v(-1, 1);
  Tensor x = Tensor::zeros(t, s);
  for (std::int64_t i = 0; i < s.numel(); ++i) {
    const double r = u(rng) < density ? v(rng) : 0.0;
    if (t == f32)
      static_cast<float*>(x.data())[i] = static_cast<float>(r);
    else
      static_cast<double*>(x.data())[i] = r;
  }
  return x;
}

Tensor random_dense(DType t, const Shape& s, unsigned seed) { return random_sparse(t, s, 1.0, seed); }

double at(const TensorView& v, std::int64_t i, std::int64_t j) {
  const std::int64_t o = i * v.strides[0] + j * v.strides[1];
  return v.dtype == f32 ? static_cast<const float*>(v.data)[o] : static_cast<const double*>(v.data)[o];
}

// max |a - b| / max |b|: the normwise relative difference of two rank-2 views.
double rel_diff(const TensorView& a, const TensorView& b) {
  REQUIRE(a.shape == b.shape);
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < a.shape[0]; ++i)
    for (std::int64_t j = 0; j < a.shape[1]; ++j) {
      num = std::max(num, std::abs(at(a, i, j) - at(b, i, j)));
      den = std::max(den, std::abs(at(b, i, j)));
    }
  return den > 0 ? num / den : num;
}

bool bitwise_equal(const TensorView& a, const TensorView& b) {
  for (std::int64_t i = 0; i < a.shape[0]; ++i)
    for (std::int64_t j = 0; j < a.shape[1]; ++j)
      if (at(a, i, j) != at(b, i, j)) return false;
  return true;
}

double tolerance(DType t) { return t == f32 ? 1e-6 : 1e-12; }

// The four products of a dense layer on sparse inputs, in one program: the forward product and
// the weight gradient, with examples as columns (X {k, batch}: nonzeros grouped per column) or
// as rows (X {batch, k}: per row).
struct Layer {
  Graph g;
  Value x, gz, w, z, dw;
  bool columns;
  Layer(DType t, std::int64_t m, std::int64_t k, bool cols, bool trans_w) : g(t), columns(cols) {
    if (columns) {
      x = g.input("X", {k, dyn});
      gz = g.input("G", {m, dyn});
      w = trans_w ? g.param("W", {k, m}) : g.param("W", {m, k});
      z = matmul(w, x, trans_w, false);     // Z = W X (or W^T X)
      dw = matmul(gz, x, false, true);      // dW = G X^T
    } else {
      x = g.input("X", {dyn, k});
      gz = g.input("G", {dyn, m});
      w = trans_w ? g.param("W", {m, k}) : g.param("W", {k, m});
      z = matmul(x, w, false, trans_w);     // Z = X W (or X W^T)
      dw = matmul(x, gz, true, false);      // dW = X^T G
    }
  }
  int major() const { return columns ? 1 : 0; }
};

struct Outputs {
  Tensor z, dw;
};

Outputs run_layer(Layer& l, const Tensor& x, const Tensor& gz, const Tensor& w, const SparseMatrix* s, int threads,
                  double density_limit = kDefaultSparseDensity) {
  Program p(l.g, {l.z, l.dw}, {.threads = threads, .sparse_density = density_limit});
  p.set_param("W", w.view());
  p.run({{l.x, x.view(), s}, {l.gz, gz.view()}});
  return {Tensor::copy_of(p.get(l.z)), Tensor::copy_of(p.get(l.dw))};
}

}  // namespace

TEST_CASE("to_sparse keeps every nonzero of a matrix, grouped by rows or by columns, and to_dense gives it back") {
  for (DType t : {f32, f64})
    for (int major : {0, 1}) {
      const Tensor x = random_sparse(t, {13, 29}, 0.2, 7);
      const SparseMatrix s = to_sparse(x.view(), major);
      CHECK(s.groups() == (major == 0 ? 13 : 29));
      std::int64_t nnz = 0;
      for (std::int64_t i = 0; i < 13 * 29; ++i) nnz += at(x.view(), i / 29, i % 29) != 0;
      CHECK(s.nnz() == nnz);
      CHECK(s.density() == Approx(static_cast<double>(nnz) / (13 * 29)));
      for (std::int64_t g = 0; g < s.groups(); ++g)
        for (std::int64_t q = s.ptr[g] + 1; q < s.ptr[g + 1]; ++q) CHECK(s.index[q - 1] < s.index[q]);
      CHECK(bitwise_equal(to_dense(s).view(), x.view()));
    }
}

TEST_CASE("to_sparse reads strided views, refills its storage in place and rejects what it cannot hold") {
  const Tensor x = random_sparse(f32, {40, 17}, 0.3, 3);
  const SparseMatrix s = to_sparse(x.view().transposed(), 1);  // {17, 40} grouped per column
  CHECK(bitwise_equal(to_dense(s).view(), x.view().transposed()));
  SparseMatrix r = to_sparse(random_sparse(f32, {40, 17}, 0.9, 4).view(), 0);
  const std::size_t capacity = r.index.capacity();
  to_sparse(x.view(), 0, r);
  CHECK(r.index.capacity() == capacity);
  CHECK(bitwise_equal(to_dense(r).view(), x.view()));
  CHECK_THROWS_WITH(to_sparse(Tensor::zeros(f32, {2, 3, 4}).view(), 0), Catch::Contains("rank 2"));
  CHECK_THROWS_WITH(to_sparse(Tensor::zeros(i64, {2, 3}).view(), 0), Catch::Contains("float"));
  CHECK_THROWS_WITH(to_sparse(x.view(), 2), Catch::Contains("major"));
}

TEST_CASE("add_cross_blocks groups each block's nonzeros by their other index, and a refill drops them") {
  for (DType t : {f32, f64}) {
    const std::int64_t groups = 2 * kCrossSpan + 5, len = 37;  // a last block with 5 groups
    const Tensor x = random_sparse(t, {len, groups}, 0.2, 17);
    SparseMatrix s = to_sparse(x.view(), 1);
    CHECK_FALSE(s.has_cross());
    add_cross_blocks(s, 2);
    REQUIRE(s.has_cross());
    CHECK(s.cross.blocks == 3);
    std::int64_t seen = 0;
    for (std::int64_t b = 0; b < 3; ++b)
      for (std::int64_t i = 0; i < len; ++i) {
        const std::int64_t* ptr = s.cross.ptr.data() + b * (len + 1);
        std::int64_t want = 0;  // the block's nonzeros of row i, in group order
        for (std::int64_t q = ptr[i]; q < ptr[i + 1]; ++q) {
          const std::int64_t g = b * kCrossSpan + s.cross.offset[q];
          while (want < kCrossSpan && at(x.view(), i, b * kCrossSpan + want) == 0) ++want;
          CHECK(g == b * kCrossSpan + want++);
          const double v = t == f32 ? s.cross.values<float>()[q] : s.cross.values<double>()[q];
          CHECK(v == at(x.view(), i, g));
          ++seen;
        }
        while (want < kCrossSpan && b * kCrossSpan + want < groups) CHECK(at(x.view(), i, b * kCrossSpan + want++) == 0);
      }
    CHECK(seen == s.nnz());
    to_sparse(x.view(), 1, s);
    CHECK_FALSE(s.has_cross());
  }
}

TEST_CASE("Sparse products equal the dense GEMM for examples as columns or rows, several densities and widths") {
  for (DType t : {f32, f64})
    for (bool columns : {true, false})
      for (bool trans_w : {false, true})
        for (std::int64_t m : {7, 16, 64, 70})
          for (double density : {0.0, 0.02, 0.19, 0.5, 1.0}) {
            const std::int64_t k = 53, batch = 37;
            CAPTURE(dtype_name(t), columns, trans_w, m, density);
            Layer l(t, m, k, columns, trans_w);
            const Tensor x = random_sparse(t, columns ? Shape{k, batch} : Shape{batch, k}, density, 11);
            const Tensor gz = random_dense(t, columns ? Shape{m, batch} : Shape{batch, m}, 12);
            const Tensor w = random_dense(t, l.w.shape(), 13);
            const SparseMatrix s = to_sparse(x.view(), l.major());
            const Outputs dense = run_layer(l, x, gz, w, nullptr, 2);
            const Outputs sparse = run_layer(l, x, gz, w, &s, 2, 1.0);
            CHECK(rel_diff(sparse.z.view(), dense.z.view()) <= tolerance(t));
            CHECK(rel_diff(sparse.dw.view(), dense.dw.view()) <= tolerance(t));
          }
}

TEST_CASE("Sparse products over a whole data set (threads split the examples) equal the dense GEMM, any thread count") {
  // 9000 examples: past the size from which threads split the nonzeros' groups, not C's rows.
  for (DType t : {f32, f64})
    for (bool columns : {true, false}) {
      const std::int64_t m = 40, k = 30, batch = 9000;
      CAPTURE(dtype_name(t), columns);
      Layer l(t, m, k, columns, false);
      const Tensor x = random_sparse(t, columns ? Shape{k, batch} : Shape{batch, k}, 0.2, 41);
      const Tensor gz = random_dense(t, columns ? Shape{m, batch} : Shape{batch, m}, 42);
      const Tensor w = random_dense(t, l.w.shape(), 43);
      const SparseMatrix s = to_sparse(x.view(), l.major(), 2);
      const Outputs dense = run_layer(l, x, gz, w, nullptr, 2);
      const Outputs one = run_layer(l, x, gz, w, &s, 1, 1.0);
      CHECK(rel_diff(one.z.view(), dense.z.view()) <= tolerance(t));
      CHECK(rel_diff(one.dw.view(), dense.dw.view()) <= tolerance(t));
      for (int threads : {2, 3}) {
        const Outputs more = run_layer(l, x, gz, w, &s, threads, 1.0);
        CHECK(bitwise_equal(more.z.view(), one.z.view()));
        CHECK(bitwise_equal(more.dw.view(), one.dw.view()));
      }
    }
}

TEST_CASE("The weight gradient of a whole data set from the cross blocks equals the dense GEMM, any thread count") {
  // 9000 examples in 9 blocks (the last partial) over 8 chunks; 70 rows: a panel of 4 vectors and a partial one.
  for (DType t : {f32, f64})
    for (bool columns : {true, false}) {
      const std::int64_t m = 70, k = 30, batch = 9000;
      CAPTURE(dtype_name(t), columns);
      Layer l(t, m, k, columns, false);
      const Tensor x = random_sparse(t, columns ? Shape{k, batch} : Shape{batch, k}, 0.2, 51);
      const Tensor gz = random_dense(t, columns ? Shape{m, batch} : Shape{batch, m}, 52);
      const Tensor w = random_dense(t, l.w.shape(), 53);
      const SparseMatrix plain = to_sparse(x.view(), l.major());
      SparseMatrix s = plain;
      add_cross_blocks(s, 2);
      const Outputs dense = run_layer(l, x, gz, w, nullptr, 2);
      const Outputs one = run_layer(l, x, gz, w, &s, 1, 1.0);
      CHECK(rel_diff(one.dw.view(), dense.dw.view()) <= tolerance(t));
      // The cross blocks sum in another order than the scatter: equal bits would mean they were not used.
      CHECK_FALSE(bitwise_equal(one.dw.view(), run_layer(l, x, gz, w, &plain, 1, 1.0).dw.view()));
      for (int threads : {2, 3}) CHECK(bitwise_equal(run_layer(l, x, gz, w, &s, threads, 1.0).dw.view(), one.dw.view()));
    }
}

TEST_CASE("A sparse product is chosen from the fed density, reported, and off at sparse_density 0") {
  Layer l(f32, 64, 100, true, false);
  const Tensor x = random_sparse(f32, {100, 50}, 0.2, 5), gz = random_dense(f32, {64, 50}, 6);
  const SparseMatrix s = to_sparse(x.view(), 1);
  Program p(l.g, {l.z, l.dw}, {.threads = 2, .sparse_density = 0.3});
  p.run({{l.x, x.view(), &s}, {l.gz, gz.view()}});
  std::vector<Program::ProductChoice> c = p.product_choices();
  REQUIRE(c.size() == 2);
  for (const auto& x : c) {
    CHECK(x.op == "matmul");
    CHECK(x.input == "X");
    CHECK(x.density == Approx(s.density()));
    CHECK(x.sparse);
  }
  p.set_sparse_density(0.1);  // now the input is too dense
  p.run({{l.x, x.view(), &s}, {l.gz, gz.view()}});
  for (const auto& x : p.product_choices()) CHECK_FALSE(x.sparse);
  p.set_sparse_density(0);
  p.run({{l.x, x.view(), &s}, {l.gz, gz.view()}});
  for (const auto& x : p.product_choices()) CHECK_FALSE(x.sparse);
  const Tensor zeros = Tensor::zeros(f32, {100, 50});  // density 0: still dense at sparse_density 0
  const SparseMatrix none = to_sparse(zeros.view(), 1);
  p.run({{l.x, zeros.view(), &none}, {l.gz, gz.view()}});
  for (const auto& x : p.product_choices()) CHECK_FALSE(x.sparse);
  p.set_sparse_density(1);
  p.run({{l.x, x.view()}, {l.gz, gz.view()}});  // fed without nonzeros
  for (const auto& x : p.product_choices()) {
    CHECK_FALSE(x.sparse);
    CHECK(x.density == -1);
  }
  CHECK_THROWS_WITH(p.set_sparse_density(1.5), Catch::Contains("sparse_density"));
}

TEST_CASE("Sparse products give the same bits for any thread count") {
  for (DType t : {f32, f64})
    for (bool columns : {true, false}) {
      Layer l(t, 64, 300, columns, false);
      const std::int64_t batch = 257;
      const Tensor x = random_sparse(t, columns ? Shape{300, batch} : Shape{batch, 300}, 0.2, 21);
      const Tensor gz = random_dense(t, columns ? Shape{64, batch} : Shape{batch, 64}, 22);
      const Tensor w = random_dense(t, l.w.shape(), 23);
      const SparseMatrix s = to_sparse(x.view(), l.major());
      const Outputs one = run_layer(l, x, gz, w, &s, 1, 1.0);
      for (int threads : {2, 3}) {
        const Outputs more = run_layer(l, x, gz, w, &s, threads, 1.0);
        CHECK(bitwise_equal(more.z.view(), one.z.view()));
        CHECK(bitwise_equal(more.dw.view(), one.dw.view()));
      }
    }
}

TEST_CASE("Nonzeros grouped the other way than planned still give the right product") {
  // Planned for groups along the batch axis (columns here); rows grouped instead need a larger
  // scratch for the forward product, so that one runs dense: correct either way.
  Layer l(f64, 16, 40, true, false);
  const Tensor x = random_sparse(f64, {40, 300}, 0.2, 31), gz = random_dense(f64, {16, 300}, 32);
  const Tensor w = random_dense(f64, l.w.shape(), 33);
  const SparseMatrix s = to_sparse(x.view(), 0);
  const Outputs dense = run_layer(l, x, gz, w, nullptr, 2);
  const Outputs sparse = run_layer(l, x, gz, w, &s, 2, 1.0);
  CHECK(rel_diff(sparse.z.view(), dense.z.view()) <= 1e-12);
  CHECK(rel_diff(sparse.dw.view(), dense.dw.view()) <= 1e-12);
}

TEST_CASE("Nonzeros that do not match the fed matrix are rejected by run") {
  Layer l(f32, 8, 10, true, false);
  const Tensor x = random_sparse(f32, {10, 4}, 0.5, 1), gz = random_dense(f32, {8, 4}, 2);
  const SparseMatrix wrong_shape = to_sparse(random_sparse(f32, {10, 5}, 0.5, 1).view(), 1);
  const SparseMatrix wrong_dtype = to_sparse(random_sparse(f64, {10, 4}, 0.5, 1).view(), 1);
  Program p(l.g, {l.z, l.dw});
  CHECK_THROWS_WITH(p.run({{l.x, x.view(), &wrong_shape}, {l.gz, gz.view()}}),
                    Catch::Contains("input 'X'") && Catch::Contains("{10, 5}"));
  CHECK_THROWS_WITH(p.run({{l.x, x.view(), &wrong_dtype}, {l.gz, gz.view()}}), Catch::Contains("float64"));
}

namespace {

// A two-layer network trained with plain SGD, examples as columns: both weight gradients are
// GEMMs read only by their updates, so the fusion pass folds each update into its GEMM.
struct SgdNet {
  Graph g;
  Value x, w1, w2, loss;
  std::vector<Value> grads, updates;
  explicit SgdNet(DType t, double weight_decay = 0) : g(t) {
    x = g.input("X", {30, dyn});
    w1 = g.param("W1", {16, 30}, uniform(-0.5, 0.5));
    w2 = g.param("W2", {5, 16}, uniform(-0.5, 0.5));
    const Value z2 = matmul(w2, relu(matmul(w1, x)));
    loss = mean(z2 * z2) * 0.5;
    grads = gradients(loss, {w1, w2});
    updates = sgd({w1, w2}, grads, {.lr = 0.1, .weight_decay = weight_decay});
  }
  std::vector<Value> fetches() const {
    std::vector<Value> f = updates;
    f.push_back(loss);
    return f;
  }
};

int count_op(Program& p, std::int64_t batch, const std::string& op) {
  int n = 0;
  for (const std::string& s : p.schedule(batch)) n += s.rfind(op + " ", 0) == 0;
  return n;
}

}  // namespace

TEST_CASE("A plain SGD update is folded into its weight gradient's GEMM, dense or sparse, and trains the same") {
  for (DType t : {f32, f64})
    for (bool sparse : {false, true}) {
      CAPTURE(dtype_name(t), sparse);
      SgdNet net(t);
      Program folded(net.g, net.fetches(), {.threads = 2, .seed = 4});
      Program plain(net.g, net.fetches(), {.fuse = false, .threads = 2, .seed = 4});
      const Tensor x = random_sparse(t, {30, 50}, 0.2, 8);
      const SparseMatrix s = to_sparse(x.view(), 1);
      for (int step = 0; step < 3; ++step) {
        folded.run({{net.x, x.view(), sparse ? &s : nullptr}});
        plain.run({{net.x, x.view()}});
        CHECK(folded.scalar(net.loss) == Approx(plain.scalar(net.loss)).epsilon(tolerance(t) * 10));
      }
      CHECK(count_op(folded, 50, "gemm_sgd_update") == 2);
      CHECK(count_op(folded, 50, "sgd_update") == 0);
      if (sparse) CHECK(folded.product_choices().size() == 2);  // the forward product and W1's folded update
      for (const char* w : {"W1", "W2"}) {
        CAPTURE(w);
        CHECK(rel_diff(folded.param(w), plain.param(w)) <= tolerance(t));
      }
    }
}

TEST_CASE("An SGD update with weight decay, or whose gradient is fetched, is not folded") {
  SgdNet decayed(f32, 1e-3);
  Program p(decayed.g, decayed.fetches());
  CHECK(count_op(p, 8, "gemm_sgd_update") == 0);
  SgdNet fetched(f32);
  std::vector<Value> f = fetched.fetches();
  f.push_back(fetched.grads[0]);
  Program q(fetched.g, f);
  CHECK(count_op(q, 8, "gemm_sgd_update") == 1);  // W2's only
}

TEST_CASE("A folded update follows the learning rate set by a schedule") {
  SgdNet net(f64);
  Program folded(net.g, net.fetches(), {.threads = 1, .seed = 4});
  Program plain(net.g, net.fetches(), {.fuse = false, .threads = 1, .seed = 4});
  const Tensor x = random_sparse(f64, {30, 20}, 0.5, 9);
  for (double lr : {0.3, 0.01}) {
    CHECK(folded.set_learning_rate(lr) == 2);
    plain.set_learning_rate(lr);
    folded.run({{net.x, x.view()}});
    plain.run({{net.x, x.view()}});
  }
  CHECK(rel_diff(folded.param("W1"), plain.param("W1")) <= 1e-12);
}
