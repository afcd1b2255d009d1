// onnx-opencv-mnist MODEL LAYOUT DIR: runs a model exported by mnist-train or mnist-eval
// (--export-onnx) in OpenCV's DNN module on the 10,000 MNIST test images of DIR (raw IDX) and
// prints its accuracy, to compare with mnist-eval's on the same checkpoint. LAYOUT is the
// checkpoint's: columns (X {784, N}, logits {10, N}: the notebook's MLP), rows (X {N, 784}) or
// nchw (X {N, 1, 28, 28}). Pixels are divided by 255, as the models' metadata say. Not a test of
// the suite (it needs the real data): docs/interop.md records what it printed.
#include <opencv2/dnn.hpp>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {
std::vector<unsigned char> read(const std::string& path, std::size_t want) {
  std::ifstream f(path, std::ios::binary);
  std::vector<unsigned char> b((std::istreambuf_iterator<char>(f)), {});
  if (!f.good() && !f.eof()) b.clear();
  if (b.size() != want) {
    std::fprintf(stderr, "onnx-opencv-mnist: %s: expected %zu bytes (raw MNIST test IDX), got %zu\n", path.c_str(), want,
                 b.size());
    std::exit(1);
  }
  return b;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: onnx-opencv-mnist MODEL columns|rows|nchw MNIST_DIR\n");
    return 2;
  }
  const std::string model = argv[1], layout = argv[2], dir = argv[3];
  if (layout != "columns" && layout != "rows" && layout != "nchw") {
    std::fprintf(stderr, "onnx-opencv-mnist: layout must be columns, rows or nchw, not '%s'\n", layout.c_str());
    return 2;
  }
  constexpr int n = 10000, batch = 500;
  const auto img = read(dir + "/t10k-images-idx3-ubyte", 16 + std::size_t{n} * 784);
  const auto lab = read(dir + "/t10k-labels-idx1-ubyte", 8 + std::size_t{n});
  cv::dnn::Net net;
  try {
    net = cv::dnn::readNetFromONNX(model);
  } catch (const cv::Exception& e) {
    std::fprintf(stderr, "onnx-opencv-mnist: OpenCV cannot load %s: %s\n", model.c_str(), e.what());
    return 1;
  }
  int correct = 0;
  for (int b0 = 0; b0 < n; b0 += batch) {
    cv::Mat x;
    if (layout == "columns") {
      const int size[2] = {784, batch};
      x = cv::Mat(2, size, CV_32F);
      for (int j = 0; j < batch; ++j)
        for (int i = 0; i < 784; ++i) x.at<float>(i, j) = static_cast<float>(img[16 + (b0 + j) * 784 + i]) / 255.0f;
    } else {
      const int rows[2] = {batch, 784}, images[4] = {batch, 1, 28, 28};
      x = layout == "rows" ? cv::Mat(2, rows, CV_32F) : cv::Mat(4, images, CV_32F);
      float* p = x.ptr<float>();
      for (int j = 0; j < batch * 784; ++j) p[j] = static_cast<float>(img[16 + b0 * 784 + j]) / 255.0f;
    }
    net.setInput(x, "X");
    const cv::Mat y = net.forward("logits");
    for (int j = 0; j < batch; ++j) {
      int best = 0;
      for (int c = 1; c < 10; ++c) {
        const float* v = y.ptr<float>();
        const auto at = [&](int k) { return layout == "columns" ? v[k * batch + j] : v[j * 10 + k]; };
        if (at(c) > at(best)) best = c;
      }
      correct += best == lab[8 + b0 + j];
    }
  }
  std::printf("OpenCV %s, %s: accuracy %.2f %% (%d of %d test images)\n", CV_VERSION, model.c_str(), 100.0 * correct / n,
              correct, n);
  return 0;
}
