// Hostile input to the library (issue #11): feeds that are not this program's inputs, sizes whose
// arithmetic overflows, malformed safetensors headers, and output paths that are not regular
// files. Each must end in one clear exception, never a crash, a wrong result or a clobbered file.
#include "support.hpp"

#include <gradgraph/atomic_file.hpp>
#include <gradgraph/gradgraph.hpp>
#include <gradgraph/safetensors.hpp>

#include <catch2/catch.hpp>

#include <csignal>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using Catch::Matchers::Contains;
using gg::test::message_of;
using gg::test::one_hot;
using Mlp = gg::test::MlpWithGrads;
using ScratchDir = gg::test::TempDir;

constexpr std::int64_t k31 = std::int64_t{1} << 31;
constexpr std::int64_t k32 = std::int64_t{1} << 32;
constexpr std::int64_t k40 = std::int64_t{1} << 40;

gg::CompileOptions one_thread() {
  gg::CompileOptions o;
  o.threads = 1;
  return o;
}

std::string u64_le(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// load_safetensors of a file with this header and no data: the message of its runtime_error.
std::string load_error(const std::string& header) {
  ScratchDir d;
  const std::string path = d.file("bad.safetensors");
  spit(path, u64_le(header.size()) + header);
  const std::string msg = message_of<std::runtime_error>([&] { gg::io::load_safetensors(path); });
  CHECK(msg.rfind(path + ": ", 0) == 0);
  CHECK(msg.find('\n') == std::string::npos);
  return msg;
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st.st_mode;
}

void write_hello(const std::string& path) {
  gg::io::write_file_atomic(path, [](std::ostream& os) { os << "hello"; });
}

}  // namespace

// ---- feeds -------------------------------------------------------------------------------------

TEST_CASE("a feed for another graph's input with the same node id is refused, naming the input", "[hostile][feed]") {
  Mlp net(gg::f32, 20, 7, 5);
  gg::Program p(net.g, net.fetches(), one_thread());
  gg::Graph other(gg::f32);
  const gg::Value x_other = other.input("X", {3, gg::dyn});  // node 0, as net.X
  REQUIRE(x_other.id == net.X.id);
  const gg::Tensor x(gg::f32, {3, 8});
  const gg::Tensor y = one_hot(gg::f32, 5, 8, 1);
  const std::string msg = message_of<std::invalid_argument>([&] { p.run({{x_other, x}, {net.Y, y}}); });
  CHECK_THAT(msg, Contains("input 'X'") && Contains("comes from another graph"));
  CHECK(msg.find('\n') == std::string::npos);
}

TEST_CASE("feeding a node that is not an input is an error naming it", "[hostile][feed]") {
  Mlp net(gg::f32, 20, 7, 5);
  gg::Program p(net.g, net.fetches(), one_thread());
  const gg::Tensor x(gg::f32, {20, 8});
  const gg::Tensor y = one_hot(gg::f32, 5, 8, 1);
  const gg::Tensor w(gg::f32, {7, 20});
  const std::string msg = message_of<std::invalid_argument>([&] { p.run({{net.X, x}, {net.Y, y}, {net.W1, w}}); });
  CHECK_THAT(msg, Contains("'W1'") && Contains("not an input"));
}

TEST_CASE("feeding an input twice is an error naming it", "[hostile][feed]") {
  Mlp net(gg::f32, 20, 7, 5);
  gg::Program p(net.g, net.fetches(), one_thread());
  const gg::Tensor x(gg::f32, {20, 8});
  const gg::Tensor y = one_hot(gg::f32, 5, 8, 1);
  const std::string msg = message_of<std::invalid_argument>([&] { p.run({{net.X, x}, {net.Y, y}, {net.X, x}}); });
  CHECK_THAT(msg, Contains("'X'") && Contains("fed twice"));
}

