// mnist-train end to end on a tiny synthetic MNIST written by the test (the suite never needs
// the real data): exit codes, the notebook's output format, the CSV, the PNG, checkpoints,
// and one clear line for each kind of bad input.
#include "support.hpp"

#include <gradgraph/safetensors.hpp>

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <sys/wait.h>
#include <zlib.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#if !defined(MNIST_TRAIN_PATH) || !defined(MNIST_EVAL_PATH) || !defined(MNIST_PREDICT_PATH)
#error "MNIST_TRAIN_PATH, MNIST_EVAL_PATH and MNIST_PREDICT_PATH must name the built tools"
#endif

using Catch::Matchers::Contains;

namespace {

namespace fs = std::filesystem;
using gg::test::Bytes;
using gg::test::idx;
using gg::test::put_be32;

using gg::test::TempDir;


void write_file(const std::string& path, const Bytes& b, bool gz = false) {
  if (gz) {
    gzFile f = gzopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    REQUIRE(gzwrite(f, b.data(), static_cast<unsigned>(b.size())) == static_cast<int>(b.size()));
    REQUIRE(gzclose(f) == Z_OK);
    return;
  }
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  REQUIRE(f.good());
}

// Learnable fake digits: class c brightens rows [2c + 4, 2c + 6) of a noisy 28x28 image.
void write_split(const TempDir& dir, const std::string& prefix, std::uint32_t n, bool gz = false) {
  Bytes images, labels;
  std::uint32_t state = 12345u + n;
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint32_t c = (i * 7u + 3u) % 10u;
    labels.push_back(static_cast<std::uint8_t>(c));
    for (int p = 0; p < 784; ++p) {
      state = state * 1664525u + 1013904223u;
      const int row = p / 28;
      const bool lit = row >= static_cast<int>(2 * c + 4) && row < static_cast<int>(2 * c + 6);
      images.push_back(static_cast<std::uint8_t>((state >> 26) + (lit ? 200 : 0)));
    }
  }
  const std::string ext = gz ? ".gz" : "";
  write_file(dir / (prefix + "-images-idx3-ubyte" + ext), idx({n, 28, 28}, images), gz);
  write_file(dir / (prefix + "-labels-idx1-ubyte" + ext), idx({n}, labels), gz);
}

void write_dataset(const TempDir& dir, bool gz = false) {
  write_split(dir, "train", 300, gz);
  write_split(dir, "t10k", 100, gz);
}

struct Result {
  int code = -1;
  std::string out;  // stdout and stderr
};

// Runs a tool (mnist-train unless named) with stdout and stderr together.
Result run_tool(const std::string& args, const char* tool = MNIST_TRAIN_PATH, bool one_thread = true) {
  const std::string cmd = std::string(tool) + " " + args + (one_thread ? " --threads 1" : "") + " 2>&1";
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::array<char, 4096> buf{};
  std::size_t got = 0;
  while ((got = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), got);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

// An error is one line, the last one printed; `alone`: nothing was printed before it.
void check_one_error_line(const Result& r, int code, const std::string& needle, bool alone = true,
                          const std::string& tool = "mnist-train") {
  INFO(r.out);
  CHECK(r.code == code);
  const std::size_t start = r.out.rfind('\n', r.out.size() - 2);
  const std::string last = r.out.substr(start == std::string::npos ? 0 : start + 1);
  CHECK(last.rfind(tool + ": ", 0) == 0);
  CHECK_THAT(last, Contains(needle));
  if (alone) CHECK(count_lines(r.out) == 1);
}

}  // namespace

TEST_CASE("mnist-train trains on a small data set and prints the notebook's lines") {
  TempDir dir;
  write_dataset(dir);
  Result r = run_tool("--data " + dir.path.string() + " --iterations 60 --print-every 20 --lr 0.5 --hidden 16");
  INFO(r.out);
  REQUIRE(r.code == 0);
  const std::regex line(R"(Iteration: (0|20|40) \| Accuracy: \d+\.\d{3}% \| Loss:\d+\.\d{3})");
  std::istringstream in(r.out);
  std::string l;
  int iteration_lines = 0;
  double last_acc = -1;
  while (std::getline(in, l)) {
    if (std::regex_match(l, line)) ++iteration_lines;
    if (l.rfind("Accuracy: ", 0) == 0) last_acc = std::stod(l.substr(10));
  }
  CHECK(iteration_lines == 3);
  CHECK(last_acc >= 90.0);  // the fake digits are easy
}

