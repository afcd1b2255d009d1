// Exported models run by another runtime: OpenCV's DNN module (Debian's 4.6) reads each model
// gg::onnx::to_bytes writes and computes the same outputs as gradgraph on the same images.
//
// Each network is trained for a few steps on synthetic images (so that weights, biases and
// batch-norm statistics are not their initial values), then evaluated by gradgraph (an
// evaluation program) and by OpenCV. Agreement: every output element within
// 1e-5 * max(1, |gradgraph's|) (absolute below 1, relative above), the same predicted class for
// every image, hence the same accuracy. A model OpenCV cannot load fails the test. Each case
// prints its largest differences (docs/interop.md quotes them).
#include "support.hpp"

#include <gradgraph/onnx.hpp>

#include <opencv2/core.hpp>
#include <opencv2/dnn.hpp>

#include <catch2/catch.hpp>

#include <cstdio>
#include <string>
#include <vector>

namespace {

constexpr double kTolerance = 1e-5;

// Images with a bright bar whose place and direction tell the class, on sparse noise: enough
// structure for a few training steps to move every weight.
gg::train::Dataset synthetic(std::int64_t count, std::uint64_t seed) {
  gg::Generator rng(gg::RngKind::standard, seed);
  gg::train::Dataset d;
  d.name = "synthetic";
  d.count = count;
  d.example = gg::Shape{28, 28};
  d.pixels.assign(static_cast<std::size_t>(count * 784), 0);
  for (std::int64_t i = 0; i < count; ++i) {
    const auto label = static_cast<std::int64_t>(rng.below(10));
    d.labels.push_back(label);
    std::uint8_t* img = d.pixels.data() + i * 784;
    for (int p = 0; p < 784; ++p)
      if (rng.uniform() < 0.1) img[p] = static_cast<std::uint8_t>(rng.below(256));
    const int at = 3 + static_cast<int>(label % 5) * 5;
    for (int k = 4; k < 24; ++k) {
      const int r = label < 5 ? at : k, c = label < 5 ? k : at;
      img[r * 28 + c] = 255;
    }
  }
  return d;
}

// The images of d normalised as the batches do (x / 255), in a layout's shape.
gg::Tensor images(const gg::train::Dataset& d, gg::nn::Layout layout) {
  const std::int64_t n = d.count, f = 784;
  const gg::Shape shape = layout == gg::nn::Layout::columns ? gg::Shape{f, n}
                          : layout == gg::nn::Layout::rows  ? gg::Shape{n, f}
                                                            : gg::Shape{n, 1, 28, 28};
  gg::Tensor x(gg::f32, shape);
  float* p = x.ptr<float>();
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t k = 0; k < f; ++k) {
      const float v = static_cast<float>(d.pixels[static_cast<std::size_t>(i * f + k)]) / 255.0f;
      p[layout == gg::nn::Layout::columns ? k * n + i : i * f + k] = v;
    }
  return x;
}

struct Difference {
  double max_abs = 0, max_mixed = 0;  // max |a - b|, max |a - b| / max(1, |b|)
};

Difference difference(const cv::Mat& cv_out, const gg::TensorView& gg_out) {
  const std::vector<double> want = gg::test::values(gg_out);
  REQUIRE(cv_out.type() == CV_32F);
  REQUIRE(cv_out.isContinuous());
  REQUIRE(static_cast<std::size_t>(cv_out.total()) == want.size());
  const float* got = cv_out.ptr<float>();
  Difference d;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    d.max_abs = std::max(d.max_abs, e);
    d.max_mixed = std::max(d.max_mixed, e / std::max(1.0, std::fabs(want[i])));
  }
  return d;
}

// The predicted class of each example from {classes, n} (axis 0) or {n, classes} (axis 1) scores.
std::vector<std::int64_t> predictions(const float* s, std::int64_t n, std::int64_t classes, int class_axis) {
  std::vector<std::int64_t> out;
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t best = 0;
    for (std::int64_t c = 1; c < classes; ++c) {
      const float v = class_axis == 0 ? s[c * n + i] : s[i * classes + c];
      const float b = class_axis == 0 ? s[best * n + i] : s[i * classes + best];
      if (v > b) best = c;
    }
    out.push_back(best);
  }
  return out;
}