TEST_CASE("a feed with a null data pointer is an error naming the input", "[hostile][feed]") {
  Mlp net(gg::f32, 20, 7, 5);
  gg::Program p(net.g, net.fetches(), one_thread());
  const gg::Tensor y = one_hot(gg::f32, 5, 8, 1);
  const gg::TensorView null_x(nullptr, gg::f32, {20, 8});
  const std::string msg = message_of<std::invalid_argument>([&] { p.run({{net.X, null_x}, {net.Y, y}}); });
  CHECK_THAT(msg, Contains("'X'") && Contains("null pointer"));
}

TEST_CASE("an empty batch is refused naming the input, not run to a NaN loss", "[hostile][feed]") {
  Mlp net(gg::f32, 20, 7, 5);
  gg::Program p(net.g, net.fetches(), one_thread());
  const gg::Tensor x(gg::f32, {20, 0});
  const gg::Tensor y(gg::f32, {5, 0});
  const std::string msg = message_of<std::invalid_argument>([&] { p.run({{net.X, x}, {net.Y, y}}); });
  CHECK_THAT(msg, (Contains("input 'X' fed {20, 0}") || Contains("input 'Y' fed {5, 0}")) && Contains("empty batch"));
}

// ---- ownership and forged handles --------------------------------------------------------------

TEST_CASE("running a program after its graph is destroyed is a logic_error, not a use after free", "[hostile][ownership]") {
  auto net = std::make_unique<Mlp>(gg::f32, 20, 7, 5);
  gg::Program p(net->g, net->fetches(), one_thread());
  const gg::Tensor x(gg::f32, {20, 8});
  const gg::Tensor y = one_hot(gg::f32, 5, 8, 1);
  p.run({{net->X, x}, {net->Y, y}});
  net.reset();
  const std::string msg = message_of<std::logic_error>([&] { p.run({}); });
  CHECK_THAT(msg, Contains("Graph was destroyed"));
  // The parameters live in the program: still there by name.
  CHECK(p.param("W1").shape == gg::Shape{7, 20});
}

TEST_CASE("a forged Value naming a node the graph does not have is a GraphError", "[hostile][ownership]") {
  gg::Graph g(gg::f32);
  g.input("X", {2, 3});
  const gg::Value forged{&g, 12345};
  CHECK_THROWS_AS(forged.shape(), gg::GraphError);
  CHECK_THROWS_AS(gg::relu(forged), gg::GraphError);
  const gg::Value bad_port{&g, 0, 1};  // an input has one output
  CHECK_THAT(message_of<gg::GraphError>([&] { bad_port.shape(); }), Contains("'X'") && Contains("no output 1"));
  const gg::Value negative_port{&g, 0, -3};
  CHECK_THROWS_AS(negative_port.dtype(), gg::GraphError);
}

TEST_CASE("get of a forged Value or of a node added after compiling is an error, not a read out of bounds", "[hostile][ownership]") {
  Mlp net(gg::f32, 20, 7, 5);
  gg::Program p(net.g, net.fetches(), one_thread());
  const gg::Tensor x(gg::f32, {20, 8});
  const gg::Tensor y = one_hot(gg::f32, 5, 8, 1);
  p.run({{net.X, x}, {net.Y, y}});
  const gg::Value later = gg::relu(net.X);  // made after the program was compiled
  CHECK_THAT(message_of<std::invalid_argument>([&] { p.get(later); }), Contains("not computed by this program"));
  CHECK_THROWS_AS(p.get(gg::Value{&net.g, 12345}), std::invalid_argument);
  CHECK_THROWS_AS(p.get(gg::Value{&net.g, net.X.id, 7}), std::invalid_argument);
}

// ---- size arithmetic ---------------------------------------------------------------------------

TEST_CASE("the element count of a shape past 2^63 is an overflow_error naming the shape", "[hostile][size]") {
  const std::string msg = message_of<std::overflow_error>([] { (void)gg::Shape{k40, k40}.numel(); });
  CHECK_THAT(msg, Contains("{1099511627776, 1099511627776}"));
}