TEST_CASE("mnist-train writes a metrics CSV and a PNG plot") {
  TempDir dir;
  write_dataset(dir, true);  // gzipped, like Debian's Fashion-MNIST
  Result r = run_tool("--data " + dir.path.string() + " --iterations 12 --eval-every 5 --metrics " + (dir / "m.csv") +
                      " --plot " + (dir / "p.png") + " --hidden 8");
  INFO(r.out);
  REQUIRE(r.code == 0);
  std::ifstream csv(dir / "m.csv");
  std::string header, row;
  std::getline(csv, header);
  CHECK(header == "iteration,loss,train_accuracy,test_accuracy");
  int rows = 0, with_test = 0;
  while (std::getline(csv, row)) {
    ++rows;
    std::vector<std::string> cells;
    std::stringstream ss(row);
    std::string cell;
    while (std::getline(ss, cell, ',')) cells.push_back(cell);
    REQUIRE(cells.size() >= 3);
    CHECK(std::stoi(cells[0]) == rows - 1);
    CHECK(std::stod(cells[1]) > 0);
    if (cells.size() == 4 && !cells[3].empty()) ++with_test;
  }
  CHECK(rows == 12);
  CHECK(with_test == 4);  // iterations 0, 5, 10 and the last
  std::ifstream png(dir / "p.png", std::ios::binary);
  std::array<unsigned char, 8> sig{};
  png.read(reinterpret_cast<char*>(sig.data()), 8);
  CHECK(sig == std::array<unsigned char, 8>{0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a});
}

namespace {

// The (accuracy, loss) text of the "Iteration: N | ..." line, or "" when there is none.
std::string iteration_line(const std::string& out, int n) {
  const std::regex line("Iteration: " + std::to_string(n) + R"( \| (Accuracy: \S+ \| Loss:\S+))");
  std::smatch m;
  return std::regex_search(out, m, line) ? m[1].str() : std::string();
}

// Every "Loss:x" printed, in order, and the final test accuracy.
struct Curve {
  std::vector<double> losses;
  double test_accuracy = -1;
};
Curve curve_of(const std::string& out) {
  Curve c;
  std::istringstream in(out);
  for (std::string l; std::getline(in, l);) {
    const std::size_t at = l.find("Loss:");
    if (l.rfind("Iteration: ", 0) == 0 && at != std::string::npos) c.losses.push_back(std::stod(l.substr(at + 5)));
    if (l.rfind("Accuracy: ", 0) == 0) c.test_accuracy = std::stod(l.substr(10));
  }
  return c;
}

}  // namespace

TEST_CASE("mnist-train --load starts from the saved parameters, not from the initialisers") {
  TempDir dir;
  write_dataset(dir);
  const std::string common = "--data " + dir.path.string() + " --lr 0.5 --hidden 8 ";
  Result saved = run_tool(common + "--iterations 30 --save " + (dir / "w.st"));
  INFO(saved.out);
  REQUIRE(saved.code == 0);
  gg::io::SafetensorsFile f = gg::io::load_safetensors(dir / "w.st");
  CHECK(f.at("W1").shape() == gg::Shape{8, 784});
  CHECK(f.at("b2").shape() == gg::Shape{10, 1});
  // The network's description, attributes included, travels with the weights.
  CHECK_THAT(f.metadata.at("graph"), Contains("= matmul(W1, X) [trans_a=false, trans_b=false") && Contains("-> float32 {8, dyn}"));
  // The 31st forward pass of an uninterrupted run sees the parameters after 30 updates: exactly
  // what the saved file holds, so a run that loads it prints the same first line.
  Result longer = run_tool(common + "--iterations 31 --print-every 30");
  Result loaded = run_tool(common + "--iterations 1 --load " + (dir / "w.st"));
  Result fresh = run_tool(common + "--iterations 1");
  INFO(longer.out << loaded.out);
  REQUIRE(longer.code == 0);
  REQUIRE(loaded.code == 0);
  const std::string after30 = iteration_line(longer.out, 30);
  REQUIRE_FALSE(after30.empty());
  CHECK(iteration_line(loaded.out, 0) == after30);
  CHECK(iteration_line(fresh.out, 0) != after30);
}

TEST_CASE("mnist-train --load refuses a checkpoint of another network or with a tensor missing") {
  TempDir dir;
  write_dataset(dir);
  const std::string common = "--data " + dir.path.string() + " --iterations 1 ";
  Result saved = run_tool(common + "--hidden 8 --save " + (dir / "w.st"));
  REQUIRE(saved.code == 0);
  check_one_error_line(run_tool(common + "--hidden 9 --load " + (dir / "w.st")), 1, "w.st");
  // A file holding only the first layer.
  gg::io::SafetensorsFile f = gg::io::load_safetensors(dir / "w.st");
  gg::io::save_safetensors(dir / "half.st", {{"W1", f.at("W1").view()}, {"b1", f.at("b1").view()}});
  const Result half = run_tool(common + "--hidden 8 --load " + (dir / "half.st"));
  check_one_error_line(half, 1, "half.st");
  CHECK_THAT(half.out, Contains("'W2'"));
  // A float64 checkpoint for a float32 network.
  Result f64 = run_tool(common + "--hidden 8 --dtype float64 --save " + (dir / "w64.st"));
  REQUIRE(f64.code == 0);
  const Result mixed = run_tool(common + "--hidden 8 --load " + (dir / "w64.st"));
  check_one_error_line(mixed, 1, "w64.st");
  CHECK_THAT(mixed.out, Contains("float64"));
}

