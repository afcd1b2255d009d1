// The protocol buffers wire format, for writing (lib/io/protobuf.hpp).
#include "protobuf.hpp"

#include <bit>
#include <cstring>

namespace gg::io::protobuf {

static_assert(std::endian::native == std::endian::little, "fixed32 fields are written as the host's bytes");

void put_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void put_key(std::string& out, int field, WireType type) {
  put_varint(out, (static_cast<std::uint64_t>(field) << 3) | static_cast<std::uint64_t>(type));
}

void put_int(std::string& out, int field, std::int64_t v) {
  put_key(out, field, WireType::varint);
  put_varint(out, static_cast<std::uint64_t>(v));
}

void put_float(std::string& out, int field, float v) {
  put_key(out, field, WireType::fixed32);
  char b[4];
  std::memcpy(b, &v, 4);
  out.append(b, 4);
}

void put_bytes(std::string& out, int field, std::string_view bytes) {
  put_key(out, field, WireType::length_delimited);
  put_varint(out, bytes.size());
  out.append(bytes);
}

void put_ints(std::string& out, int field, std::span<const std::int64_t> values) {
  for (std::int64_t v : values) put_int(out, field, v);
}

}  // namespace gg::io::protobuf
