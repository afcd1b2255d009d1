#include "image.hpp"

#include <gradgraph/atomic_file.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <ostream>
#include <stdexcept>

#include <cairo.h>

namespace gg::tools {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) { throw std::runtime_error(path + ": " + what); }

std::string size_text(std::int64_t w, std::int64_t h) { return std::to_string(w) + "x" + std::to_string(h); }

void check_size(const std::string& path, std::int64_t w, std::int64_t h) {
  if (w < 1 || h < 1 || w > kMaxImageSide || h > kMaxImageSide)
    fail(path, "image is " + size_text(w, h) + " pixels; width and height must each be 1.." +
                   std::to_string(kMaxImageSide));
}

// A byte of the file for a message: 'x' when printable, else its hex value (never a raw
// control character: the message stays on one line).
std::string describe(int c) {
  if (c == EOF) return "the end of the file";
  if (c > 0x20 && c < 0x7f) return std::string("'") + static_cast<char>(c) + "'";
  char buf[16];
  std::snprintf(buf, sizeof buf, "byte 0x%02x", static_cast<unsigned>(c));
  return buf;
}

// The file's bytes, read once front to back (so a pipe works as well as a file). The first
// bytes are read ahead into `head` to tell the format and peek at a PNG's size.
class Source {
 public:
  explicit Source(const std::string& path) : path_(path) {
    if (path.empty()) throw std::runtime_error("read_gray_image: empty file name");
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) fail(path, "is a directory, not an image file");
    f_.reset(std::fopen(path.c_str(), "rb"));
    if (!f_) fail(path, std::string("cannot open: ") + std::strerror(errno));
    head_.resize(kHead);
    head_.resize(read_file(head_.data(), kHead));
  }

  const std::vector<std::uint8_t>& head() const { return head_; }

  // The next byte, or EOF at the end of the file. A read error throws.
  int get() {
    if (pushed_ != kNone) {
      int c = pushed_;
      pushed_ = kNone;
      return c;
    }
    if (pos_ < head_.size()) return head_[pos_++];
    int c = std::getc(f_.get());
    if (c == EOF) check_error();
    return c;
  }
  void unget(int c) { pushed_ = c; }

  // Up to n bytes; fewer only at the end of the file.
  std::size_t read(std::uint8_t* out, std::size_t n) {
    std::size_t got = 0;
    if (pushed_ != kNone && n > 0) {
      if (pushed_ == EOF) return 0;
      out[got++] = static_cast<std::uint8_t>(pushed_);
      pushed_ = kNone;
    }
    while (got < n && pos_ < head_.size()) out[got++] = head_[pos_++];
    return got + read_file(out + got, n - got);
  }

 private:
  static constexpr std::size_t kHead = 24;  // PNG signature + IHDR's length, type, width, height
  static constexpr int kNone = -2;

  std::size_t read_file(std::uint8_t* out, std::size_t n) {
    std::size_t got = n ? std::fread(out, 1, n, f_.get()) : 0;
    if (got < n) check_error();
    return got;
  }
  void check_error() {
    if (std::ferror(f_.get())) fail(path_, std::string("read error: ") + std::strerror(errno));
  }

  struct Closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::string path_;
  std::unique_ptr<std::FILE, Closer> f_;
  std::vector<std::uint8_t> head_;
  std::size_t pos_ = 0;
  int pushed_ = kNone;
};

// ---------------------------------------------------------------------------------------------
// PGM (Netpbm): "P5" or "P2", width, height, maxval as decimal numbers separated by whitespace,
// '#' starting a comment that runs to the end of the line; then the raster.