TEST_CASE("mnist-train learns in mini-batches with each optimizer") {
  TempDir dir;
  write_dataset(dir);
  for (const char* opt : {"sgd", "momentum", "adam"}) {
    const std::string lr = std::string(opt) == "adam" ? "0.01" : "0.1";
    Result r = run_tool("--data " + dir.path.string() + " --batch-size 32 --epochs 3 --optimizer " + opt + " --lr " + lr +
                        " --hidden 16 --print-every 10");
    INFO(opt << "\n" << r.out);
    REQUIRE(r.code == 0);
    // 300 examples in batches of 32: 10 steps per epoch, 30 in all, a line every 10.
    const Curve c = curve_of(r.out);
    REQUIRE(c.losses.size() == 3);
    CHECK(c.losses[0] > 2.0);                  // ten classes at random: about ln 10
    CHECK(c.losses[2] < 0.5 * c.losses[0]);    // and it learns
    CHECK(c.test_accuracy >= 90.0);            // the fake digits are easy
  }
}

TEST_CASE("mnist-train says how to fetch the data when the directory is missing") {
  check_one_error_line(run_tool("--data /nonexistent/gg-mnist --iterations 1"), 1, "fetch-mnist");
}

TEST_CASE("mnist-train names the file when an IDX file is truncated, corrupted or inconsistent") {
  TempDir dir;
  write_dataset(dir);
  const std::string images = dir / "train-images-idx3-ubyte";
  fs::resize_file(images, fs::file_size(images) - 100);
  check_one_error_line(run_tool("--data " + dir.path.string() + " --iterations 1"), 1, "train-images-idx3-ubyte");

  write_split(dir, "train", 300);
  Bytes labels = idx({299}, Bytes(299, 1));  // one label short
  write_file(dir / "train-labels-idx1-ubyte", labels);
  check_one_error_line(run_tool("--data " + dir.path.string() + " --iterations 1"), 1, "train-labels-idx1-ubyte");

  write_file(dir / "train-labels-idx1-ubyte", idx({300}, Bytes(300, 12)));  // label 12
  check_one_error_line(run_tool("--data " + dir.path.string() + " --iterations 1"), 1, "12");

  Bytes bad_magic = idx({300, 28, 28}, Bytes(300 * 784, 0));
  bad_magic[2] = 0x09;
  write_file(dir / "train-images-idx3-ubyte", bad_magic);
  check_one_error_line(run_tool("--data " + dir.path.string() + " --iterations 1"), 1, "train-images-idx3-ubyte");
}

TEST_CASE("mnist-train rejects bad flag values with one line naming the flag") {
  TempDir dir;
  write_dataset(dir);
  const std::string d = "--data " + dir.path.string() + " ";
  check_one_error_line(run_tool(d + "--lr -1"), 2, "--lr");
  check_one_error_line(run_tool(d + "--hidden 0"), 2, "--hidden");
  check_one_error_line(run_tool(d + "--iterations 0"), 2, "--iterations");
  check_one_error_line(run_tool(d + "--dtype float16"), 2, "--dtype");
  check_one_error_line(run_tool(d + "--init xavier"), 2, "--init");
  check_one_error_line(run_tool(d + "--lr abc"), 2, "lr");
  check_one_error_line(run_tool(d + "--no-such-flag"), 2, "no-such-flag");
}

TEST_CASE("mnist-train stops with the iteration number when the loss becomes NaN or infinite") {
  TempDir dir;
  write_dataset(dir);
  Result r = run_tool("--data " + dir.path.string() + " --iterations 50 --lr 1e30 --hidden 8 --save " + (dir / "w.st"));
  check_one_error_line(r, 1, "at iteration", false);
  CHECK(!fs::exists(dir / "w.st"));
}

// ---- resume, mnist-eval, mnist-predict -------------------------------------------------------------

namespace {

// The CSV's data rows (no header).
std::vector<std::string> csv_rows(const std::string& path) {
  std::vector<std::string> rows;
  std::istringstream in(gg::test::slurp(path));
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) rows.push_back(line);
  return rows;
}

}  // namespace