TEST_CASE("a shape whose extents overflow behind a zero extent is refused too", "[hostile][size]") {
  // 0 elements, but the contiguous strides would be 2^32 and 2^64.
  CHECK_THROWS_AS(gg::Shape({0, k32, k32}).numel(), std::overflow_error);
  CHECK_THROWS_AS(gg::Tensor(gg::f32, {0, k32, k32}), std::overflow_error);
  CHECK(gg::Tensor(gg::f32, {0, 3, 4}).numel() == 0);
}

TEST_CASE("a tensor whose bytes overflow is an overflow_error, not a small allocation", "[hostile][size]") {
  const std::string msg = message_of<std::overflow_error>([] { gg::Tensor t(gg::f32, {k31, k31}); });
  CHECK_THAT(msg, Contains("{2147483648, 2147483648}"));
}

TEST_CASE("a parameter whose bytes overflow is an overflow_error naming it, not a heap overflow", "[hostile][size]") {
  const std::string msg = message_of<std::overflow_error>([] {
    gg::Graph g(gg::f32);
    const gg::Value w = g.param("w", {k31, k31});
    gg::Program p(g, {gg::sum(w)}, one_thread());
  });
  CHECK_THAT(msg, Contains("'w'"));
}

TEST_CASE("a safetensors shape whose extents overflow is refused whichever extent is zero", "[hostile][safetensors]") {
  const std::string data = R"("data_offsets":[0,0]}})";
  CHECK_THAT(load_error(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,0],)" + data), Contains("\"t\""));
  CHECK_THAT(load_error(R"({"t":{"dtype":"F32","shape":[0,4294967296,4294967296],)" + data), Contains("\"t\""));
}

TEST_CASE("a safetensors header number past double's range is a runtime_error naming the file", "[hostile][safetensors]") {
  CHECK_THAT(load_error(R"({"__metadata__":{"x":"y"},"t":{"dtype":"F32","shape":[1e400],"data_offsets":[0,0]}})"),
             Contains("JSON"));
}

// ---- output files ------------------------------------------------------------------------------

TEST_CASE("the atomic writer refuses to replace a symbolic link and leaves it and its target alone", "[hostile][atomic]") {
  ScratchDir d;
  const std::string target = d.file("target"), link = d.file("link");
  spit(target, "keep");
  REQUIRE(::symlink(target.c_str(), link.c_str()) == 0);
  const std::string msg = message_of<std::runtime_error>([&] { write_hello(link); });
  CHECK_THAT(msg, Contains(link) && Contains("symbolic link"));
  CHECK(S_ISLNK(mode_of(link)));
  CHECK(gg::test::slurp(target) == "keep");
  CHECK(d.entries() == 2);  // no temporary file left
}

TEST_CASE("the atomic writer refuses to replace a FIFO", "[hostile][atomic]") {
  ScratchDir d;
  const std::string fifo = d.file("fifo");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const std::string msg = message_of<std::runtime_error>([&] { write_hello(fifo); });
  CHECK_THAT(msg, Contains(fifo) && Contains("FIFO"));
  CHECK(S_ISFIFO(mode_of(fifo)));
  CHECK(d.entries() == 1);
}