double accuracy(const std::vector<std::int64_t>& predicted, const std::vector<std::int64_t>& labels) {
  std::int64_t right = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) right += predicted[i] == labels[i];
  return static_cast<double>(right) / static_cast<double>(labels.size());
}

// Runs the exported outputs through OpenCV and compares them with the program's on the same
// input `x` (fed to the graph's input "X"); `scores` (an index into outputs) gives each example's
// predicted class along `class_axis`, compared with `labels`.
void agree_on(const std::string& what, gg::Program& p, gg::Value x_in, const gg::Tensor& x, const std::vector<gg::Value>& outputs,
              const std::vector<std::string>& names, std::size_t scores, int class_axis, const std::vector<std::int64_t>& labels) {
  const std::string model = gg::onnx::to_bytes(p, outputs, {.output_names = names});
  p.run({{x_in, x}});

  cv::dnn::Net net = cv::dnn::readNetFromONNX(model.data(), model.size());  // throws: the test fails
  REQUIRE_FALSE(net.empty());
  std::vector<int> sizes;
  for (int d = 0; d < x.shape().rank; ++d) sizes.push_back(static_cast<int>(x.shape()[d]));
  net.setInput(cv::Mat(static_cast<int>(sizes.size()), sizes.data(), CV_32F, x.data()), "X");
  std::vector<cv::Mat> outs;
  net.forward(outs, std::vector<cv::String>(names.begin(), names.end()));
  REQUIRE(outs.size() == outputs.size());

  std::string line = "onnx-opencv " + what + ":";
  char buf[160];
  for (std::size_t k = 0; k < outputs.size(); ++k) {
    const Difference d = difference(outs[k], p.get(outputs[k]));
    std::snprintf(buf, sizeof buf, " %s max abs %.2e, max rel %.2e;", names[k].c_str(), d.max_abs, d.max_mixed);
    line += buf;
    INFO(what << ": " << names[k]);
    CHECK(d.max_mixed <= kTolerance);
  }
  const gg::Tensor ours_scores = gg::Tensor::copy_of(p.get(outputs[scores]));
  const gg::Shape s = ours_scores.shape();
  const std::int64_t n = s[1 - class_axis], classes = s[class_axis];
  const std::vector<std::int64_t> ours = predictions(ours_scores.ptr<float>(), n, classes, class_axis);
  const std::vector<std::int64_t> theirs = predictions(outs[scores].ptr<float>(), n, classes, class_axis);
  std::int64_t same = 0;
  for (std::size_t i = 0; i < ours.size(); ++i) same += ours[i] == theirs[i];
  std::snprintf(buf, sizeof buf, " same class %lld/%lld, accuracy %.2f%% / %.2f%%", static_cast<long long>(same),
                static_cast<long long>(n), 100 * accuracy(ours, labels), 100 * accuracy(theirs, labels));
  std::printf("%s%s\n", line.c_str(), buf);
  std::fflush(stdout);
  INFO(what);
  CHECK(same == n);
  CHECK(accuracy(ours, labels) == accuracy(theirs, labels));
}

// Trains `spec` for `steps` steps, exports its logits and probabilities, and compares gradgraph's
// and OpenCV's outputs on 256 test images.
void agree(const std::string& what, const gg::nn::Spec& spec, gg::nn::Layout layout, std::int64_t steps) {
  const gg::train::Dataset train = synthetic(512, 1), test = synthetic(256, 2);
  gg::Graph g(gg::f32);
  const gg::train::Model m = gg::train::classifier(g, spec, train.example, train.classes, layout);
  gg::train::TrainOptions o;
  o.optimizer.kind = gg::train::Optimizer::Kind::adam;
  o.optimizer.lr = 3e-3;
  o.compile.seed = 5;
  gg::train::Trainer trainer(g, m, o);
  gg::train::Batches batches(train, {.batch_size = 64, .seed = 3, .layout = layout});
  trainer.fit(batches, {.steps = steps});

  const gg::Value probabilities = gg::softmax(m.logits, m.class_axis);
  gg::Program eval(g, {m.logits, probabilities}, {.share_params_with = &trainer.train_program(), .training = false});
  agree_on(what, eval, m.x, images(test, layout), {m.logits, probabilities}, {"logits", "probabilities"}, 1, m.class_axis,
           test.labels);
}

}  // namespace