TEST_CASE("mnist-train --resume continues a run exactly: the metrics equal the uninterrupted run's") {
  TempDir dir;
  write_dataset(dir);
  const std::string common = "--data " + dir.path.string() +
                             " --batch-size 32 --epochs 4 --optimizer adam --lr 0.01 --schedule cosine --warmup 5 --hidden 16 ";
  Result whole = run_tool(common + "--metrics " + (dir / "whole.csv"));
  Result first = run_tool(common + "--stop-after-epochs 2 --save " + (dir / "ck.st") + " --metrics " + (dir / "a.csv"));
  Result rest = run_tool(common + "--resume " + (dir / "ck.st") + " --metrics " + (dir / "b.csv"));
  INFO(whole.out << first.out << rest.out);
  REQUIRE(whole.code == 0);
  REQUIRE(first.code == 0);
  REQUIRE(rest.code == 0);
  std::vector<std::string> joined = csv_rows(dir / "a.csv");
  const std::vector<std::string> tail = csv_rows(dir / "b.csv");
  CHECK(joined.size() == 20);  // 2 of 4 epochs of 10 steps
  joined.insert(joined.end(), tail.begin(), tail.end());
  CHECK(joined == csv_rows(dir / "whole.csv"));
  // The epoch lines of the resumed part are the uninterrupted run's (but for their timings).
  const std::regex epoch(R"(Epoch \d+/4 \| loss \S+ \| train \S+)");
  auto epochs = [&](const std::string& out) {
    std::vector<std::string> lines;
    for (std::sregex_iterator it(out.begin(), out.end(), epoch), end; it != end; ++it) lines.push_back(it->str());
    return lines;
  };
  std::vector<std::string> parts = epochs(first.out);
  const std::vector<std::string> resumed = epochs(rest.out);
  parts.insert(parts.end(), resumed.begin(), resumed.end());
  CHECK(parts.size() == 4);
  CHECK(parts == epochs(whole.out));
}

TEST_CASE("mnist-eval reports the test accuracy mnist-train printed, per class and as a confusion matrix, and plots them") {
  TempDir dir;
  write_dataset(dir);
  Result trained = run_tool("--data " + dir.path.string() + " --iterations 40 --lr 0.5 --hidden 16 --save " + (dir / "w.st"));
  REQUIRE(trained.code == 0);
  const std::size_t at = trained.out.rfind("Accuracy: ");
  const std::string acc = trained.out.substr(at, trained.out.find('\n', at) - at);  // "Accuracy: 100.00 %"
  Result e = run_tool((dir / "w.st") + " --plot " + (dir / "ev"), MNIST_EVAL_PATH);
  INFO(e.out);
  REQUIRE(e.code == 0);
  CHECK_THAT(e.out, Contains(acc));
  CHECK_THAT(e.out, Contains("confusion matrix"));
  CHECK_THAT(e.out, Contains("class  accuracy  images"));
  for (const char* png : {"ev-confusion.png", "ev-wrong.png"}) {
    std::ifstream f(dir / png, std::ios::binary);
    std::array<unsigned char, 8> sig{};
    f.read(reinterpret_cast<char*>(sig.data()), 8);
    CHECK(sig == std::array<unsigned char, 8>{0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a});
  }
}

TEST_CASE("mnist-train --export-onnx writes the trained MLP, and mnist-eval --export-onnx its checkpoint, as the same model") {
  TempDir dir;
  write_dataset(dir);
  Result trained = run_tool("--data " + dir.path.string() + " --iterations 5 --hidden 8 --save " + (dir / "w.st") +
                            " --export-onnx " + (dir / "train.onnx"));
  INFO(trained.out);
  REQUIRE(trained.code == 0);
  const std::string model = gg::test::slurp(dir / "train.onnx");
  CHECK(model.substr(0, 2) == std::string("\x08\x06", 2));  // ir_version 6
  for (const char* s : {"logits", "probabilities", "MatMul", "Softmax", "dense8,relu,dense10", "divisor=255"})
    CHECK_THAT(model, Contains(s));
  Result e = run_tool((dir / "w.st") + " --export-onnx " + (dir / "eval.onnx"), MNIST_EVAL_PATH);
  INFO(e.out);
  REQUIRE(e.code == 0);
  CHECK(gg::test::slurp(dir / "eval.onnx") == model);
}

TEST_CASE("mnist-train --export-onnx writes a convolutional network") {
  TempDir dir;
  write_dataset(dir);
  Result trained = run_tool("--data " + dir.path.string() + " --model conv4k3p1,relu,pool2,flatten,dense10 --batch-size 50 " +
                            "--epochs 1 --lr 0.01 --export-onnx " + (dir / "cnn.onnx"));
  INFO(trained.out);
  REQUIRE(trained.code == 0);
  const std::string model = gg::test::slurp(dir / "cnn.onnx");
  for (const char* s : {"Conv", "MaxPool", "Flatten", "logits", "nchw"}) CHECK_THAT(model, Contains(s));
}