bool is_space(int c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
bool is_digit(int c) { return c >= '0' && c <= '9'; }

// The next byte with a comment read as the newline that ends it (Netpbm's pm_getc).
int get_skipping_comment(Source& src) {
  int c = src.get();
  if (c == '#') {
    do c = src.get();
    while (c != '\n' && c != '\r' && c != EOF);
  }
  return c;
}

struct Number {
  std::int64_t value = 0;  // saturates at kBig: anything that large is rejected anyway
  std::string text;        // as written, for messages (shortened if absurdly long)
  static constexpr std::int64_t kBig = 1'000'000'000'000;
};

// Skips whitespace and comments, then reads an unsigned decimal number. Returns false (with
// the offending byte in `bad`) if something else comes first.
bool next_number(Source& src, Number& n, int& bad) {
  int c;
  do c = get_skipping_comment(src);
  while (is_space(c));
  if (!is_digit(c)) {
    bad = c;
    return false;
  }
  n = {};
  for (; is_digit(c); c = src.get()) {
    n.value = std::min(n.value * 10 + (c - '0'), Number::kBig);
    if (n.text.size() < 24) n.text += static_cast<char>(c);
    else if (n.text.size() == 24) n.text += "...";
  }
  src.unget(c);
  return true;
}

Number header_number(Source& src, const std::string& path, const char* what) {
  Number n;
  int bad = 0;
  if (!next_number(src, n, bad)) fail(path, std::string("bad PGM header: expected the ") + what + ", found " + describe(bad));
  return n;
}

std::uint8_t scaled(std::int64_t v, std::int64_t maxval) {
  return static_cast<std::uint8_t>(maxval == 255 ? v : (v * 255 + maxval / 2) / maxval);
}

std::string at(std::int64_t i, std::int64_t width) {
  return "row " + std::to_string(i / width) + ", column " + std::to_string(i % width);
}

GrayImage read_pgm(Source& src, const std::string& path, bool binary) {
  src.get();  // the magic number, already checked
  src.get();
  Number w = header_number(src, path, "width");
  Number h = header_number(src, path, "height");
  check_size(path, w.value, h.value);
  Number maxval = header_number(src, path, "maxval");
  if (maxval.value < 1 || maxval.value > 255)
    fail(path, "PGM maxval " + maxval.text + " is not supported (1..255: 8-bit gray; 16-bit PGM is not read)");
  // Exactly one whitespace byte separates the header from a binary raster.
  int sep = get_skipping_comment(src);
  if (sep != EOF && !is_space(sep)) fail(path, "bad PGM header: expected whitespace after the maxval, found " + describe(sep));

  GrayImage img;
  img.width = w.value;
  img.height = h.value;
  const std::int64_t n = img.width * img.height;
  img.pixels.resize(static_cast<std::size_t>(n));
  const std::string needs = "a " + size_text(img.width, img.height) + " image needs " + std::to_string(n);
  if (binary) {
    if (sep == EOF) fail(path, "truncated PGM data: " + needs + " bytes of pixels, the file has none");
    std::size_t got = src.read(img.pixels.data(), img.pixels.size());
    if (got < img.pixels.size())
      fail(path, "truncated PGM data: " + needs + " bytes of pixels, the file has only " + std::to_string(got));
    for (std::int64_t i = 0; i < n; ++i) {
      std::uint8_t& p = img.pixels[static_cast<std::size_t>(i)];
      if (p > maxval.value)
        fail(path, "PGM pixel value " + std::to_string(p) + " at " + at(i, img.width) + " exceeds the maxval " + maxval.text);
      p = scaled(p, maxval.value);
    }
  } else {
    if (sep != EOF) src.unget(sep);
    for (std::int64_t i = 0; i < n; ++i) {
      Number v;
      int bad = 0;
      if (!next_number(src, v, bad)) {
        if (bad == EOF)
          fail(path, "truncated PGM data: " + needs + " pixel values, the file ends after " + std::to_string(i));
        fail(path, "bad PGM pixel value at " + at(i, img.width) + ": expected a number, found " + describe(bad));
      }
      if (v.value > maxval.value)
        fail(path, "PGM pixel value " + v.text + " at " + at(i, img.width) + " exceeds the maxval " + maxval.text);
      img.pixels[static_cast<std::size_t>(i)] = scaled(v.value, maxval.value);
    }
  }
  return img;
}

// ---------------------------------------------------------------------------------------------
// PNG, through cairo.

struct SurfaceDeleter {
  void operator()(cairo_surface_t* s) const { cairo_surface_destroy(s); }
};
using Surface = std::unique_ptr<cairo_surface_t, SurfaceDeleter>;
struct ContextDeleter {
  void operator()(cairo_t* c) const { cairo_destroy(c); }
};

std::uint32_t be32(const std::uint8_t* p) {
  return std::uint32_t{p[0]} << 24 | std::uint32_t{p[1]} << 16 | std::uint32_t{p[2]} << 8 | std::uint32_t{p[3]};
}

// 0.299 R + 0.587 G + 0.114 B, rounded; exact for gray (R = G = B).
std::uint8_t luminance(std::uint32_t r, std::uint32_t g, std::uint32_t b) {
  return static_cast<std::uint8_t>((299 * r + 587 * g + 114 * b + 500) / 1000);
}

// Gray pixels of a cairo image surface in any format, composited over black. RGB24 and ARGB32
// are read directly: ARGB32 is premultiplied, and a premultiplied colour *is* that colour
// composited over black. Other formats are first painted onto a black RGB24 surface; alpha-only
// ones (A8, A1) as a white mask, so their alpha becomes the intensity.
GrayImage gray_from_surface(cairo_surface_t* s) {
  cairo_format_t format = cairo_image_surface_get_format(s);
  const int w = cairo_image_surface_get_width(s), h = cairo_image_surface_get_height(s);
  Surface converted;
  if (format != CAIRO_FORMAT_RGB24 && format != CAIRO_FORMAT_ARGB32) {
    converted.reset(cairo_image_surface_create(CAIRO_FORMAT_RGB24, w, h));
    std::unique_ptr<cairo_t, ContextDeleter> cr(cairo_create(converted.get()));
    cairo_set_source_rgb(cr.get(), 0, 0, 0);
    cairo_paint(cr.get());
    if (cairo_surface_get_content(s) == CAIRO_CONTENT_ALPHA) {
      cairo_set_source_rgb(cr.get(), 1, 1, 1);
      cairo_mask_surface(cr.get(), s, 0, 0);
    } else {
      cairo_set_source_surface(cr.get(), s, 0, 0);
      cairo_paint(cr.get());
    }
    s = converted.get();
  }
  cairo_surface_flush(s);
  const unsigned char* data = cairo_image_surface_get_data(s);
  const int stride = cairo_image_surface_get_stride(s);
  GrayImage img;
  img.width = w;
  img.height = h;
  img.pixels.resize(static_cast<std::size_t>(w) * static_cast<std::size_t>(h));
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      std::uint32_t p;  // native-endian 0xAARRGGBB (RGB24: 0xXXRRGGBB)
      std::memcpy(&p, data + static_cast<std::ptrdiff_t>(y) * stride + 4 * x, 4);
      img.pixels[static_cast<std::size_t>(y) * static_cast<std::size_t>(w) + static_cast<std::size_t>(x)] =
          luminance(p >> 16 & 0xff, p >> 8 & 0xff, p & 0xff);
    }
  return img;
}

