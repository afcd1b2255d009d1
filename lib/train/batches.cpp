// The batch iterator (lib/gradgraph/train.hpp): seeded shuffles, buffers allocated once, a
// parallel gather that normalises bytes into the graph's dtype.
#include <gradgraph/train.hpp>

#include <omp.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace gg::train {

namespace {

std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Where an image's pixels come from when it is shifted by (dy, dx): out(y, x) = in(y - dy, x - dx).
struct Shift {
  std::int64_t dy = 0, dx = 0;
};
Shift draw_shift(std::uint64_t seed, std::int64_t epoch, std::int64_t image, int shift) {
  const std::uint64_t h = splitmix64(seed ^ splitmix64(static_cast<std::uint64_t>(epoch) ^ splitmix64(static_cast<std::uint64_t>(image))));
  const std::uint64_t span = static_cast<std::uint64_t>(2 * shift + 1);
  return {static_cast<std::int64_t>(h % span) - shift, static_cast<std::int64_t>((h >> 32) % span) - shift};
}

// The batch's nonzeros, written by the gather while each row is in cache: example j's go to
// [ptr[j], ptr[j + 1]) (ptr computed before from the bytes).
template <typename T>
struct NonzeroOut {
  const std::int64_t* ptr = nullptr;
  std::int32_t* index = nullptr;
  T* values = nullptr;
};

constexpr std::int64_t kAhead = 4;  // rows prefetched ahead of the one being copied

template <typename T>
void normalise_rows(const Dataset& d, const std::int64_t* order, std::int64_t count, T* x, std::int64_t* labels,
                    const Normalization& n, int threads, const BatchOptions& o, std::int64_t epoch, NonzeroOut<T> nz) {
  const std::int64_t f = d.features();
  const float div = static_cast<float>(n.divisor), mean = static_cast<float>(n.mean), sd = static_cast<float>(n.std);
  const bool plain = n.mean == 0.0 && n.std == 1.0;
  auto value = [&](std::uint8_t b) {
    return plain ? static_cast<T>(static_cast<float>(b) / div) : static_cast<T>((static_cast<float>(b) / div - mean) / sd);
  };
  const Shape& e = d.example;
  const std::int64_t h = e.rank >= 2 ? e[e.rank - 2] : 1, w = e.rank >= 2 ? e[e.rank - 1] : 1, planes = f / (h * w);
  // Random rows: memory-latency bound, so split over the program's threads (the same team size as
  // its kernels, so libgomp reuses the team and nothing is allocated).
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t j = 0; j < count; ++j) {
    const std::int64_t src = order[j];
    const std::uint8_t* p = d.pixels.data() + src * f;
    // The rows come from anywhere in the data set (47 MB for MNIST): without asking for the next
    // ones ahead, each waited for memory line by line, a quarter of an MLP step at batch 64 here
    // (the step is 12% shorter with it).
    if (j + kAhead < count) {
      const std::int64_t ahead = order[j + kAhead];
      const std::uint8_t* next = d.pixels.data() + ahead * f;
      for (std::int64_t at = 0; at < f; at += 64) __builtin_prefetch(next + at, 0, 0);
      __builtin_prefetch(d.labels.data() + ahead, 0, 0);  // as scattered (480 KB of int64 for MNIST)
    }
    T* row = x + j * f;
    if (o.shift == 0) {
      if (plain)
        for (std::int64_t i = 0; i < f; ++i) row[i] = static_cast<T>(static_cast<float>(p[i]) / div);
      else
        for (std::int64_t i = 0; i < f; ++i) row[i] = static_cast<T>((static_cast<float>(p[i]) / div - mean) / sd);
    } else {
      const Shift s = draw_shift(o.seed, epoch, src, o.shift);
      for (std::int64_t c = 0; c < planes; ++c)
        for (std::int64_t y = 0; y < h; ++y)
          for (std::int64_t xx = 0; xx < w; ++xx) {
            const std::int64_t sy = y - s.dy, sx = xx - s.dx;
            const bool inside = sy >= 0 && sy < h && sx >= 0 && sx < w;
            row[(c * h + y) * w + xx] = value(inside ? p[(c * h + sy) * w + sx] : std::uint8_t{0});
          }
    }
    if (nz.ptr) {
      std::int64_t at = nz.ptr[j];
      std::int64_t i0 = 0;
#if defined(__AVX512F__)
      // 16 entries at a time: compare, compress the nonzeros (and their indices) to the front of
      // a register, store as many as there are (a masked store: the next example's nonzeros,
      // perhaps another thread's, start right after). The loop below, one step per nonzero,
      // made the gather of an MLP epoch 30 ms instead of 19 (with the labels' prefetch).
      if constexpr (std::is_same_v<T, float>) {
        __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (; i0 + 16 <= f; i0 += 16, index = _mm512_add_epi32(index, _mm512_set1_epi32(16))) {
          const __m512 v = _mm512_loadu_ps(row + i0);
          const __mmask16 k = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_UQ);  // NaN counts, -0 does not
          const int c = __builtin_popcount(static_cast<unsigned>(k));
          const auto first = static_cast<__mmask16>((1u << c) - 1);
          _mm512_mask_storeu_ps(nz.values + at, first, _mm512_maskz_compress_ps(k, v));
          _mm512_mask_storeu_epi32(nz.index + at, first, _mm512_maskz_compress_epi32(k, index));
          at += c;
        }
      }
#endif
      // 64 entries at a time: a bit mask of the nonzeros (a branch-free compare the compiler
      // vectorises), then one step per set bit. A branch per entry mispredicts on one in five.
      for (; i0 < f; i0 += 64) {
        const std::int64_t n = std::min<std::int64_t>(64, f - i0);
        std::uint64_t mask = 0;
        for (std::int64_t i = 0; i < n; ++i) mask |= static_cast<std::uint64_t>(row[i0 + i] != T(0)) << i;
        while (mask) {
          const std::int64_t i = i0 + __builtin_ctzll(mask);
          mask &= mask - 1;
          nz.index[at] = static_cast<std::int32_t>(i);
          nz.values[at++] = row[i];
        }
      }
    }
    labels[j] = d.labels[static_cast<std::size_t>(src)];
  }
}

}  // namespace

