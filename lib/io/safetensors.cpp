#include <gradgraph/safetensors.hpp>

#include <gradgraph/atomic_file.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace gg::io {

// Tensor bytes go to and from disk with a plain memcpy, which is only right on a little-endian
// host; a big-endian port would need a byte swap in save and load.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

using json = nlohmann::json;
// Insertion-ordered so the header we write lists tensors in data order, as people read it.
using ordered_json = nlohmann::ordered_json;

const char* const kMetadataKey = "__metadata__";

const char* st_dtype(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::i64: return "I64";
    case DType::u8: return "U8";
  }
  return "?";
}

// A name or string from the file as errors quote it: control characters escaped, so that the
// message stays one line whatever the (untrusted) header holds.
std::string quoted(const std::string& s) {
  std::string q = "\"";  // appended, not "\"" + ... + "\"": gcc 12 warns falsely on that (-Wrestrict)
  q += printable(s);
  q += '"';
  return q;
}

std::string range_text(std::uint64_t begin, std::uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}

void put_u64_le(std::ostream& os, std::uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  os.write(b, 8);
}

std::uint64_t get_u64_le(const unsigned char* b) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

std::uint64_t byte_size(const TensorView& v) {
  return static_cast<std::uint64_t>(v.numel()) * dtype_size(v.dtype);
}

}  // namespace

namespace {

// The header save_safetensors and write_safetensors write, checked (`where` starts its errors),
// padded with spaces to a multiple of 8 as the reference implementation does, so the data starts
// 8-byte aligned.
std::string make_header(const std::string& where, const std::vector<std::pair<std::string, TensorView>>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json meta = ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header[kMetadataKey] = std::move(meta);
  }

  std::set<std::string> seen;
  std::uint64_t offset = 0;
  for (const auto& [name, view] : tensors) {
    if (name.empty()) throw std::invalid_argument(where + "tensor with an empty name");
    if (name == kMetadataKey) throw std::invalid_argument(where + "\"__metadata__\" is reserved, not a tensor name");
    if (!seen.insert(name).second) throw std::invalid_argument(where + "duplicate tensor name " + quoted(name));
    if (view.shape.has_dyn())
      throw std::invalid_argument(where + "tensor " + quoted(name) + " has an open (dyn) dimension: " +
                                  to_string(view.shape));
    if (view.data == nullptr && view.numel() > 0)
      throw std::invalid_argument(where + "tensor " + quoted(name) + " has no data");
    ordered_json shape = ordered_json::array();
    for (int i = 0; i < view.shape.rank; ++i) shape.push_back(view.shape[i]);
    std::uint64_t end = offset + byte_size(view);
    header[name] = {{"dtype", st_dtype(view.dtype)}, {"shape", std::move(shape)}, {"data_offsets", {offset, end}}};
    offset = end;
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    // The only way dump() fails is a name or metadata string that is not valid UTF-8.
    throw std::invalid_argument(where + "a name or metadata entry is not valid UTF-8 (" + e.what() + ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

void write_body(std::ostream& os, const std::string& text, const std::vector<std::pair<std::string, TensorView>>& tensors) {
  put_u64_le(os, text.size());
  os.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& [name, view] : tensors) {
    if (view.numel() == 0) continue;
    if (view.is_contiguous()) {
      os.write(static_cast<const char*>(view.data), static_cast<std::streamsize>(byte_size(view)));
    } else {
      Tensor packed = Tensor::copy_of(view);  // row-major copy of the strided view
      os.write(static_cast<const char*>(packed.data()), static_cast<std::streamsize>(byte_size(packed)));
    }
  }
}

}  // namespace

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, TensorView>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  const std::string text = make_header("save_safetensors: " + path + ": ", tensors, metadata);
  write_file_atomic(path, [&](std::ostream& os) { write_body(os, text, tensors); });
}

void write_safetensors(std::ostream& os, const std::vector<std::pair<std::string, TensorView>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_body(os, make_header("write_safetensors: ", tensors, metadata), tensors);
}

const Tensor& SafetensorsFile::at(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  std::string names;
  for (const auto& [n, t] : tensors) names += (names.empty() ? "" : ", ") + n;
  throw std::runtime_error("safetensors: no tensor named " + quoted(name) + " (the file has: " +
                           (names.empty() ? std::string("no tensors") : names) + ")");
}

