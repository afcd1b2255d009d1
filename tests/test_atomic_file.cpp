#include "support.hpp"

#include <gradgraph/atomic_file.hpp>

#include <catch2/catch.hpp>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <sys/resource.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace {

using ScratchDir = gg::test::TempDir;

using gg::test::slurp;

}  // namespace

TEST_CASE("write_file_atomic creates the file with exactly what the writer wrote") {
  ScratchDir d;
  const std::string path = d.file("out.bin");
  std::string payload = "hello\n";
  payload += std::string(200000, 'x');  // larger than the internal buffer
  payload += '\0';
  gg::io::write_file_atomic(path, [&](std::ostream& os) { os.write(payload.data(), static_cast<std::streamsize>(payload.size())); });
  CHECK(slurp(path) == payload);
  CHECK(d.entries() == 1);
}

TEST_CASE("write_file_atomic replaces an existing file") {
  ScratchDir d;
  const std::string path = d.file("out.txt");
  gg::io::write_file_atomic(path, [](std::ostream& os) { os << "old contents that are longer"; });
  gg::io::write_file_atomic(path, [](std::ostream& os) { os << "new"; });
  CHECK(slurp(path) == "new");
  CHECK(d.entries() == 1);
}

TEST_CASE("an exception in the writer leaves the old file intact and no temporary file behind") {
  ScratchDir d;
  const std::string path = d.file("model.safetensors");
  gg::io::write_file_atomic(path, [](std::ostream& os) { os << "old"; });
  auto failing = [](std::ostream& os) {
    os << std::string(100000, 'n');  // some of it has already reached the temporary file
    throw std::logic_error("writer gave up");
  };
  CHECK_THROWS_WITH(gg::io::write_file_atomic(path, failing), "writer gave up");
  CHECK(slurp(path) == "old");
  CHECK(d.entries() == 1);
}

TEST_CASE("an exception in the writer does not create the target") {
  ScratchDir d;
  const std::string path = d.file("never.bin");
  CHECK_THROWS_AS(gg::io::write_file_atomic(path, [](std::ostream&) { throw std::runtime_error("no"); }),
                  std::runtime_error);
  CHECK_FALSE(fs::exists(path));
  CHECK(d.entries() == 0);
}

TEST_CASE("writing into a missing directory throws an error naming the path and the reason") {
  ScratchDir d;
  const std::string path = d.file("no/such/dir/out.bin");
  bool called = false;
  try {
    gg::io::write_file_atomic(path, [&](std::ostream&) { called = true; });
    FAIL("expected an exception");
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    CHECK(msg.rfind(path + ": ", 0) == 0);
    CHECK(msg.find("No such file or directory") != std::string::npos);
    CHECK(msg.find('\n') == std::string::npos);
  }
  CHECK_FALSE(called);
}

TEST_CASE("a stream left in a failed state by the writer is reported as a failed write") {
  ScratchDir d;
  const std::string path = d.file("out.txt");
  gg::io::write_file_atomic(path, [](std::ostream& os) { os << "old"; });
  CHECK_THROWS_WITH(gg::io::write_file_atomic(path, [](std::ostream& os) { os.setstate(std::ios::badbit); }),
                    Catch::StartsWith(path + ": write failed"));
  CHECK(slurp(path) == "old");
  CHECK(d.entries() == 1);
}

TEST_CASE("a failing write is reported with the system's reason and leaves the old file intact") {
  // Lowering the file-size limit makes write() fail with EFBIG, standing in for a full disk.
  // SIGXFSZ would otherwise kill the process.
  ScratchDir d;
  const std::string path = d.file("out.bin");
  gg::io::write_file_atomic(path, [](std::ostream& os) { os << "old"; });
  struct rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
  std::string msg;
  try {
    gg::io::write_file_atomic(path, [](std::ostream& os) { os << std::string(100000, 'z'); });
  } catch (const std::runtime_error& e) {
    msg = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);
  CHECK(msg == path + ": write failed: " + std::strerror(EFBIG));
  CHECK(slurp(path) == "old");
  CHECK(d.entries() == 1);
}

TEST_CASE("temp_path_for gives a distinct name next to the target on every call") {
  const std::string a = gg::io::temp_path_for("/x/y/plot.png");
  const std::string b = gg::io::temp_path_for("/x/y/plot.png");
  CHECK(a != b);
  CHECK(a.rfind("/x/y/plot.png.tmp.", 0) == 0);
}

TEST_CASE("commit_temp_file moves a finished temporary file over the target") {
  ScratchDir d;
  const std::string path = d.file("image.png");
  const std::string tmp = gg::io::temp_path_for(path);
  std::ofstream(tmp) << "pixels";
  gg::io::commit_temp_file(tmp, path);
  CHECK(slurp(path) == "pixels");
  CHECK_FALSE(fs::exists(tmp));
}

TEST_CASE("commit_temp_file of a missing temporary file throws naming the target") {
  ScratchDir d;
  const std::string path = d.file("image.png");
  CHECK_THROWS_WITH(gg::io::commit_temp_file(gg::io::temp_path_for(path), path), Catch::StartsWith(path + ": "));
}