TEST_CASE("mnist-eval refuses a file that is not a checkpoint, a truncated one and a missing one, in one line") {
  TempDir dir;
  write_dataset(dir);
  Result trained = run_tool("--data " + dir.path.string() + " --iterations 2 --hidden 8 --save " + (dir / "w.st"));
  REQUIRE(trained.code == 0);
  gg::io::save_safetensors(dir / "plain.st", {{"W1", gg::Tensor(gg::f32, {8, 784})}});
  check_one_error_line(run_tool(dir / "plain.st", MNIST_EVAL_PATH), 1, "plain.st", true, "mnist-eval");
  const std::string bytes = gg::test::slurp(dir / "w.st");
  std::ofstream(dir / "cut.st", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  check_one_error_line(run_tool(dir / "cut.st", MNIST_EVAL_PATH), 1, "cut.st", true, "mnist-eval");
  check_one_error_line(run_tool(dir / "none.st", MNIST_EVAL_PATH), 1, "none.st", true, "mnist-eval");
  check_one_error_line(run_tool("", MNIST_EVAL_PATH), 2, "CHECKPOINT", true, "mnist-eval");
  CHECK_FALSE(fs::exists(dir / "ev-confusion.png"));
}

TEST_CASE("mnist-predict classifies 28x28 PGM images and rejects another size naming the file") {
  TempDir dir;
  write_dataset(dir);
  Result trained = run_tool("--data " + dir.path.string() + " --iterations 40 --lr 0.5 --hidden 16 --save " + (dir / "w.st"));
  REQUIRE(trained.code == 0);
  // Fake digits of classes 3 and 8 (rows 2c+4, 2c+5 lit), as the training data draws them.
  auto digit = [&](int c, const std::string& name, int size = 28) {
    std::string px(static_cast<std::size_t>(size * 28), '\0');
    for (int p = 0; p < size * 28; ++p)
      if (p / 28 >= 2 * c + 4 && p / 28 < 2 * c + 6) px[static_cast<std::size_t>(p)] = static_cast<char>(230);
    std::ofstream(dir / name, std::ios::binary) << "P5\n28 " << size << "\n255\n" << px;
    return dir / name;
  };
  const std::string three = digit(3, "three.pgm"), eight = digit(8, "eight.pgm"), small = digit(3, "small.pgm", 27);
  Result r = run_tool("--top 2 " + (dir / "w.st") + " " + three + " " + eight, MNIST_PREDICT_PATH, false);
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Contains("three.pgm: 3 | top: 3 "));
  CHECK_THAT(r.out, Contains("eight.pgm: 8 | top: 8 "));
  Result bad = run_tool((dir / "w.st") + " " + three + " " + small, MNIST_PREDICT_PATH, false);
  check_one_error_line(bad, 1, "small.pgm: image is 28x27", true, "mnist-predict");
}

TEST_CASE("mnist-train trains a convolutional --model, and mnist-eval and mnist-predict take its checkpoint") {
  TempDir dir;
  write_dataset(dir);
  Result r = run_tool("--data " + dir.path.string() +
                      " --model conv4k3p1,relu,pool2,flatten,dropout0.1,dense10 --batch-size 32 --epochs 3 --optimizer adam"
                      " --lr 0.01 --print-every 10 --save " + (dir / "cnn.st"));
  INFO(r.out);
  REQUIRE(r.code == 0);
  const Curve c = curve_of(r.out);
  REQUIRE(c.losses.size() == 3);
  CHECK(c.losses[2] < 0.5 * c.losses[0]);
  CHECK(c.test_accuracy >= 90.0);
  const gg::train::CheckpointInfo info = gg::train::read_checkpoint_info(dir / "cnn.st");
  CHECK(info.get("layout") == "nchw");
  Result e = run_tool(dir / "cnn.st", MNIST_EVAL_PATH);
  INFO(e.out);
  REQUIRE(e.code == 0);
  const std::size_t at = r.out.rfind("Accuracy: ");
  CHECK_THAT(e.out, Contains(r.out.substr(at, r.out.find('\n', at) - at)));
}

TEST_CASE("mnist-train rejects a --model that does not parse or does not fit 28x28 images, in one line, before training") {
  TempDir dir;
  write_dataset(dir);
  const std::string d = "--data " + dir.path.string() + " --iterations 1 --model ";
  check_one_error_line(run_tool(d + "conv8x3,flatten,dense10"), 2, "'conv8x3'");
  check_one_error_line(run_tool(d + "conv8k3,dense10"), 1, "flatten");
  check_one_error_line(run_tool(d + "conv8k29,flatten,dense10"), 1, "29x29 kernel does not fit the 28x28 image");
  check_one_error_line(run_tool(d + "pool32,flatten,dense10"), 1, "does not fit the 28x28 map");
  check_one_error_line(run_tool(d + "dense64,relu,dense7"), 1, "7 outputs");
}