struct PngReader {
  Source* src;
  bool ended_early = false;
  std::string error;  // a read error from the Source (exceptions must not cross cairo)
};

cairo_status_t read_png_bytes(void* closure, unsigned char* data, unsigned int length) {
  auto* r = static_cast<PngReader*>(closure);
  try {
    if (r->src->read(data, length) < length) {
      r->ended_early = true;
      return CAIRO_STATUS_READ_ERROR;
    }
  } catch (const std::exception& e) {
    r->error = e.what();
    return CAIRO_STATUS_READ_ERROR;
  }
  return CAIRO_STATUS_SUCCESS;
}

GrayImage read_png(Source& src, const std::string& path) {
  // Reject a huge image from its IHDR before cairo allocates it (a 32767x32767 PNG is a few KB
  // of file and 4 GB of surface). A missing IHDR is left to cairo to report.
  const auto& head = src.head();
  if (head.size() >= 24 && std::memcmp(head.data() + 12, "IHDR", 4) == 0)
    check_size(path, be32(head.data() + 16), be32(head.data() + 20));

  PngReader reader{&src, false, {}};
  Surface surface(cairo_image_surface_create_from_png_stream(read_png_bytes, &reader));
  if (!reader.error.empty()) throw std::runtime_error(reader.error);
  cairo_status_t st = cairo_surface_status(surface.get());
  if (st != CAIRO_STATUS_SUCCESS) {
    std::string why = cairo_status_to_string(st);
    if (reader.ended_early) why += " (the file ends early)";
    // cairo (1.16) turns every libpng error, a bad checksum or corrupt data, into NO_MEMORY.
    if (st == CAIRO_STATUS_NO_MEMORY) why += " (cairo's report for any libpng decoding error: the file is likely damaged)";
    fail(path, "cannot decode PNG: " + why);
  }
  check_size(path, cairo_image_surface_get_width(surface.get()), cairo_image_surface_get_height(surface.get()));
  return gray_from_surface(surface.get());
}