namespace {

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  std::uint64_t begin, end;
};

Entry parse_entry(const std::string& path, const std::string& name, const json& j) {
  const std::string where = path + ": tensor " + quoted(name) + ": ";
  if (!j.is_object()) throw std::runtime_error(where + "header entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!j.contains(key)) throw std::runtime_error(where + "header entry has no \"" + key + "\"");

  Entry e;
  e.name = name;
  const json& dt = j["dtype"];
  if (!dt.is_string()) throw std::runtime_error(where + "dtype is not a string");
  const std::string dts = dt.get<std::string>();
  if (dts == "F32")
    e.dtype = DType::f32;
  else if (dts == "F64")
    e.dtype = DType::f64;
  else if (dts == "I64")
    e.dtype = DType::i64;
  else if (dts == "U8")
    e.dtype = DType::u8;
  else
    throw std::runtime_error(where + "unsupported dtype " + quoted(dts) + " (gradgraph reads F32, F64, I64 and U8)");

  const json& sh = j["shape"];
  if (!sh.is_array()) throw std::runtime_error(where + "shape is not an array");
  if (sh.size() > static_cast<std::size_t>(kMaxRank))
    throw std::runtime_error(where + "rank " + std::to_string(sh.size()) + " exceeds the maximum of " +
                             std::to_string(kMaxRank));
  // Count bytes in unsigned 64-bit with an explicit overflow check: the header is untrusted.
  std::uint64_t bytes = dtype_size(e.dtype);
  bool overflow = false;
  std::int64_t dims[kMaxRank] = {};
  for (std::size_t i = 0; i < sh.size(); ++i) {
    if (!sh[i].is_number_unsigned()) throw std::runtime_error(where + "shape entries must be non-negative integers");
    std::uint64_t d = sh[i].get<std::uint64_t>();
    // A dimension is an int64: one past its range would turn negative (and make Shape throw).
    if (d > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      throw std::runtime_error(where + "shape entry " + std::to_string(d) + " is past 2^63 - 1");
    if (__builtin_mul_overflow(bytes, d, &bytes)) overflow = true;
    dims[i] = static_cast<std::int64_t>(d);
  }
  e.shape = Shape::of(dims, static_cast<int>(sh.size()));
  // A zero extent makes the byte count 0 whatever the others, but the others still make strides:
  // the same check as for an allocation, so that [0, 2^32, 2^32] fails as [2^32, 2^32, 0] does.
  if (!overflow) {
    try {
      (void)checked_bytes(e.shape, e.dtype);
    } catch (const std::overflow_error& x) {
      throw std::runtime_error(where + x.what());
    }
  }

  const json& off = j["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
    throw std::runtime_error(where + "data_offsets must be two non-negative integers");
  e.begin = off[0].get<std::uint64_t>();
  e.end = off[1].get<std::uint64_t>();
  if (e.end < e.begin) throw std::runtime_error(where + "data_offsets " + range_text(e.begin, e.end) + " end before they begin");
  if (overflow || bytes != e.end - e.begin)
    throw std::runtime_error(where + "shape " + to_string(e.shape) + " of " + dts + " needs " +
                             (overflow ? std::string("more than 2^64") : std::to_string(bytes)) +
                             " bytes but data_offsets " + range_text(e.begin, e.end) + " span " +
                             std::to_string(e.end - e.begin));
  return e;
}

}  // namespace

namespace {

// Where the bytes come from: a file read with seeks, or memory. read() fills dst with n bytes at
// offset `at` (within size, which the parser checks first) or throws naming `what` was being read.
struct Source {
  std::uint64_t size = 0;
  std::function<void(std::uint64_t at, void* dst, std::size_t n, const std::string& what)> read;
};

SafetensorsFile parse(const std::string& path, const Source& src) {
  if (src.size < 8)
    throw std::runtime_error(path + ": file is " + std::to_string(src.size) +
                             " bytes, too short for the 8-byte header length");

  unsigned char len_bytes[8];
  src.read(0, len_bytes, 8, "the header length");
  const std::uint64_t header_len = get_u64_le(len_bytes);
  const std::uint64_t after_len = src.size - 8;
  if (header_len > after_len)
    throw std::runtime_error(path + ": header length " + std::to_string(header_len) + " exceeds the " +
                             std::to_string(after_len) + " bytes that follow it");
  const std::uint64_t data_size = after_len - header_len;

  std::string text(header_len, '\0');
  src.read(8, text.data(), text.size(), "the JSON header");

  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) {
    // parse_error, but also out_of_range for a number past double's range (1e400).
    throw std::runtime_error(path + ": header is not valid JSON: " + e.what());
  }
  if (!header.is_object()) throw std::runtime_error(path + ": header is not a JSON object");

  SafetensorsFile out;
  std::vector<Entry> entries;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) throw std::runtime_error(path + ": __metadata__ is not a JSON object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) throw std::runtime_error(path + ": __metadata__ value of " + quoted(mk) + " is not a string");
        out.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    // save_safetensors refuses an empty name, so the loader does too: every file that loads saves.
    if (key.empty()) throw std::runtime_error(path + ": a tensor with an empty name (names must be non-empty)");
    try {
      entries.push_back(parse_entry(path, key, value));
    } catch (const json::exception& e) {
      // parse_entry checks each field's type; a library error here is still a malformed header.
      throw std::runtime_error(path + ": tensor " + quoted(key) + ": malformed header entry: " + e.what());
    }
  }

  // The data must be tiled exactly: in offset order each tensor starts where the previous one
  // ended, and the last one ends at the end of the file (as the reference implementation requires).
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  std::uint64_t cursor = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.end > data_size)
      throw std::runtime_error(path + ": tensor " + quoted(e.name) + ": data_offsets " + range_text(e.begin, e.end) +
                               " run past the " + std::to_string(data_size) + " data bytes");
    if (e.begin < cursor)
      throw std::runtime_error(path + ": tensor " + quoted(e.name) + " data " + range_text(e.begin, e.end) +
                               " overlaps tensor " + quoted(prev->name) + " " + range_text(prev->begin, prev->end));
    if (e.begin > cursor)
      throw std::runtime_error(path + ": data bytes " + range_text(cursor, e.begin) + " are not covered by any tensor");
    cursor = e.end;
    prev = &e;
  }
  if (cursor != data_size)
    throw std::runtime_error(path + ": " + std::to_string(data_size - cursor) +
                             " trailing bytes after the last tensor's data");

  const std::uint64_t data_start = 8 + header_len;
  for (const Entry& e : entries) {
    Tensor t(e.dtype, e.shape);
    if (e.end > e.begin)
      src.read(data_start + e.begin, t.data(), static_cast<std::size_t>(e.end - e.begin), "the data of tensor " + quoted(e.name));
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}


}  // namespace