// ---- hostile input (issue #11): one line, exit 1 or 2, and nothing written --------------------

TEST_CASE("mnist-train refuses a run whose epochs times steps overflow, before training and writing nothing") {
  TempDir dir;
  write_dataset(dir);
  // 300 examples in batches of 19: 16 steps an epoch, and 2^60 epochs of 16 steps wrap to 0.
  const std::string d = "--data " + dir.path.string() + " --batch-size 19 --epochs 1152921504606846976 ";
  check_one_error_line(run_tool(d + "--plot " + (dir / "p.png")), 2, "--epochs");
  check_one_error_line(run_tool(d + "--save " + (dir / "w.st")), 2, "--epochs");
  CHECK(!fs::exists(dir / "p.png"));
  CHECK(!fs::exists(dir / "w.st"));
}

TEST_CASE("mnist-train refuses more iterations than a run may take") {
  TempDir dir;
  write_dataset(dir);
  check_one_error_line(run_tool("--data " + dir.path.string() + " --iterations 1000000000000"), 2, "--iterations");
}

TEST_CASE("mnist-train --load refuses a checkpoint missing batch norm statistics, naming the tensor and the file") {
  TempDir dir;
  write_dataset(dir);
  const std::string common = "--data " + dir.path.string() + " --iterations 2 --model dense16,bn,relu,dense10 ";
  REQUIRE(run_tool(common + "--save " + (dir / "w.st")).code == 0);
  const gg::io::SafetensorsFile f = gg::io::load_safetensors(dir / "w.st");
  std::vector<std::pair<std::string, gg::TensorView>> kept;
  std::string dropped;
  for (const auto& [name, t] : f.tensors) {
    if (dropped.empty() && name.find("running_mean") != std::string::npos)
      dropped = name;
    else
      kept.emplace_back(name, t.view());
  }
  REQUIRE_FALSE(dropped.empty());
  gg::io::save_safetensors(dir / "cut.st", kept, f.metadata);
  const Result r = run_tool(common + "--load " + (dir / "cut.st") + " --save " + (dir / "out.st"));
  check_one_error_line(r, 1, "cut.st");
  CHECK_THAT(r.out, Contains("'" + dropped + "'"));
  CHECK(!fs::exists(dir / "out.st"));
}

TEST_CASE("mnist-train stops when the parameters explode although the loss stays finite, saving nothing") {
  TempDir dir;
  write_dataset(dir);
  const Result r = run_tool("--data " + dir.path.string() + " --iterations 20 --lr 1e6 --hidden 8 --save " + (dir / "w.st"));
  check_one_error_line(r, 1, "at iteration", false);
  CHECK_THAT(r.out, Contains("--max-param-abs"));
  CHECK(!fs::exists(dir / "w.st"));
}

TEST_CASE("mnist-train never saves parameters past float32's comfort after a single huge step") {
  TempDir dir;
  write_dataset(dir);
  const Result r = run_tool("--data " + dir.path.string() + " --iterations 1 --lr 1e38 --hidden 8 --save " + (dir / "w.st"));
  check_one_error_line(r, 1, "at iteration 0", false);
  CHECK(!fs::exists(dir / "w.st"));
}

TEST_CASE("mnist-train --max-param-abs sets the divergence guard's limit") {
  TempDir dir;
  write_dataset(dir);
  const std::string d = "--data " + dir.path.string() + " --iterations 3 --hidden 8 ";
  check_one_error_line(run_tool(d + "--max-param-abs 1e-3"), 1, "past the limit of 0.001", false);
  check_one_error_line(run_tool(d + "--max-param-abs 0"), 2, "--max-param-abs");
  CHECK(run_tool(d + "--max-param-abs inf").code == 0);
}

TEST_CASE("mnist-train checks its output paths before training") {
  TempDir dir;
  write_dataset(dir);
  REQUIRE(::mkfifo((dir / "fifo").c_str(), 0600) == 0);
  const std::string d = "--data " + dir.path.string() + " --iterations 1 --hidden 8 ";
  check_one_error_line(run_tool(d + "--save " + (dir / "missing/w.st")), 1, "missing/w.st");
  check_one_error_line(run_tool(d + "--metrics " + (dir / "fifo")), 1, "FIFO");
  check_one_error_line(run_tool(d + "--plot " + dir.path.string()), 1, "directory");
  check_one_error_line(run_tool(d + "--export-onnx " + (dir / "missing/m.onnx")), 1, "missing/m.onnx");
  check_one_error_line(run_tool(d + "--save " + (dir / "w.st") + " --plot " + (dir / "missing/p.png")), 1, "missing/p.png");
  CHECK(!fs::exists(dir / "w.st"));
}

