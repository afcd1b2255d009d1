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
#include <optional>

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

// What an IDX header says: the dims, its own length and the data length it announces.
struct Header {
  std::vector<std::uint32_t> dims;
  std::size_t length = 0;  // 4 + 4 * rank
  std::uint64_t numel = 0;  // product(dims), valid unless huge
  bool huge = false;       // product(dims) > 2^64 - 1
};

// Bytes needed to parse the header, given the first n bytes: 4 for the magic, then 4 per dim.
std::size_t header_need(const std::uint8_t* p, std::size_t n) { return n < 4 ? 4 : 4 + 4 * std::size_t{p[3]}; }

// Parses the header from the first n bytes at p, where n is at least header_need(p, n) or else the
// whole content's size (so "too short" and "truncated header" report the real size).
Header parse_header(const std::string& path, const std::uint8_t* p, std::size_t n) {
  if (n < 4)
    throw DataError(path + ": not an IDX file: " + std::to_string(n) + " bytes, too short for the 4-byte magic");
  std::uint32_t magic = be32(p);
  if (magic >> 16 != 0)
    throw DataError(path + ": not an IDX file: magic " + hex32(magic) +
                    ", expected 0x0000TTRR (two zero bytes, element type TT, rank RR)");
  unsigned type = p[2], rank = p[3];
  if (type != 0x08)
    throw DataError(path + ": unsupported IDX element type " + hex8(type) + " (" + idx_type_name(type) +
                    ") in magic " + hex32(magic) + "; only 0x08 (unsigned byte) is supported");
  Header h;
  h.length = 4 + 4 * std::size_t{rank};
  if (n < h.length)
    throw DataError(path + ": truncated header: rank " + std::to_string(rank) + " needs " + std::to_string(h.length) +
                    " header bytes, found " + std::to_string(n));
  h.dims.resize(rank);
  // Saturating product: 255 dimensions of 2^32-1 must read as "too big", not wrap around.
  h.numel = 1;
  for (unsigned i = 0; i < rank; ++i) {
    h.dims[i] = be32(p + 4 + 4 * i);
    if (h.dims[i] != 0 && h.numel > std::numeric_limits<std::uint64_t>::max() / h.dims[i]) h.huge = true;
    h.numel *= h.dims[i];
  }
  for (std::uint32_t d : h.dims)
    if (d == 0) h.numel = 0, h.huge = false;
  return h;
}

// Throws unless `data` (the bytes after the header) is exactly what the header announces.
void check_data_size(const std::string& path, const Header& h, std::uint64_t data) {
  if (h.huge || data < h.numel)
    throw DataError(path + ": truncated: expected " + (h.huge ? std::string("more than 2^64") : std::to_string(h.numel)) +
                    " data bytes for dims " + dims_string(h.dims) + ", found " + std::to_string(data));
  if (data > h.numel)
    throw DataError(path + ": " + std::to_string(data - h.numel) + " trailing bytes after the " +
                    std::to_string(h.numel) + " data bytes of dims " + dims_string(h.dims));
}

// The file's bytes, with one fread of the whole file: the loader must stay fast on the 47 MB
// training images. A raw IDX file's header is checked against the file's size before its data is
// read, so a 4 GB file whose header announces 10 bytes is refused after reading its header alone.
std::vector<std::uint8_t> read_file(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw DataError(path + ": no such file");
  if (fs::is_directory(st)) throw DataError(path + ": is a directory, not an IDX file");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw DataError(path + ": cannot open: " + std::strerror(errno));
  std::uintmax_t size = fs::file_size(path, ec);
  if (ec) throw DataError(path + ": cannot determine size: " + ec.message());
  auto read = [&](std::vector<std::uint8_t>& bytes, std::size_t from) {
    std::size_t got = from + std::fread(bytes.data() + from, 1, bytes.size() - from, f.get());
    if (got != bytes.size())
      throw DataError(path + ": read " + std::to_string(got) + " of " + std::to_string(size) + " bytes: " +
                      (std::ferror(f.get()) ? std::strerror(errno) : "file shrank while reading"));
  };
  // The longest IDX header (rank 255) is 1024 bytes.
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(std::min<std::uintmax_t>(size, 1024)));
  if (bytes.empty()) return bytes;
  read(bytes, 0);
  if (!(bytes.size() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b)) {
    Header h = parse_header(path, bytes.data(), bytes.size());
    check_data_size(path, h, size - h.length);
  }
  std::size_t head = bytes.size();
  bytes.resize(static_cast<std::size_t>(size));
  read(bytes, head);
  return bytes;
}