TEST_CASE("OpenCV runs the notebook's MLP (features x examples) as gradgraph does", "[onnx][opencv]") {
  agree("notebook MLP, columns", gg::nn::parse("dense64,relu,dense10"), gg::nn::Layout::columns, 10);
}

TEST_CASE("OpenCV runs a batch-first MLP with sigmoid and tanh as gradgraph does", "[onnx][opencv]") {
  agree("sigmoid/tanh MLP, rows", gg::nn::parse("dense32,sigmoid,dense32,tanh,dense10"), gg::nn::Layout::rows, 10);
}

TEST_CASE("OpenCV runs a features x examples MLP with batch norm as gradgraph does", "[onnx][opencv]") {
  agree("batch-norm MLP, columns", gg::nn::parse("dense32,bn,tanh,dropout0.2,dense10"), gg::nn::Layout::columns, 10);
}

TEST_CASE("OpenCV runs the reference CNN as gradgraph does", "[onnx][opencv]") {
  agree("reference CNN, nchw", gg::nn::reference_cnn(10), gg::nn::Layout::nchw, 4);
}

TEST_CASE("OpenCV runs a CNN with batch norm as gradgraph does", "[onnx][opencv]") {
  agree("batch-norm CNN, nchw",
        gg::nn::parse("conv8k3p1,bn,relu,pool2,conv16k3p1,bn,relu,pool2,flatten,dense32,bn,relu,dropout0.25,dense10"),
        gg::nn::Layout::nchw, 4);
}

TEST_CASE("OpenCV runs a CNN with strides, average and global pooling as gradgraph does", "[onnx][opencv]") {
  agree("strided/avg/gap CNN, nchw", gg::nn::parse("conv8k5p2s2,relu,avgpool2,conv16k3,relu,gap,dense10"),
        gg::nn::Layout::nchw, 30);
}

TEST_CASE("OpenCV runs the other elementwise ops, scalars and log_softmax as gradgraph does", "[onnx][opencv]") {
  // Random weights, no training: every op of the table that the networks above do not use.
  const gg::train::Dataset test = synthetic(256, 2);
  gg::Graph g(gg::f32);
  gg::Value x = g.input("X", {gg::dyn, 784});
  gg::Value w1 = g.param("W1", {784, 16}, gg::he_normal(784)), b1 = g.param("b1", {16}, gg::uniform(-1, 1));
  gg::Value w2 = g.param("W2", {10, 16}, gg::he_normal(16)), b2 = g.param("b2", {1, 10}, gg::uniform(-1, 1));
  gg::Value c = g.param("c", {16}, gg::uniform(1, 2));
  gg::Value h = gg::tanh(gg::matmul(x, w1) + b1);
  // (OpenCV 4.6 miscomputes a Pow other than 2 followed by an Add of a scalar: it fuses the two
  // into one layer that adds first. Our x^2 is exported as x * x; x^3 here is followed by a Mul.)
  gg::Value u = gg::exp(-h) * 0.5 + gg::sqrt(gg::pow(h, 2.0) + 1.0) - gg::log(h + 2.0) / c + gg::pow(h, 3.0) * c;
  gg::Value z = gg::matmul(u, w2, false, true) + b2;
  gg::Value scores = gg::log_softmax(z, 1);
  gg::Program p(g, {z, scores}, {.seed = 9, .training = false});
  agree_on("elementwise, scalars, log_softmax", p, x, images(test, gg::nn::Layout::rows), {z, scores}, {"z", "log_probabilities"},
           1, 1, test.labels);
}