TEST_CASE("mnist-train rejects stray positional arguments and empty file names") {
  TempDir dir;
  write_dataset(dir);
  const std::string d = "--data " + dir.path.string() + " ";
  check_one_error_line(run_tool(d + "--iterations 1 5000"), 2, "positional");
  for (const char* flag : {"--save", "--metrics", "--plot", "--export-onnx", "--load", "--data"})
    check_one_error_line(run_tool(d + flag + " ''"), 2, flag);
}

TEST_CASE("mnist-train rejects a negative seed and a test divisor float32 cannot hold") {
  TempDir dir;
  write_dataset(dir);
  const std::string d = "--data " + dir.path.string() + " --iterations 1 ";
  check_one_error_line(run_tool(d + "--seed -1"), 2, "--seed");
  check_one_error_line(run_tool(d + "--test-divisor 1e-300"), 2, "--test-divisor");
  check_one_error_line(run_tool(d + "--test-divisor 1e300"), 2, "--test-divisor");
}

TEST_CASE("mnist-train works without HOME, XDG_CACHE_HOME and GRADGRAPH_DATA given --help or --data") {
  TempDir dir;
  write_dataset(dir);
  const std::string bare = std::string("env -u HOME -u XDG_CACHE_HOME -u GRADGRAPH_DATA ") + MNIST_TRAIN_PATH;
  const Result help = run_tool("--help", bare.c_str(), false);
  INFO(help.out);
  CHECK(help.code == 0);
  const Result r = run_tool("--data " + dir.path.string() + " --iterations 1 --hidden 8", bare.c_str());
  INFO(r.out);
  CHECK(r.code == 0);
  check_one_error_line(run_tool("--iterations 1", bare.c_str()), 2, "--data");
}