bool is_gzip(const std::vector<std::uint8_t>& b) { return b.size() >= 2 && b[0] == 0x1f && b[1] == 0x8b; }

// Inflates an IDX file held in memory as gzip and parses it, never holding more than the smaller of
// what its header announces and what the stream really holds, plus one chunk: a 2 MB gzip of a few
// announced bytes that inflates to 2 GiB is refused after its first chunk. zlib's inflate rather
// than gzread, so that corruption, truncation and trailing garbage are each told apart and reported
// as such.
IdxFile gunzip_idx(const std::string& path, const std::vector<std::uint8_t>& in) {
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw DataError(path + ": zlib inflateInit2 failed");
  std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&zs, &inflateEnd);

  // The buffer grows as data arrives (doubling, from kChunk), never beyond the announced size:
  // nothing in a gzip (not the header's dims, not the trailer's ISIZE) is trusted to size it.
  constexpr std::size_t kChunk = 1u << 16;
  std::vector<std::uint8_t> out;
  std::uint8_t spill[kChunk];  // where output past the announced size lands, to be counted
  std::size_t limit = std::numeric_limits<std::size_t>::max();  // header + data, once known
  std::optional<Header> h;
  const std::size_t n = in.size();
  std::size_t in_pos = 0, produced = 0;
  bool ended = false;  // the last member has ended: `produced` is the whole content
  auto need_header = [&] { return !h && produced >= header_need(out.data(), produced); };
  auto overrun = [&] {
    throw DataError(path + ": trailing bytes after the " + std::to_string(h->numel) + " data bytes of dims " +
                    dims_string(h->dims) + ": the gzip stream inflates to more than the " + std::to_string(limit) +
                    " bytes its IDX header announces");
  };
  while (!ended) {
    if (zs.avail_in == 0 && in_pos < n) {
      std::size_t c = std::min<std::size_t>(n - in_pos, 1u << 30);  // avail_in is 32-bit
      zs.next_in = const_cast<Bytef*>(in.data() + in_pos);
      zs.avail_in = static_cast<uInt>(c);
      in_pos += c;
    }
    bool past = produced >= limit;
    if (!past && produced == out.size()) out.resize(std::min(limit, std::max(out.size() * 2, kChunk)));
    std::size_t room = past ? kChunk : std::min<std::size_t>(std::min(out.size(), limit) - produced, 1u << 30);
    zs.next_out = past ? spill : out.data() + produced;
    zs.avail_out = static_cast<uInt>(room);
    int rc = inflate(&zs, Z_NO_FLUSH);
    std::size_t got = room - zs.avail_out;
    if (past && got > 0) overrun();
    produced += got;
    if (rc == Z_STREAM_END) {
      std::size_t rest = zs.avail_in + (n - in_pos);
      if (rest == 0) {
        ended = true;
      } else {
        std::size_t at = n - rest;
        // gzip allows several members back to back (e.g. `cat a.gz b.gz`); anything else is junk.
        if (!(rest >= 2 && in[at] == 0x1f && in[at + 1] == 0x8b))
          throw DataError(path + ": " + std::to_string(rest) + " trailing bytes after the end of the gzip stream");
        inflateReset(&zs);
      }
    } else if (rc == Z_BUF_ERROR && zs.avail_in == 0 && in_pos == n) {
      throw DataError(path + ": gzip stream truncated: input ends before the end of the compressed data");
    } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
      throw DataError(path + ": gzip stream corrupted (zlib: " + (zs.msg ? zs.msg : zError(rc)) + ")");
    }
    // The header is checked as soon as it has arrived (or the content has ended short of it).
    if (need_header() || (!h && ended)) {
      h = parse_header(path, out.data(), produced);
      if (!h->huge && h->numel <= std::numeric_limits<std::size_t>::max() - h->length)
        limit = h->length + static_cast<std::size_t>(h->numel);
      if (produced > limit) overrun();  // the first chunk already holds more than announced
    }
  }
  check_data_size(path, *h, produced - h->length);
  out.resize(produced);
  out.erase(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(h->length));
  return IdxFile{std::move(h->dims), std::move(out)};
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

IdxFile parse_idx_bytes(const std::string& name, std::vector<std::uint8_t> bytes) {
  if (is_gzip(bytes)) return gunzip_idx(name, bytes);
  Header h = parse_header(name, bytes.data(), bytes.size());
  check_data_size(name, h, bytes.size() - h.length);
  // Dropping the header in place costs one memmove, far less than a second buffer for 47 MB.
  bytes.erase(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(h.length));
  return IdxFile{std::move(h.dims), std::move(bytes)};
}

IdxFile read_idx(const std::string& path) { return parse_idx_bytes(path, read_file(path)); }

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
