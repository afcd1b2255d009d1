#include "support.hpp"

#include <catch2/catch.hpp>

#include <gradgraph/idx.hpp>

#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

using Catch::Matchers::Contains;
using gg::data::DataError;

namespace {

namespace fs = std::filesystem;
using gg::test::Bytes;
using gg::test::idx;
using gg::test::put_be32;

using gg::test::TempDir;


Bytes iota_bytes(std::size_t n, unsigned mod = 256) {
  Bytes b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::uint8_t>(i % mod);
  return b;
}

void write_raw(const std::string& path, const Bytes& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

void write_gz(const std::string& path, const Bytes& b) {
  gzFile f = gzopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("gzopen failed for " + path);
  int n = b.empty() ? 0 : gzwrite(f, b.data(), static_cast<unsigned>(b.size()));
  int rc = gzclose(f);
  if (n != static_cast<int>(b.size()) || rc != Z_OK) throw std::runtime_error("gzwrite failed for " + path);
}

Bytes read_raw(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// A gzip of `head` then `blocks` x 16 MiB of zeros, made in a few MB: the zeros are deflated once,
// after a full flush (so that their compressed form does not depend on what came before), and that
// block is repeated; the trailer's CRC-32 and length are those of the whole content.
Bytes gzip_head_then_zeros(const Bytes& head, std::size_t blocks) {
  constexpr std::size_t kBlock = std::size_t{16} << 20;
  z_stream zs{};
  REQUIRE(deflateInit2(&zs, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  Bytes out;
  auto run = [&](const Bytes& in, int flush) {
    zs.next_in = const_cast<Bytef*>(in.data());
    zs.avail_in = static_cast<uInt>(in.size());
    std::uint8_t buf[1 << 16];
    do {
      zs.next_out = buf;
      zs.avail_out = sizeof buf;
      REQUIRE(deflate(&zs, flush) != Z_STREAM_ERROR);
      out.insert(out.end(), buf, buf + (sizeof buf - zs.avail_out));
    } while (zs.avail_out == 0 || zs.avail_in != 0);
  };
  run(head, Z_FULL_FLUSH);
  const Bytes zeros(kBlock);
  std::size_t at = out.size();
  run(zeros, Z_FULL_FLUSH);
  const Bytes block(out.begin() + static_cast<std::ptrdiff_t>(at), out.end());
  for (std::size_t i = 1; i < blocks; ++i) out.insert(out.end(), block.begin(), block.end());
  run({}, Z_FINISH);  // the final (empty) block, then a trailer for head + one block: replaced
  deflateEnd(&zs);
  out.resize(out.size() - 8);
  uLong crc = crc32(0, head.data(), static_cast<uInt>(head.size()));
  const uLong zcrc = crc32(0, zeros.data(), static_cast<uInt>(zeros.size()));
  for (std::size_t i = 0; i < blocks; ++i) crc = crc32_combine(crc, zcrc, static_cast<z_off_t>(kBlock));
  const std::uint64_t size = head.size() + blocks * kBlock;
  for (std::uint64_t v : {std::uint64_t{crc}, size})
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  return out;
}

// Peak resident memory of this process so far (VmHWM), in KiB.
long peak_rss_kib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

struct ChildRead {
  std::string error;     // the DataError's message, or what else happened
  long peak_growth_kib;  // how much the peak RSS grew while reading
};

// read_idx(path) in a forked child, so that its peak memory is measured on its own (and a failure
// to bound it cannot take the test process down): the child reports through a pipe.
ChildRead read_idx_in_child(const std::string& path) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  std::fflush(nullptr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    long before = peak_rss_kib();
    std::string what = "no error";
    try {
      gg::data::read_idx(path);
    } catch (const DataError& e) {
      what = e.what();
    } catch (const std::exception& e) {
      what = std::string("not a DataError: ") + e.what();
    }
    std::string report = std::to_string(peak_rss_kib() - before) + "\n" + what;
    ssize_t w = write(fds[1], report.data(), report.size());
    _exit(w == static_cast<ssize_t>(report.size()) ? 0 : 1);
  }
  close(fds[1]);
  std::string report;
  char buf[4096];
  for (ssize_t r; (r = read(fds[0], buf, sizeof buf)) > 0;) report.append(buf, static_cast<std::size_t>(r));
  close(fds[0]);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  INFO(report);
  REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  std::size_t nl = report.find('\n');
  REQUIRE(nl != std::string::npos);
  return {report.substr(nl + 1), std::stol(report.substr(0, nl))};
}

// Runs f, requires it to throw a DataError and returns the message, which must be a single line.
std::string data_error(const std::function<void()>& f) {
  std::optional<std::string> msg;
  try {
    f();
  } catch (const DataError& e) {
    msg = e.what();
  }
  REQUIRE(msg.has_value());
  INFO(*msg);
  CHECK(msg->find('\n') == std::string::npos);
  return *msg;
}

// A valid split: `count` images of rows x cols and labels i % 10.
void write_split(const TempDir& dir, const std::string& prefix, std::uint32_t count, std::uint32_t rows,
                 std::uint32_t cols, bool gz) {
  Bytes images = idx({count, rows, cols}, iota_bytes(std::size_t{count} * rows * cols));
  Bytes labels = idx({count}, iota_bytes(count, 10));
  std::string ext = gz ? ".gz" : "";
  auto write = gz ? write_gz : write_raw;
  write(dir / (prefix + "-images-idx3-ubyte" + ext), images);
  write(dir / (prefix + "-labels-idx1-ubyte" + ext), labels);
}

}  // namespace

TEST_CASE("read_idx returns the dims and bytes of a raw IDX file") {
  TempDir dir;
  write_raw(dir / "a.idx", idx({2, 3, 4}, iota_bytes(24)));
  gg::data::IdxFile f = gg::data::read_idx(dir / "a.idx");
  CHECK(f.dims == std::vector<std::uint32_t>{2, 3, 4});
  CHECK(f.bytes == iota_bytes(24));
}

TEST_CASE("read_idx decompresses gzip, detected by content whatever the file name") {
  TempDir dir;
  Bytes content = idx({300, 7}, iota_bytes(2100));
  write_gz(dir / "a.idx.gz", content);
  write_gz(dir / "no-suffix", content);
  for (const char* name : {"a.idx.gz", "no-suffix"}) {
    gg::data::IdxFile f = gg::data::read_idx(dir / name);
    CHECK(f.dims == std::vector<std::uint32_t>{300, 7});
    CHECK(f.bytes == iota_bytes(2100));
  }
}

TEST_CASE("read_idx reads a gzip file made of several concatenated members") {
  TempDir dir;
  Bytes content = idx({10, 10}, iota_bytes(100));
  write_gz(dir / "p1.gz", Bytes(content.begin(), content.begin() + 50));
  write_gz(dir / "p2.gz", Bytes(content.begin() + 50, content.end()));
  Bytes both = read_raw(dir / "p1.gz"), second = read_raw(dir / "p2.gz");
  both.insert(both.end(), second.begin(), second.end());  // what `cat p1.gz p2.gz` makes
  write_raw(dir / "cat.gz", both);
  CHECK(gg::data::read_idx(dir / "cat.gz").bytes == iota_bytes(100));
}

TEST_CASE("load_split loads a raw split with its dims, images and labels") {
  TempDir dir;
  write_split(dir, "train", 5, 3, 2, false);
  gg::data::Split s = gg::data::load_split(dir.str(), "train");
  CHECK(s.count == 5);
  CHECK(s.rows == 3);
  CHECK(s.cols == 2);
  CHECK(s.images == iota_bytes(30));
  CHECK(s.labels == Bytes{0, 1, 2, 3, 4});
}

TEST_CASE("load_split loads a gzipped split (the layout of Debian's Fashion-MNIST)") {
  TempDir dir;
  write_split(dir, "t10k", 12, 4, 4, true);
  gg::data::Split s = gg::data::load_split(dir.str(), "t10k");
  CHECK(s.count == 12);
  CHECK(s.rows == 4);
  CHECK(s.cols == 4);
  CHECK(s.images == iota_bytes(192));
  CHECK(s.labels == Bytes{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1});
}

TEST_CASE("load_split prefers the raw file when both it and the .gz exist") {
  TempDir dir;
  write_split(dir, "train", 3, 2, 2, false);
  write_split(dir, "train", 4, 2, 2, true);
  CHECK(gg::data::load_split(dir.str(), "train").count == 3);
}

TEST_CASE("a missing data directory is reported with how to fetch MNIST") {
  TempDir dir;
  const std::string missing = dir / "nowhere";
  std::string msg = data_error([&] { gg::data::load_split(missing, "train"); });
  CHECK_THAT(msg, Contains(missing) && Contains("not found") && Contains("run scripts/fetch-mnist"));
}

TEST_CASE("a missing file is reported with its path") {
  TempDir dir;
  write_split(dir, "train", 3, 2, 2, false);
  fs::remove(dir / "train-labels-idx1-ubyte");
  std::string msg = data_error([&] { gg::data::load_split(dir.str(), "train"); });
  CHECK_THAT(msg, Contains(dir / "train-labels-idx1-ubyte") && Contains("missing") &&
                      Contains("train-labels-idx1-ubyte.gz"));

  msg = data_error([&] { gg::data::read_idx(dir / "absent.idx"); });
  CHECK_THAT(msg, Contains(dir / "absent.idx") && Contains("no such file"));
}

TEST_CASE("a file that does not start with 00 00 is not an IDX file; the magic is shown in hex") {
  TempDir dir;
  write_raw(dir / "junk", Bytes{0x12, 0x34, 0x56, 0x78, 0, 0, 0, 1, 9});
  std::string msg = data_error([&] { gg::data::read_idx(dir / "junk"); });
  CHECK_THAT(msg, Contains(dir / "junk") && Contains("not an IDX file") && Contains("magic 0x12345678") &&
                      Contains("expected 0x0000"));

  write_raw(dir / "tiny", Bytes{0, 0});
  msg = data_error([&] { gg::data::read_idx(dir / "tiny"); });
  CHECK_THAT(msg, Contains(dir / "tiny") && Contains("not an IDX file") && Contains("2 bytes"));
}

TEST_CASE("an element type other than unsigned byte is rejected by name") {
  TempDir dir;
  write_raw(dir / "floats", idx({2}, Bytes(8), 0x0d));
  std::string msg = data_error([&] { gg::data::read_idx(dir / "floats"); });
  CHECK_THAT(msg, Contains(dir / "floats") && Contains("unsupported IDX element type 0x0d (float32)") &&
                      Contains("magic 0x00000d01") && Contains("only 0x08 (unsigned byte)"));
}

TEST_CASE("an images file needs rank 3 and a labels file rank 1; both magics are shown") {
  TempDir dir;
  write_split(dir, "train", 3, 2, 2, false);
  write_raw(dir / "train-images-idx3-ubyte", idx({3}, Bytes{1, 2, 3}));  // a labels file in its place
  std::string msg = data_error([&] { gg::data::load_split(dir.str(), "train"); });
  CHECK_THAT(msg, Contains(dir / "train-images-idx3-ubyte") && Contains("rank 1 (magic 0x00000801)") &&
                      Contains("expected rank 3 (magic 0x00000803)"));

  write_split(dir, "train", 3, 2, 2, false);
  write_raw(dir / "train-labels-idx1-ubyte", idx({3, 1}, Bytes{1, 2, 3}));
  msg = data_error([&] { gg::data::load_split(dir.str(), "train"); });
  CHECK_THAT(msg, Contains(dir / "train-labels-idx1-ubyte") && Contains("rank 2 (magic 0x00000802)") &&
                      Contains("expected rank 1 (magic 0x00000801)"));
}

TEST_CASE("truncated data is reported with the expected and the found byte counts") {
  TempDir dir;
  write_raw(dir / "short", idx({2, 3, 4}, iota_bytes(20)));
  std::string msg = data_error([&] { gg::data::read_idx(dir / "short"); });
  CHECK_THAT(msg, Contains(dir / "short") && Contains("truncated") && Contains("expected 24 data bytes") &&
                      Contains("found 20"));

  // The same inside a gzip stream that is itself intact.
  write_gz(dir / "short.gz", idx({2, 3, 4}, iota_bytes(20)));
  msg = data_error([&] { gg::data::read_idx(dir / "short.gz"); });
  CHECK_THAT(msg, Contains(dir / "short.gz") && Contains("expected 24 data bytes") && Contains("found 20"));

  // A header cut off inside the dims.
  write_raw(dir / "header", Bytes{0, 0, 8, 3, 0, 0, 0, 2});
  msg = data_error([&] { gg::data::read_idx(dir / "header"); });
  CHECK_THAT(msg, Contains(dir / "header") && Contains("truncated header") && Contains("needs 16"));
}

TEST_CASE("bytes after the data are reported as trailing bytes") {
  TempDir dir;
  write_raw(dir / "long", idx({2, 3, 4}, iota_bytes(27)));
  std::string msg = data_error([&] { gg::data::read_idx(dir / "long"); });
  CHECK_THAT(msg, Contains(dir / "long") && Contains("3 trailing bytes") && Contains("24 data bytes"));

  // Junk after a complete gzip stream is reported too, rather than silently ignored.
  write_gz(dir / "long.gz", idx({2, 3, 4}, iota_bytes(24)));
  Bytes gz = read_raw(dir / "long.gz");
  gz.insert(gz.end(), {'j', 'u', 'n', 'k'});
  write_raw(dir / "long.gz", gz);
  msg = data_error([&] { gg::data::read_idx(dir / "long.gz"); });
  CHECK_THAT(msg, Contains(dir / "long.gz") && Contains("4 trailing bytes after the end of the gzip stream"));
}

TEST_CASE("a corrupted gzip stream is reported with zlib's error") {
  TempDir dir;
  // Pseudo-random content so the deflate stream is long and made of real Huffman codes.
  Bytes data(20000);
  std::uint32_t x = 12345;
  for (std::uint8_t& b : data) b = static_cast<std::uint8_t>((x = x * 1103515245u + 12345u) >> 24);
  write_gz(dir / "bad.gz", idx({20000}, data));
  Bytes gz = read_raw(dir / "bad.gz");
  for (std::size_t i = gz.size() / 2; i < gz.size() / 2 + 8; ++i) gz[i] ^= 0xff;
  write_raw(dir / "bad.gz", gz);
  std::string msg = data_error([&] { gg::data::read_idx(dir / "bad.gz"); });
  CHECK_THAT(msg, Contains(dir / "bad.gz") && Contains("gzip stream corrupted (zlib: "));
}

TEST_CASE("a gzip stream cut short is reported as truncated") {
  TempDir dir;
  write_gz(dir / "cut.gz", idx({1000}, iota_bytes(1000)));
  Bytes gz = read_raw(dir / "cut.gz");
  gz.resize(gz.size() / 2);
  write_raw(dir / "cut.gz", gz);
  std::string msg = data_error([&] { gg::data::read_idx(dir / "cut.gz"); });
  CHECK_THAT(msg, Contains(dir / "cut.gz") && Contains("gzip stream truncated"));
}

TEST_CASE("image and label counts must agree; both files and both counts are named") {
  TempDir dir;
  write_split(dir, "train", 5, 2, 2, false);
  write_raw(dir / "train-labels-idx1-ubyte", idx({4}, Bytes{1, 2, 3, 4}));
  std::string msg = data_error([&] { gg::data::load_split(dir.str(), "train"); });
  CHECK_THAT(msg, Contains(dir / "train-images-idx3-ubyte") && Contains("5 images") &&
                      Contains(dir / "train-labels-idx1-ubyte") && Contains("4 labels"));
}

TEST_CASE("a label above 9 is reported with its index and value") {
  TempDir dir;
  write_split(dir, "train", 5, 2, 2, false);
  write_raw(dir / "train-labels-idx1-ubyte", idx({5}, Bytes{1, 2, 3, 12, 4}));
  std::string msg = data_error([&] { gg::data::load_split(dir.str(), "train"); });
  CHECK_THAT(msg, Contains(dir / "train-labels-idx1-ubyte") && Contains("index 3 is 12") && Contains("0..9"));
}

TEST_CASE("an images file with a zero count, row or column dimension is rejected") {
  TempDir dir;
  write_split(dir, "train", 2, 2, 2, false);
  write_raw(dir / "train-images-idx3-ubyte", idx({2, 0, 2}, {}));
  std::string msg = data_error([&] { gg::data::load_split(dir.str(), "train"); });
  CHECK_THAT(msg, Contains(dir / "train-images-idx3-ubyte") && Contains("dimension 1 (rows) is 0"));

  write_raw(dir / "train-images-idx3-ubyte", idx({0, 2, 2}, {}));
  msg = data_error([&] { gg::data::load_split(dir.str(), "train"); });
  CHECK_THAT(msg, Contains("dimension 0 (image count) is 0"));
}

TEST_CASE("read_idx accepts an empty IDX array; only load_split insists on data") {
  TempDir dir;
  write_raw(dir / "empty", idx({0, 28}, {}));
  gg::data::IdxFile f = gg::data::read_idx(dir / "empty");
  CHECK(f.dims == std::vector<std::uint32_t>{0, 28});
  CHECK(f.bytes.empty());
}

TEST_CASE("default_data_dir follows GRADGRAPH_DATA, then XDG_CACHE_HOME, then HOME") {
  // Saves and restores the three variables so other tests see the real environment.
  struct Saved {
    const char* name;
    std::optional<std::string> value;
  } saved[] = {{"GRADGRAPH_DATA", {}}, {"XDG_CACHE_HOME", {}}, {"HOME", {}}};
  for (Saved& s : saved)
    if (const char* v = std::getenv(s.name)) s.value = v;

  setenv("GRADGRAPH_DATA", "/data/mnist", 1);
  setenv("XDG_CACHE_HOME", "/xdg", 1);
  setenv("HOME", "/home/u", 1);
  CHECK(gg::data::default_data_dir() == "/data/mnist");
  setenv("GRADGRAPH_DATA", "", 1);  // empty counts as unset, like ${GRADGRAPH_DATA:-...} in the shell
  CHECK(gg::data::default_data_dir() == "/xdg/gradgraph/mnist");
  unsetenv("XDG_CACHE_HOME");
  CHECK(gg::data::default_data_dir() == "/home/u/.cache/gradgraph/mnist");
  unsetenv("HOME");
  CHECK_THROWS_AS(gg::data::default_data_dir(), DataError);

  for (const Saved& s : saved) {
    if (s.value)
      setenv(s.name, s.value->c_str(), 1);
    else
      unsetenv(s.name);
  }
}

TEST_CASE("a small gzip that inflates far past what its IDX header announces is refused in bounded memory") {
  TempDir dir;
  // 1 GiB of zeros after an IDX header announcing 4 bytes, in about 1 MB of gzip (issue #11: today's
  // reader inflated all of it before looking at the header).
  write_raw(dir / "bomb.gz", gzip_head_then_zeros(idx({4}, Bytes{1, 2, 3, 4}), 64));
  CHECK(fs::file_size(dir / "bomb.gz") < 4u << 20);
  ChildRead r = read_idx_in_child(dir / "bomb.gz");
  INFO(r.error);
  CHECK_THAT(r.error, Contains(dir / "bomb.gz") && Contains("trailing bytes after the 4 data bytes of dims [4]") &&
                          Contains("inflates to more than the 12 bytes its IDX header announces"));
  CHECK(r.error.find('\n') == std::string::npos);
  CHECK(r.peak_growth_kib < 256 * 1024);

  // A header that announces 4 GiB over a few real bytes: the buffer follows the data, not the header.
  write_gz(dir / "liar.gz", idx({65536, 65536}, Bytes{1, 2}));
  r = read_idx_in_child(dir / "liar.gz");
  CHECK_THAT(r.error, Contains("truncated: expected 4294967296 data bytes for dims [65536, 65536], found 2"));
  CHECK(r.peak_growth_kib < 256 * 1024);
}

TEST_CASE("a raw file's header is checked against its size before its data is read") {
  TempDir dir;
  Bytes file = idx({4}, Bytes{1, 2, 3, 4});
  file.resize(std::size_t{64} << 20);  // 64 MiB where 4 data bytes are announced
  write_raw(dir / "long", file);
  ChildRead r = read_idx_in_child(dir / "long");
  CHECK_THAT(r.error, Contains(dir / "long") && Contains("67108852 trailing bytes after the 4 data bytes"));
  CHECK(r.peak_growth_kib < 16 * 1024);
}

TEST_CASE("parse_idx_bytes parses raw and gzip bytes in memory as read_idx parses files") {
  TempDir dir;
  Bytes content = idx({3, 5}, iota_bytes(15));
  write_gz(dir / "a.gz", content);
  for (const Bytes& bytes : {content, read_raw(dir / "a.gz")}) {
    gg::data::IdxFile f = gg::data::parse_idx_bytes("mem", bytes);
    CHECK(f.dims == std::vector<std::uint32_t>{3, 5});
    CHECK(f.bytes == iota_bytes(15));
  }
  std::string msg = data_error([&] { gg::data::parse_idx_bytes("<bytes>", idx({3, 5}, iota_bytes(14))); });
  CHECK_THAT(msg, Contains("<bytes>: truncated: expected 15 data bytes"));
  msg = data_error([&] { gg::data::parse_idx_bytes("<bytes>", Bytes{}); });
  CHECK_THAT(msg, Contains("<bytes>: not an IDX file: 0 bytes"));
}
