// The safetensors file format (https://github.com/huggingface/safetensors), dtypes F32, F64, I64, U8:
//   8 bytes   N, the header length, unsigned little-endian
//   N bytes   JSON: {"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [..],
//             "data_offsets": [begin, end]}, ...}, padded with spaces to a multiple of 8
//   rest      the tensors' raw little-endian bytes, row-major; offsets are relative to here
// Files we write load in the Python `safetensors` package and vice versa.
#pragma once

#include <gradgraph/tensor.hpp>

#include <cstdint>
#include <iosfwd>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace gg::io {

// Writes the tensors in the given order (atomically: see atomic_file.hpp). Views may be strided;
// their elements are stored in row-major order. Throws std::invalid_argument for an empty,
// duplicate or reserved ("__metadata__") name or a shape with a dyn dimension, and
// std::runtime_error for I/O failures.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, TensorView>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// The bytes save_safetensors writes, to a stream instead of a file (errors start "write_safetensors: ").
void write_safetensors(std::ostream& os, const std::vector<std::pair<std::string, TensorView>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  std::vector<std::pair<std::string, Tensor>> tensors;  // in file (data offset) order
  std::map<std::string, std::string> metadata;
  // Throws std::runtime_error listing the names present if `name` is missing.
  const Tensor& at(const std::string& name) const;
};

// Reads and validates the whole file; every problem throws std::runtime_error "<path>: <problem>".
// What save_safetensors refuses to write (an empty tensor name) is refused here too.
SafetensorsFile load_safetensors(const std::string& path);

// The same for a file's bytes already in memory, with the same checks and errors; `name` stands for
// the path at the start of every message (fuzzers feed bytes here without files).
SafetensorsFile parse_safetensors(const std::string& name, std::span<const std::uint8_t> bytes);

}  // namespace gg::io