SafetensorsFile load_safetensors(const std::string& path) {
  // Only regular files: a directory opens "successfully" as a stream on Linux, a FIFO blocks the
  // open until a writer comes (forever), and a device has no size.
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (fs::exists(st) && !fs::is_regular_file(st)) {
    const char* kind = fs::is_directory(st)        ? "a directory"
                       : fs::is_fifo(st)           ? "a FIFO"
                       : fs::is_character_file(st) ? "a character device"
                       : fs::is_block_file(st)     ? "a block device"
                       : fs::is_socket(st)         ? "a socket"
                                                   : "not a regular file";
    throw std::runtime_error(path + ": is " + std::string(kind) + ", not a safetensors file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  in.seekg(0, std::ios::end);
  const std::streamoff file_size = in.tellg();
  in.seekg(0, std::ios::beg);
  if (file_size < 0) throw std::runtime_error(path + ": cannot determine the file size");
  Source src{static_cast<std::uint64_t>(file_size), [&](std::uint64_t at, void* dst, std::size_t n, const std::string& what) {
               in.seekg(static_cast<std::streamoff>(at));
               in.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
               if (!in) throw std::runtime_error(path + ": read error in " + what);
             }};
  return parse(path, src);
}

SafetensorsFile parse_safetensors(const std::string& name, std::span<const std::uint8_t> bytes) {
  Source src{bytes.size(), [&](std::uint64_t at, void* dst, std::size_t n, const std::string&) {
               if (n) std::memcpy(dst, bytes.data() + at, n);
             }};
  return parse(name, src);
}

}  // namespace gg::io