Batches::Batches(const Dataset& d, const BatchOptions& o)
    : data_(&d), opts_(o), rng_(RngKind::standard, o.seed), rng_at_epoch_start_(rng_) {
  if (d.count <= 0) throw std::invalid_argument(d.name + ": no examples");
  if (!is_float(o.dtype)) throw std::invalid_argument("Batches: the inputs' dtype must be float32 or float64");
  if (o.batch_size < 0) throw std::invalid_argument("Batches: negative batch size");
  if (o.shift < 0) throw std::invalid_argument("Batches: negative shift");
  if (o.shift > 0 && (d.example.rank < 2 || o.shift >= std::min(d.example[d.example.rank - 2], d.example[d.example.rank - 1])))
    throw std::invalid_argument("Batches: a shift of " + std::to_string(o.shift) + " pixels needs images larger than that, not " +
                                to_string(d.example));
  if (static_cast<std::int64_t>(d.pixels.size()) != d.count * d.features() ||
      static_cast<std::int64_t>(d.labels.size()) != d.count)
    throw std::invalid_argument(d.name + ": pixels or labels do not match the example count");
  batch_ = o.batch_size == 0 ? d.count : std::min(o.batch_size, d.count);
  steps_per_epoch_ = (d.count + batch_ - 1) / batch_;
  if (o.shards < 1 || o.shard < 0 || o.shard >= o.shards)
    throw std::invalid_argument("Batches: shard " + std::to_string(o.shard) + " of " + std::to_string(o.shards));
  const std::int64_t last = d.count - (steps_per_epoch_ - 1) * batch_;
  if (last < o.shards)
    throw std::invalid_argument("Batches: " + std::string(last == batch_ ? "a batch" : "the last batch of an epoch") + " of " +
                                std::to_string(last) + " examples cannot be split over " + std::to_string(o.shards) +
                                " ranks (choose a batch size that leaves every rank an example)");
  order_.resize(static_cast<std::size_t>(d.count));
  std::iota(order_.begin(), order_.end(), std::int64_t{0});
  // The largest shard of a full batch: the buffers hold one shard, not the whole batch.
  const std::int64_t most_here = (batch_ + o.shards - 1) / o.shards;
  xbuf_ = Tensor(o.dtype, {most_here, d.features()});
  lbuf_ = Tensor(DType::i64, {most_here});
  if (o.layout == nn::Layout::nchw) return;

  // The density of the normalised data, from the bytes: which byte values normalise to zero is a
  // table of 256 (the same arithmetic as the gather), and per example the nonzeros are counted,
  // so the storage of a batch's nonzeros is reserved once for the densest possible batch (a
  // shift only moves pixels out). Steps then never allocate.
  const Normalization& n = o.normalization;
  const bool plain = n.mean == 0.0 && n.std == 1.0;
  const float div = static_cast<float>(n.divisor), mean = static_cast<float>(n.mean), sd = static_cast<float>(n.std);
  for (int b = 0; b < 256; ++b) {
    const float v = static_cast<float>(b) / div;
    zero_byte_[static_cast<std::size_t>(b)] = (plain ? v : (v - mean) / sd) == 0.0f;
  }
  const std::int64_t f = d.features();
  std::vector<std::int64_t> per_example(static_cast<std::size_t>(d.count));
  std::int64_t total = 0;
  for (std::int64_t j = 0; j < d.count; ++j) {
    const std::uint8_t* p = d.pixels.data() + j * f;
    std::int64_t c = 0;
    for (std::int64_t i = 0; i < f; ++i) c += !zero_byte_[p[i]];
    per_example[static_cast<std::size_t>(j)] = c;
    total += c;
  }
  density_ = f > 0 ? static_cast<double>(total) / static_cast<double>(d.count * f) : 1;
  sparse_ = o.sparse && density_ <= kSparseData && zero_byte_[0];
  if (!sparse_) return;
  nonzeros_of_.assign(per_example.begin(), per_example.end());
  std::int64_t most = total;
  if (most_here < d.count) {
    std::nth_element(per_example.begin(), per_example.begin() + most_here, per_example.end(), std::greater<>());
    most = std::accumulate(per_example.begin(), per_example.begin() + most_here, std::int64_t{0});
  }
  nonzeros_.ptr.reserve(static_cast<std::size_t>(most_here + 1));
  nonzeros_.dtype = o.dtype;
  nonzeros_.index.resize(static_cast<std::size_t>(most));
  if (o.dtype == DType::f32)
    nonzeros_.values_f32.resize(static_cast<std::size_t>(most));
  else
    nonzeros_.values_f64.resize(static_cast<std::size_t>(most));
}