// "starts with 47 49 46 38 39 61 01 00 "GIF89a.."", plus a hint for the other Netpbm formats.
std::string not_an_image(const std::vector<std::uint8_t>& head) {
  if (head.empty()) return "not a PGM or PNG image (the file is empty)";
  std::string hex, text;
  for (std::size_t i = 0; i < std::min<std::size_t>(head.size(), 8); ++i) {
    char buf[4];
    std::snprintf(buf, sizeof buf, "%02x", head[i]);
    if (i) hex += ' ';
    hex += buf;
    text += head[i] >= 0x20 && head[i] < 0x7f ? static_cast<char>(head[i]) : '.';
  }
  std::string msg = "not a PGM or PNG image (starts with " + hex + " \"" + text + "\")";
  if (head.size() >= 2 && head[0] == 'P') {
    switch (head[1]) {
      case '1':
      case '4': msg += "; it looks like a PBM (bitmap): convert it to PGM or PNG"; break;
      case '3':
      case '6': msg += "; it looks like a PPM (colour): convert it to PGM or PNG"; break;
      case '7': msg += "; it looks like a PAM: convert it to PGM or PNG"; break;
      default: break;
    }
  }
  return msg;
}

}  // namespace

GrayImage read_gray_image(const std::string& path) {
  Source src(path);
  const auto& head = src.head();
  if (head.size() >= 2 && head[0] == 'P' && (head[1] == '5' || head[1] == '2')) return read_pgm(src, path, head[1] == '5');
  if (head.size() >= 4 && head[0] == 0x89 && head[1] == 'P' && head[2] == 'N' && head[3] == 'G') return read_png(src, path);
  fail(path, not_an_image(head));
}

std::vector<std::uint8_t> require_28x28(const GrayImage& img, const std::string& path) {
  const bool consistent = img.width >= 0 && img.height >= 0 &&
                          (img.width == 0 || img.height <= std::numeric_limits<std::int64_t>::max() / img.width) &&
                          img.pixels.size() == static_cast<std::size_t>(img.width * img.height);
  if (!consistent)
    throw std::invalid_argument("require_28x28: " + path + ": image is " + size_text(img.width, img.height) +
                                " but holds " + std::to_string(img.pixels.size()) + " pixels");
  if (img.width != 28 || img.height != 28)
    fail(path, "image is " + size_text(img.width, img.height) +
                   "; mnist-predict takes 28x28 grayscale images (MNIST's size); resize it first");
  return img.pixels;
}

void write_pgm(const std::string& path, const GrayImage& img) {
  const std::string where = "write_pgm: " + path + ": ";
  if (img.width < 1 || img.height < 1 || img.width > kMaxImageSide || img.height > kMaxImageSide)
    throw std::invalid_argument(where + "image is " + size_text(img.width, img.height) +
                                "; width and height must each be 1.." + std::to_string(kMaxImageSide));
  if (img.pixels.size() != static_cast<std::size_t>(img.width * img.height))
    throw std::invalid_argument(where + "image is " + size_text(img.width, img.height) + " but holds " +
                                std::to_string(img.pixels.size()) + " pixels");
  io::write_file_atomic(path, [&](std::ostream& os) {
    os << "P5\n" << img.width << ' ' << img.height << "\n255\n";
    os.write(reinterpret_cast<const char*>(img.pixels.data()), static_cast<std::streamsize>(img.pixels.size()));
  });
}

}  // namespace gg::tools
