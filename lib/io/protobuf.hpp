// Internal: the protocol buffers wire format, for writing (ONNX models: lib/io/onnx.cpp).
//
// A message is its fields one after the other, each a key then a value. The key is the varint
// (field number << 3 | wire type); the value is a varint (wire type 0: integers, enums, bools),
// 4 little-endian bytes (type 5: float), or a varint length and that many bytes (type 2: strings,
// bytes, nested messages and packed repeated numbers). A varint is 7 bits per byte, least
// significant group first, the high bit set on every byte but the last; a negative int32/int64
// is its 64-bit two's complement, so it always takes 10 bytes. Writing needs nothing more, and a
// few dozen lines spare the library a dependency on libprotobuf and generated code.
//
// Messages are built inside out: a nested message is encoded into its own string first, then
// appended as a length-delimited field of its parent.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace gg::io::protobuf {

enum class WireType : std::uint8_t { varint = 0, fixed64 = 1, length_delimited = 2, fixed32 = 5 };

// The raw pieces.
void put_varint(std::string& out, std::uint64_t v);
void put_key(std::string& out, int field, WireType type);

// Fields. Integers of every varint type (int32, int64, enums, bools): negative values are
// written as their 64-bit two's complement, as protobuf does for int32 and int64.
void put_int(std::string& out, int field, std::int64_t v);
void put_float(std::string& out, int field, float v);
// Strings, bytes and encoded messages.
void put_bytes(std::string& out, int field, std::string_view bytes);
// A repeated int64 field, one key and varint per value: how proto2 writes a repeated field not
// marked packed (ONNX's dims and ints), which every parser reads.
void put_ints(std::string& out, int field, std::span<const std::int64_t> values);

}  // namespace gg::io::protobuf
