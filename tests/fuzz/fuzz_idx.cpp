// libFuzzer harness for the IDX reader (gg::data::parse_idx_bytes, what read_idx runs on a file's
// bytes). Each input is read twice:
//   1. as it is: raw IDX, or gzip when it starts with 1f 8b (gzip is detected by content), so the
//      inflater sees hostile gzip framing and deflate data;
//   2. gzipped first (unless it already is gzip): a valid gzip stream around hostile IDX content,
//      so the streaming path's header checks and size limits see every IDX case.
// The only documented error is gg::data::DataError; anything else (another exception, bad_alloc,
// a sanitizer report) is a finding. Both reads must agree: the same dims and bytes, or both refused.
// A result must hold exactly product(dims) bytes.
#include "fuzz.hpp"

#include <gradgraph/idx.hpp>

#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {

using Bytes = std::vector<std::uint8_t>;

std::optional<gg::data::IdxFile> read(const Bytes& bytes) {
  try {
    gg::data::IdxFile f = gg::data::parse_idx_bytes("<fuzz>", bytes);
    std::uint64_t numel = 1;
    for (std::uint32_t d : f.dims) numel *= d;  // cannot wrap: the bytes are here
    if (f.bytes.size() != numel) gg::fuzz::finding("parse_idx_bytes returned bytes that are not product(dims)");
    return f;
  } catch (const gg::data::DataError& e) {
    if (std::strchr(e.what(), '\n')) gg::fuzz::finding("a DataError message of more than one line", e.what());
    return std::nullopt;
  } catch (const std::exception& e) {
    gg::fuzz::unexpected("parse_idx_bytes", e);
  }
}

Bytes gzip(const std::uint8_t* data, std::size_t size) {
  z_stream zs{};
  if (deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    gg::fuzz::finding("deflateInit2 failed");
  Bytes out(deflateBound(&zs, static_cast<uLong>(size)));
  zs.next_in = const_cast<Bytef*>(data);
  zs.avail_in = static_cast<uInt>(size);
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  if (deflate(&zs, Z_FINISH) != Z_STREAM_END) gg::fuzz::finding("deflate did not finish within deflateBound");
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

}  // namespace

extern "C" int GG_FUZZ_ENTRY(const std::uint8_t* data, std::size_t size) {
  const Bytes as_is(data, data + size);
  std::optional<gg::data::IdxFile> a = read(as_is);
  if (size >= 2 && data[0] == 0x1f && data[1] == 0x8b) return 0;
  std::optional<gg::data::IdxFile> b = read(gzip(data, size));
  if (a.has_value() != b.has_value()) gg::fuzz::finding("the raw and the gzipped reads disagree on success");
  if (a && (a->dims != b->dims || a->bytes != b->bytes))
    gg::fuzz::finding("the raw and the gzipped reads return different dims or bytes");
  return 0;
}