// The hostile battery (issue #11): flags, files and paths a careless or hostile user may give.
// Every one ends with exit 1 (bad data or file) or 2 (bad usage), one line naming the problem,
// no sanitizer report (the suite also runs with the tools built under ASan and UBSan), and
// nothing written in the directory every output flag points into.
TEST_CASE("every invocation of the hostile battery ends in one line, exit 1 or 2, nothing written, no sanitizer report") {
  TempDir dir;
  write_dataset(dir);
  const std::string out = dir / "out";
  fs::create_directories(out);
  REQUIRE(::mkfifo((dir / "fifo").c_str(), 0600) == 0);
  write_file(dir / "garbage.st", Bytes{'n', 'o', 't', ' ', 'a', ' ', 'c', 'k', 'p', 't'});
  write_file(dir / "huge-header.st", Bytes{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'});
  write_file(dir / "image.pgm", Bytes{'P', '5', ' ', '2', ' ', '2', ' ', '2', '5', '5', '\n', 0, 0, 0, 0});
  // Every output flag points into out/, unless the case sets that flag itself.
  auto train = [&](const std::string& args) {
    std::string s = args;
    for (const auto& [flag, value] : {std::pair<std::string, std::string>{"--data", dir.path.string()},
                                      {"--hidden", "8"}, {"--iterations", "2"}, {"--save", out + "/w.st"},
                                      {"--metrics", out + "/m.csv"}, {"--plot", out + "/p.png"}})
      if (args.find(flag + " ") == std::string::npos) s += " " + flag + " " + value;
    return s;
  };
  const std::string f = dir.path.string() + "/";
  struct Case {
    const char* tool;
    std::string args;
    int code;
    std::string needle;  // in the line: the error is the one meant
  };
  const std::vector<Case> battery = {
      // usage
      {MNIST_TRAIN_PATH, train("--iterations 1 5000"), 2, "positional"},
      {MNIST_TRAIN_PATH, train("--iterations 1e12"), 2, "--iterations"},
      {MNIST_TRAIN_PATH, train("--iterations 99999999999999"), 2, "--iterations"},
      {MNIST_TRAIN_PATH, train("--batch-size 250 --epochs 1152921504606846976"), 2, "--epochs"},
      {MNIST_TRAIN_PATH, train("--batch-size -5 --epochs 1"), 2, "--batch-size"},
      {MNIST_TRAIN_PATH, train("--seed -1"), 2, "--seed"},
      {MNIST_TRAIN_PATH, train("--test-divisor 1e-300"), 2, "--test-divisor"},
      {MNIST_TRAIN_PATH, train("--test-divisor nan"), 2, "--test-divisor"},
      {MNIST_TRAIN_PATH, train("--lr nan"), 2, "--lr"},
      {MNIST_TRAIN_PATH, train("--lr inf"), 2, "--lr"},
      {MNIST_TRAIN_PATH, train("--lr -1"), 2, "--lr"},
      {MNIST_TRAIN_PATH, train("--hidden 4294967296"), 2, "--hidden"},
      {MNIST_TRAIN_PATH, train("--layers 8,,8"), 2, "--layers"},
      {MNIST_TRAIN_PATH, train("--layers 8,-1"), 2, "--layers"},
      {MNIST_TRAIN_PATH, train("--model 'conv('"), 2, "conv("},
      {MNIST_TRAIN_PATH, train("--model conv999999999999k3"), 2, "conv999999999999k3"},
      {MNIST_TRAIN_PATH, train("--dtype float16"), 2, "--dtype"},
      {MNIST_TRAIN_PATH, train("--optimizer foo"), 2, "foo"},
      {MNIST_TRAIN_PATH, train("--schedule foo"), 2, "foo"},
      {MNIST_TRAIN_PATH, train("--val-split 1.5"), 2, "--val-split"},
      {MNIST_TRAIN_PATH, train("--dropout 1"), 2, "--dropout"},
      {MNIST_TRAIN_PATH, train("--momentum nan"), 2, "--momentum"},
      {MNIST_TRAIN_PATH, train("--shift 100"), 2, "--shift"},
      {MNIST_TRAIN_PATH, train("--sparse-density 2"), 2, "--sparse-density"},
      {MNIST_TRAIN_PATH, train("--max-param-abs 0"), 2, "--max-param-abs"},
      {MNIST_TRAIN_PATH, train("--print-every 0"), 2, "--print-every"},
      {MNIST_TRAIN_PATH, train("--export-onnx ''"), 2, "--export-onnx"},
      {MNIST_TRAIN_PATH, train("--no-such-flag"), 2, "no-such-flag"},
      // files
      {MNIST_TRAIN_PATH, train("--data /nonexistent"), 1, "/nonexistent"},
      {MNIST_TRAIN_PATH, train("--data /etc/passwd"), 1, "not a directory"},
      {MNIST_TRAIN_PATH, train("--load " + f + "garbage.st"), 1, "garbage.st"},
      {MNIST_TRAIN_PATH, train("--load " + f + "huge-header.st"), 1, "huge-header.st"},
      {MNIST_TRAIN_PATH, train("--load " + f + "missing.st"), 1, "missing.st"},
      {MNIST_TRAIN_PATH, train("--load " + f + "fifo"), 1, "FIFO"},
      {MNIST_TRAIN_PATH, train("--resume " + f + "garbage.st"), 1, "garbage.st"},
      {MNIST_TRAIN_PATH, train("--val-split 300"), 1, "validation"},
      // paths
      {MNIST_TRAIN_PATH, train("--save /dev/null"), 1, "character device"},
      {MNIST_TRAIN_PATH, train("--save " + f + "fifo"), 1, "FIFO"},
      {MNIST_TRAIN_PATH, train("--save " + dir.path.string()), 1, "directory"},
      {MNIST_TRAIN_PATH, train("--metrics /nonexistent/m.csv"), 1, "/nonexistent"},
      {MNIST_TRAIN_PATH, train("--plot " + f + "missing/p.png"), 1, "missing/p.png"},
      {MNIST_TRAIN_PATH, train("--export-onnx " + f + "missing/m.onnx"), 1, "missing/m.onnx"},
      // the other tools
      {MNIST_EVAL_PATH, "", 2, "which checkpoint"},
      {MNIST_EVAL_PATH, f + "garbage.st extra", 2, "positional"},
      {MNIST_EVAL_PATH, f + "garbage.st --data " + dir.path.string() + " --plot " + (out + "/e"), 1, "garbage.st"},
      {MNIST_EVAL_PATH, f + "huge-header.st --data " + dir.path.string(), 1, "huge-header.st"},
      {MNIST_EVAL_PATH, f + "missing.st --data " + dir.path.string(), 1, "missing.st"},
      {MNIST_PREDICT_PATH, "", 2, "usage"},
      {MNIST_PREDICT_PATH, f + "garbage.st " + f + "image.pgm", 1, "garbage.st"},
      {MNIST_PREDICT_PATH, f + "missing.st " + f + "image.pgm", 1, "missing.st"},
  };
  for (const Case& c : battery) {
    const bool threads = std::string(c.tool) != MNIST_PREDICT_PATH;
    // A hang (a FIFO opened for reading waits for a writer) fails the case instead of the suite.
    const std::string bounded = std::string("timeout -k 5 120 ") + c.tool;
    const Result r = run_tool(c.args, bounded.c_str(), threads);
    INFO(fs::path(c.tool).filename().string() << " " << c.args << "\n" << r.out);
    CHECK(r.code == c.code);
    CHECK_THAT(r.out, Contains(c.needle));
    CHECK(count_lines(r.out) == 1);
    CHECK(r.out.rfind(fs::path(c.tool).filename().string() + ": ", 0) == 0);
    CHECK(r.out.find("Sanitizer") == std::string::npos);
    CHECK(r.out.find("runtime error") == std::string::npos);
    CHECK(fs::is_empty(out));
  }
}