void Batches::start_epoch() {
  rng_at_epoch_start_ = rng_;
  std::iota(order_.begin(), order_.end(), std::int64_t{0});  // each epoch's order depends on its rng state only
  if (opts_.shuffle && batch_ < data_->count) rng_.shuffle(order_);
}

void Batches::gather(std::int64_t first, std::int64_t count) {
  const int threads = std::max(1, opts_.threads);
  const std::int64_t* order = order_.data() + first;
  if (sparse_) {
    if (nonzeros_.cross.blocks != 0) nonzeros_.cross = {};  // they would no longer match
    // Where each example's nonzeros go: counted from the bytes (once, at construction, when the
    // images are not moved), so the gather writes them in parallel while each row is in cache.
    nonzeros_.ptr.resize(static_cast<std::size_t>(count + 1));
    std::int64_t* ptr = nonzeros_.ptr.data();
    ptr[0] = 0;
    for (std::int64_t j = 0; j < count; ++j)
      ptr[j + 1] = ptr[j] + (opts_.shift == 0 ? nonzeros_of_[static_cast<std::size_t>(order[j])] : shifted_nonzeros(order[j]));
  }
  if (opts_.dtype == DType::f32) {
    NonzeroOut<float> nz;
    if (sparse_) nz = {nonzeros_.ptr.data(), nonzeros_.index.data(), nonzeros_.values_f32.data()};
    normalise_rows<float>(*data_, order, count, xbuf_.ptr<float>(), lbuf_.ptr<std::int64_t>(), opts_.normalization, threads,
                          opts_, epoch_, nz);
  } else {
    NonzeroOut<double> nz;
    if (sparse_) nz = {nonzeros_.ptr.data(), nonzeros_.index.data(), nonzeros_.values_f64.data()};
    normalise_rows<double>(*data_, order, count, xbuf_.ptr<double>(), lbuf_.ptr<std::int64_t>(), opts_.normalization, threads,
                           opts_, epoch_, nz);
  }
}