TEST_CASE("the atomic writer refuses to replace a character device", "[hostile][atomic]") {
  ScratchDir d;
  const std::string dev = d.file("null");
  // A private copy of /dev/null's node (root only): the test never risks the real one.
  if (::mknod(dev.c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0) {
    WARN("cannot create a device node here (not root?): skipped");
    return;
  }
  const std::string msg = message_of<std::runtime_error>([&] { write_hello(dev); });
  CHECK_THAT(msg, Contains(dev) && Contains("character device"));
  CHECK(S_ISCHR(mode_of(dev)));
}

TEST_CASE("the atomic writer keeps the mode of the file it replaces", "[hostile][atomic]") {
  ScratchDir d;
  const std::string path = d.file("private");
  spit(path, "old");
  REQUIRE(::chmod(path.c_str(), 0600) == 0);
  write_hello(path);
  CHECK(gg::test::slurp(path) == "hello");
  CHECK((mode_of(path) & 07777) == 0600);
}

TEST_CASE("commit_temp_file refuses a FIFO and keeps a replaced file's mode", "[hostile][atomic]") {
  ScratchDir d;
  const std::string fifo = d.file("fifo"), plain = d.file("plain");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  std::string tmp = gg::io::temp_path_for(fifo);
  spit(tmp, "new");
  CHECK_THROWS_AS(gg::io::commit_temp_file(tmp, fifo), std::runtime_error);
  CHECK(S_ISFIFO(mode_of(fifo)));
  spit(plain, "old");
  REQUIRE(::chmod(plain.c_str(), 0640) == 0);
  tmp = gg::io::temp_path_for(plain);
  spit(tmp, "new");
  gg::io::commit_temp_file(tmp, plain);
  CHECK((mode_of(plain) & 07777) == 0640);
  CHECK(d.entries() == 2);
}

TEST_CASE("check_output_path accepts a new or regular file in a writable directory and refuses the rest", "[hostile][atomic]") {
  ScratchDir d;
  CHECK_NOTHROW(gg::io::check_output_path(d.file("new.st")));
  CHECK_THAT(message_of<std::runtime_error>([&] { gg::io::check_output_path(d.file("missing/x.st")); }),
             Contains("missing"));
  CHECK_THAT(message_of<std::runtime_error>([&] { gg::io::check_output_path(d.path.string()); }), Contains("directory"));
  CHECK_THROWS_AS(gg::io::check_output_path(""), std::runtime_error);
}

TEST_CASE("a SIGTERM during a write removes the temporary file once the handlers are installed", "[hostile][atomic]") {
  ScratchDir d;
  const std::string path = d.file("w.st");
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    gg::io::remove_temp_files_on_signals();
    gg::io::write_file_atomic(path, [](std::ostream& os) {
      os << "half";
      os.flush();
      ::raise(SIGTERM);  // as if killed in the middle of the save
    });
    ::_exit(0);  // not reached
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGTERM);
  CHECK(d.entries() == 0);
}

// Found by tests/fuzz/fuzz_checkpoint (tests/fuzz/repro/checkpoint/finding-newline-in-spec): a
// checkpoint whose metadata spec held a newline gave a two-line error, the spec echoed verbatim.
// Text from files and flags is echoed with its control characters escaped, so errors stay one line.
TEST_CASE("errors that echo a spec, layout, dtype or normalisation escape control characters", "[hostile]") {
  const std::map<std::string, std::string> good = {{"spec", "dense3,relu,dense2"}, {"layout", "rows"},
                                                    {"dtype", "float32"},         {"example", "{4}"},
                                                    {"classes", "2"},             {"normalization", "divisor=255 mean=0 std=1"}};
  REQUIRE_NOTHROW(gg::train::rebuild(gg::train::CheckpointInfo{good}));
  const std::map<std::string, std::string> bad = {{"spec", "dense3,re\nlu,dense2"}, {"layout", "ro\nws"},
                                                  {"dtype", "float\n32"},          {"example", "{4\n"},
                                                  {"classes", "2\n"},              {"normalization", "divisor=\n"}};
  for (const auto& [key, value] : bad) {
    auto info = good;
    info[key] = value;
    const std::string msg =
        message_of<std::runtime_error>([&] { gg::train::rebuild(gg::train::CheckpointInfo{info}); });
    INFO(key << ": " << msg);
    CHECK(msg.find('\n') == std::string::npos);
    CHECK_THAT(msg, Contains("\\n"));
  }
  CHECK_THAT(message_of<std::invalid_argument>([] { gg::nn::parse("dense3,\x1b[2Jrelu,dense2"); }),
             Contains("'\\x1b[2Jrelu'"));
}
