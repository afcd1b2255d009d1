#include <gradgraph/idx.hpp>

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>

namespace gg::data {

namespace fs = std::filesystem;

namespace {

std::string hex32(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::string hex8(unsigned v) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02x", v);
  return buf;
}

const char* idx_type_name(unsigned t) {
  switch (t) {
    case 0x08: return "unsigned byte";
    case 0x09: return "signed byte";
    case 0x0b: return "int16";
    case 0x0c: return "int32";
    case 0x0d: return "float32";
    case 0x0e: return "float64";
    default: return "not an IDX type";
  }
}

std::string dims_string(const std::vector<std::uint32_t>& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

std::uint32_t be32(const std::uint8_t* p) {
  return std::uint32_t{p[0]} << 24 | std::uint32_t{p[1]} << 16 | std::uint32_t{p[2]} << 8 | std::uint32_t{p[3]};
}

std::vector<std::uint8_t> read_file(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw DataError(path + ": no such file");
  if (fs::is_directory(st)) throw DataError(path + ": is a directory, not an IDX file");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw DataError(path + ": cannot open: " + std::strerror(errno));
  std::uintmax_t size = fs::file_size(path, ec);
  if (ec) throw DataError(path + ": cannot determine size: " + ec.message());
  // One fread of the whole file: the loader must stay fast on the 47 MB training images.
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
  std::size_t got = size ? std::fread(bytes.data(), 1, bytes.size(), f.get()) : 0;
  if (got != bytes.size())
    throw DataError(path + ": read " + std::to_string(got) + " of " + std::to_string(size) + " bytes: " +
                    (std::ferror(f.get()) ? std::strerror(errno) : "file shrank while reading"));
  return bytes;
}

bool is_gzip(const std::vector<std::uint8_t>& b) { return b.size() >= 2 && b[0] == 0x1f && b[1] == 0x8b; }

// Inflates a whole gzip file held in memory (zlib's inflate rather than gzread so that corruption,
// truncation and trailing garbage can each be told apart and reported as such).
std::vector<std::uint8_t> gunzip(const std::string& path, const std::vector<std::uint8_t>& in) {
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw DataError(path + ": zlib inflateInit2 failed");
  std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&zs, &inflateEnd);

  // The gzip trailer's ISIZE (uncompressed size mod 2^32) sizes the output in one allocation; the +1
  // leaves room for inflate to reach end-of-stream without a spurious regrowth. Capped at deflate's
  // maximum ratio so a corrupted trailer cannot ask for gigabytes.
  std::size_t n = in.size(), hint = 0;
  if (n >= 18)  // 10-byte header + 8-byte trailer: anything shorter is caught by inflate below
    hint = std::size_t{in[n - 4]} | std::size_t{in[n - 3]} << 8 | std::size_t{in[n - 2]} << 16 |
           std::size_t{in[n - 1]} << 24;
  hint = std::min(hint, n * 1032 + 1024);
  std::vector<std::uint8_t> out(std::max<std::size_t>(hint + 1, 1 << 16));

  constexpr std::size_t kChunk = 1u << 30;  // avail_in / avail_out are 32-bit
  std::size_t in_pos = 0, produced = 0;
  for (;;) {
    if (zs.avail_in == 0 && in_pos < n) {
      std::size_t c = std::min(n - in_pos, kChunk);
      zs.next_in = const_cast<Bytef*>(in.data() + in_pos);
      zs.avail_in = static_cast<uInt>(c);
      in_pos += c;
    }
    if (produced == out.size()) out.resize(out.size() * 2);
    std::size_t room = std::min(out.size() - produced, kChunk);
    zs.next_out = out.data() + produced;
    zs.avail_out = static_cast<uInt>(room);
    int rc = inflate(&zs, Z_NO_FLUSH);
    produced += room - zs.avail_out;
    if (rc == Z_STREAM_END) {
      std::size_t rest = zs.avail_in + (n - in_pos);
      if (rest == 0) break;
      std::size_t at = n - rest;
      // gzip allows several members back to back (e.g. `cat a.gz b.gz`); anything else is junk.
      if (rest >= 2 && in[at] == 0x1f && in[at + 1] == 0x8b) {
        inflateReset(&zs);
        continue;
      }
      throw DataError(path + ": " + std::to_string(rest) + " trailing bytes after the end of the gzip stream");
    }
    if (rc == Z_BUF_ERROR && zs.avail_in == 0 && in_pos == n)
      throw DataError(path + ": gzip stream truncated: input ends before the end of the compressed data");
    if (rc != Z_OK && rc != Z_BUF_ERROR)
      throw DataError(path + ": gzip stream corrupted (zlib: " + (zs.msg ? zs.msg : zError(rc)) + ")");
  }
  out.resize(produced);
  return out;
}

IdxFile parse_idx(const std::string& path, std::vector<std::uint8_t> file) {
  if (file.size() < 4)
    throw DataError(path + ": not an IDX file: " + std::to_string(file.size()) +
                    " bytes, too short for the 4-byte magic");
  std::uint32_t magic = be32(file.data());
  if (magic >> 16 != 0)
    throw DataError(path + ": not an IDX file: magic " + hex32(magic) +
                    ", expected 0x0000TTRR (two zero bytes, element type TT, rank RR)");
  unsigned type = file[2], rank = file[3];
  if (type != 0x08)
    throw DataError(path + ": unsupported IDX element type " + hex8(type) + " (" + idx_type_name(type) +
                    ") in magic " + hex32(magic) + "; only 0x08 (unsigned byte) is supported");
  std::size_t header = 4 + 4 * std::size_t{rank};
  if (file.size() < header)
    throw DataError(path + ": truncated header: rank " + std::to_string(rank) + " needs " + std::to_string(header) +
                    " header bytes, found " + std::to_string(file.size()));

  IdxFile idx;
  idx.dims.resize(rank);
  // Saturating product: 255 dimensions of 2^32-1 must read as "too big", not wrap around.
  std::uint64_t numel = 1;
  bool huge = false;
  for (unsigned i = 0; i < rank; ++i) {
    idx.dims[i] = be32(file.data() + 4 + 4 * i);
    if (idx.dims[i] != 0 && numel > std::numeric_limits<std::uint64_t>::max() / idx.dims[i]) huge = true;
    numel *= idx.dims[i];
  }
  for (std::uint32_t d : idx.dims)
    if (d == 0) numel = 0, huge = false;
  std::uint64_t data = file.size() - header;
  if (huge || data < numel)
    throw DataError(path + ": truncated: expected " + (huge ? std::string("more than 2^64") : std::to_string(numel)) +
                    " data bytes for dims " + dims_string(idx.dims) + ", found " + std::to_string(data));
  if (data > numel)
    throw DataError(path + ": " + std::to_string(data - numel) + " trailing bytes after the " + std::to_string(numel) +
                    " data bytes of dims " + dims_string(idx.dims));
  // Dropping the header in place costs one memmove, far less than a second buffer for 47 MB.
  file.erase(file.begin(), file.begin() + static_cast<std::ptrdiff_t>(header));
  idx.bytes = std::move(file);
  return idx;
}

std::string rank_magic(std::size_t rank) { return hex32(0x0800u | static_cast<std::uint32_t>(rank)); }

// The raw file wins over the .gz when both exist: it is what fetch-mnist writes.
std::string find_idx(const std::string& dir, const std::string& name) {
  fs::path raw = fs::path(dir) / name;
  fs::path gz = fs::path(dir) / (name + ".gz");
  std::error_code ec;
  if (fs::exists(raw, ec)) return raw.string();
  if (fs::exists(gz, ec)) return gz.string();
  throw DataError(raw.string() + ": missing (neither " + name + " nor " + name + ".gz is in " + dir +
                  "); run scripts/fetch-mnist to (re)download MNIST");
}

}  // namespace

IdxFile read_idx(const std::string& path) {
  std::vector<std::uint8_t> file = read_file(path);
  if (is_gzip(file)) file = gunzip(path, file);
  return parse_idx(path, std::move(file));
}

Split load_split(const std::string& dir, const std::string& prefix) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    if (fs::exists(dir, ec)) throw DataError(dir + ": not a directory (expected the directory holding the IDX files)");
    throw DataError(dir + ": data directory not found; run scripts/fetch-mnist " + dir +
                    " to download MNIST (or set GRADGRAPH_DATA)");
  }

  const std::string img_path = find_idx(dir, prefix + "-images-idx3-ubyte");
  IdxFile img = read_idx(img_path);
  if (img.dims.size() != 3)
    throw DataError(img_path + ": images file has rank " + std::to_string(img.dims.size()) + " (magic " +
                    rank_magic(img.dims.size()) + "), expected rank 3 (magic 0x00000803)");
  static const char* const kImageDim[] = {"image count", "rows", "cols"};
  for (int i = 0; i < 3; ++i)
    if (img.dims[i] == 0)
      throw DataError(img_path + ": dimension " + std::to_string(i) + " (" + kImageDim[i] + ") is 0 in dims " +
                      dims_string(img.dims));

  const std::string lbl_path = find_idx(dir, prefix + "-labels-idx1-ubyte");
  IdxFile lbl = read_idx(lbl_path);
  if (lbl.dims.size() != 1)
    throw DataError(lbl_path + ": labels file has rank " + std::to_string(lbl.dims.size()) + " (magic " +
                    rank_magic(lbl.dims.size()) + "), expected rank 1 (magic 0x00000801)");
  if (lbl.dims[0] != img.dims[0])
    throw DataError(img_path + " holds " + std::to_string(img.dims[0]) + " images but " + lbl_path + " holds " +
                    std::to_string(lbl.dims[0]) + " labels");
  auto bad = std::find_if(lbl.bytes.begin(), lbl.bytes.end(), [](std::uint8_t v) { return v > 9; });
  if (bad != lbl.bytes.end())
    throw DataError(lbl_path + ": label at index " + std::to_string(bad - lbl.bytes.begin()) + " is " +
                    std::to_string(*bad) + "; labels must be 0..9");

  Split s;
  s.count = img.dims[0];
  s.rows = img.dims[1];
  s.cols = img.dims[2];
  s.images = std::move(img.bytes);
  s.labels = std::move(lbl.bytes);
  return s;
}

std::string default_data_dir() {
  // Empty counts as unset, matching the shell's ${VAR:-default} in scripts/fetch-mnist.
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v ? v : "";
  };
  std::string dir = env("GRADGRAPH_DATA");
  if (!dir.empty()) return dir;
  std::string cache = env("XDG_CACHE_HOME");
  if (cache.empty()) {
    std::string home = env("HOME");
    if (home.empty())
      throw DataError("default data directory: none of GRADGRAPH_DATA, XDG_CACHE_HOME or HOME is set");
    cache = home + "/.cache";
  }
  return cache + "/gradgraph/mnist";
}

}  // namespace gg::data