std::int64_t Batches::shifted_nonzeros(std::int64_t src) const {
  const Dataset& d = *data_;
  const std::int64_t f = d.features();
  const Shape& e = d.example;
  const std::int64_t h = e[e.rank - 2], w = e[e.rank - 1], planes = f / (h * w);
  const Shift s = draw_shift(opts_.seed, epoch_, src, opts_.shift);
  const std::uint8_t* p = d.pixels.data() + src * f;
  std::int64_t c = 0;
  for (std::int64_t pl = 0; pl < planes; ++pl)
    for (std::int64_t y = std::max<std::int64_t>(0, s.dy); y < std::min(h, h + s.dy); ++y)
      for (std::int64_t xx = std::max<std::int64_t>(0, s.dx); xx < std::min(w, w + s.dx); ++xx)
        c += zero_byte_[p[(pl * h + y - s.dy) * w + xx - s.dx]] ? 0 : 1;
  // The vacated pixels are byte 0: nonzero only if the normalisation maps 0 elsewhere (then the
  // data are too dense for nonzeros to be kept at all).
  return c;
}

const Batch& Batches::next() {
  if (!started_ || index_ + 1 >= steps_per_epoch_) {
    if (started_) ++epoch_;
    start_epoch();
    index_ = 0;
    started_ = true;
  } else {
    ++index_;
  }
  const std::int64_t batch_first = index_ * batch_, global = std::min(batch_, data_->count - batch_first);
  // This process's shard of the batch: the same split of the same permutation on every rank.
  const std::int64_t shard_first = global * opts_.shard / opts_.shards;
  const std::int64_t first = batch_first + shard_first, count = global * (opts_.shard + 1) / opts_.shards - shard_first;
  const bool full = batch_ == data_->count && opts_.shift == 0;  // shifted images change every epoch
  const bool fresh = !(full && filled_once_);
  if (fresh) gather(first, count);  // the full batch is in file order: normalise it once (and its nonzeros)
  const std::int64_t f = data_->features();
  Batch& b = batch_view_;
  if (opts_.layout == nn::Layout::columns) {
    // {features, count} over example-major rows: strides (1, features); GEMMs read it as it is.
    Strides st;
    st[0] = 1;
    st[1] = f;
    b.x = TensorView(xbuf_.data(), opts_.dtype, Shape{f, count}, st);
  } else if (opts_.layout == nn::Layout::rows) {
    b.x = TensorView(xbuf_.data(), opts_.dtype, Shape{count, f});
  } else {
    b.x = TensorView(xbuf_.data(), opts_.dtype, image_shape(data_->example, count));
  }
  if (sparse_) {
    nonzeros_.shape = b.x.shape;
    nonzeros_.major = opts_.layout == nn::Layout::columns ? 1 : 0;
    // A full data set that stays as it is also gets its nonzeros grouped by feature, block by
    // block (the weight gradient's product gathers from them); built once, here.
    if (fresh && full && count >= kCrossGroups) add_cross_blocks(nonzeros_, std::max(1, opts_.threads));
  }
  filled_once_ = full;
  b.sparse = sparse_ ? &nonzeros_ : nullptr;
  b.labels = TensorView(lbuf_.data(), DType::i64, Shape{count});
  b.size = count;
  b.global_size = global;
  b.offset = shard_first;
  b.epoch = epoch_;
  b.index = index_;
  b.last = index_ + 1 == steps_per_epoch_;
  return b;
}

Batches::Position Batches::position() const {
  if (!started_) return {0, 0, rng_.state()};
  if (index_ + 1 >= steps_per_epoch_) return {epoch_ + 1, 0, rng_.state()};
  return {epoch_, index_ + 1, rng_at_epoch_start_.state()};
}

void Batches::seek(const Position& p) {
  if (p.epoch < 0 || p.index < 0 || p.index >= steps_per_epoch_)
    throw std::invalid_argument("Batches::seek: batch " + std::to_string(p.index) + " of an epoch of " +
                                std::to_string(steps_per_epoch_));
  rng_.set_state(p.rng);
  epoch_ = p.epoch;
  start_epoch();
  index_ = p.index - 1;
  started_ = true;
  filled_once_ = false;
}

}  // namespace gg::train
