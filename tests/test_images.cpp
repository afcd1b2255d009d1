// Grayscale image files (tools/common/image.hpp) and the confusion-matrix and image-grid figures
// (tools/common/plot.hpp) for mnist-eval and mnist-predict.
#include "support.hpp"

#include "../tools/common/image.hpp"
#include "../tools/common/plot.hpp"

#include <catch2/catch.hpp>
#include <cairo.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace {

using ScratchDir = gg::test::TempDir;
using gg::test::message_of;
using gg::test::slurp;
using gg::tools::GrayImage;
using gg::tools::read_gray_image;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// The message of the runtime_error that reading `path` throws.
std::string read_error(const std::string& path) {
  return message_of<std::runtime_error>([&] { read_gray_image(path); });
}

// Every reader error is one line that starts with the path.
#define CHECK_ONE_LINE_NAMING(msg, path)                  \
  do {                                                    \
    CHECK_THAT(msg, Catch::StartsWith((path) + ": "));    \
    CHECK((msg).find('\n') == std::string::npos);         \
  } while (0)

struct Rgb {
  int r, g, b;
  bool operator==(const Rgb&) const = default;
};

// A PNG read back with cairo (RGB24 or ARGB32; figures are opaque).
struct Png {
  cairo_status_t status = CAIRO_STATUS_NULL_POINTER;
  int width = 0, height = 0, stride = 0;
  std::vector<unsigned char> data;
  explicit Png(const std::string& path) {
    cairo_surface_t* s = cairo_image_surface_create_from_png(path.c_str());
    status = cairo_surface_status(s);
    if (status == CAIRO_STATUS_SUCCESS) {
      cairo_surface_flush(s);
      width = cairo_image_surface_get_width(s);
      height = cairo_image_surface_get_height(s);
      stride = cairo_image_surface_get_stride(s);
      const unsigned char* p = cairo_image_surface_get_data(s);
      data.assign(p, p + static_cast<std::ptrdiff_t>(stride) * height);
    }
    cairo_surface_destroy(s);
  }
  Rgb at(int x, int y) const {
    std::uint32_t p;
    std::memcpy(&p, data.data() + static_cast<std::ptrdiff_t>(y) * stride + 4 * x, 4);
    return {static_cast<int>(p >> 16 & 0xff), static_cast<int>(p >> 8 & 0xff), static_cast<int>(p & 0xff)};
  }
  long count(const std::function<bool(Rgb)>& pred, int x0 = 0, int y0 = 0, int x1 = -1, int y1 = -1) const {
    if (x1 < 0) x1 = width;
    if (y1 < 0) y1 = height;
    long n = 0;
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) n += pred(at(x, y));
    return n;
  }
};

bool near(Rgb a, Rgb b) { return std::abs(a.r - b.r) <= 1 && std::abs(a.g - b.g) <= 1 && std::abs(a.b - b.b) <= 1; }

bool has_png_signature(const std::string& path) { return slurp(path).substr(0, 8) == "\x89PNG\r\n\x1a\n"; }

// A cairo image surface with pixels set one by one (native-endian 0xAARRGGBB), saved as PNG.
void save_png(const std::string& path, cairo_format_t format, int w, int h, const std::vector<std::uint32_t>& argb) {
  cairo_surface_t* s = cairo_image_surface_create(format, w, h);
  cairo_surface_flush(s);
  unsigned char* data = cairo_image_surface_get_data(s);
  const int stride = cairo_image_surface_get_stride(s);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const std::uint32_t v = argb[static_cast<std::size_t>(y * w + x)];
      if (format == CAIRO_FORMAT_A8)
        data[y * stride + x] = static_cast<unsigned char>(v);
      else
        std::memcpy(data + y * stride + 4 * x, &v, 4);
    }
  cairo_surface_mark_dirty(s);
  REQUIRE(cairo_surface_write_to_png(s, path.c_str()) == CAIRO_STATUS_SUCCESS);
  cairo_surface_destroy(s);
}

// A valid small PNG's bytes (to cut short or damage).
std::string small_png(const ScratchDir& d) {
  const std::string path = d.file("small.png");
  std::vector<std::uint32_t> px(64);
  for (std::size_t i = 0; i < px.size(); ++i) px[i] = static_cast<std::uint32_t>(i * 37 % 256) * 0x010101u;
  save_png(path, CAIRO_FORMAT_RGB24, 8, 8, px);
  return slurp(path);
}

std::string be32(std::uint32_t v) {
  std::string s;
  for (int k = 24; k >= 0; k -= 8) s += static_cast<char>(v >> k & 0xff);
  return s;
}

// Runs f with writes limited to 4 KB, so that a write() past it fails with EFBIG (a stand-in
// for a full disk); returns the runtime_error message f throws.
std::string message_with_small_file_limit(const std::function<void()>& f) {
  struct rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
  std::string msg;
  try {
    f();
  } catch (const std::runtime_error& e) {
    msg = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);
  return msg;
}

GrayImage pattern(std::int64_t w, std::int64_t h) {
  GrayImage img;
  img.width = w;
  img.height = h;
  for (std::int64_t i = 0; i < w * h; ++i) img.pixels.push_back(static_cast<std::uint8_t>((i * 97 + 13) % 256));
  return img;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Reading and writing images.

TEST_CASE("write_pgm then read_gray_image gives back the same size and pixels", "[image]") {
  ScratchDir d;
  const std::string path = d.file("digit.pgm");
  GrayImage img = pattern(5, 3);
  img.pixels[0] = 0;
  img.pixels[1] = 255;
  gg::tools::write_pgm(path, img);
  GrayImage back = read_gray_image(path);
  CHECK(back.width == 5);
  CHECK(back.height == 3);
  CHECK(back.pixels == img.pixels);
  CHECK(d.entries() == 1);  // no temporary file left behind
}

TEST_CASE("write_pgm writes a binary P5 file with maxval 255", "[image]") {
  ScratchDir d;
  const std::string path = d.file("out.pgm");
  gg::tools::write_pgm(path, GrayImage{3, 2, {0, 1, 2, 253, 254, 255}});
  CHECK(slurp(path) == std::string("P5\n3 2\n255\n\x00\x01\x02\xfd\xfe\xff", 17));
}

TEST_CASE("a plain P2 PGM with comments and maxval 15 is scaled to 0..255", "[image]") {
  ScratchDir d;
  const std::string path = d.file("plain.pgm");
  write_bytes(path, "P2\n# drawn by hand\n3 2 # width height\n# maxval next\n15\n0 1 7\n# comment in the raster\n8 14 15\n");
  GrayImage img = read_gray_image(path);
  CHECK(img.width == 3);
  CHECK(img.height == 2);
  CHECK(img.pixels == std::vector<std::uint8_t>{0, 17, 119, 136, 238, 255});  // v * 255 / 15
}

TEST_CASE("a binary P5 PGM with maxval 100 is scaled with rounding", "[image]") {
  ScratchDir d;
  const std::string path = d.file("binary.pgm");
  write_bytes(path, std::string("P5 # comment\n4 1\n100\n", 21) + std::string("\x00\x01\x32\x64", 4));
  GrayImage img = read_gray_image(path);
  // 1 * 2.55 = 2.55 -> 3; 50 * 2.55 = 127.5 -> 128; 100 -> 255.
  CHECK(img.pixels == std::vector<std::uint8_t>{0, 3, 128, 255});
}

TEST_CASE("an RGB24 PNG reads back as luminance 0.299 R + 0.587 G + 0.114 B", "[image]") {
  ScratchDir d;
  const std::string path = d.file("colour.png");
  // Row 0: black, white, gray 128, gray 1; row 1: red, green, blue, (10, 200, 30).
  save_png(path, CAIRO_FORMAT_RGB24, 4, 2,
           {0x000000, 0xffffff, 0x808080, 0x010101, 0xff0000, 0x00ff00, 0x0000ff, 0x0ac81e});
  GrayImage img = read_gray_image(path);
  CHECK(img.width == 4);
  CHECK(img.height == 2);
  // 0.299*255 = 76.2, 0.587*255 = 149.7, 0.114*255 = 29.1, 2.99 + 117.4 + 3.42 = 123.8.
  CHECK(img.pixels == std::vector<std::uint8_t>{0, 255, 128, 1, 76, 150, 29, 124});
}

TEST_CASE("an ARGB32 PNG with transparency is composited over black", "[image]") {
  ScratchDir d;
  const std::string path = d.file("alpha.png");
  // Premultiplied: opaque white, half-transparent white, transparent, half-transparent red.
  save_png(path, CAIRO_FORMAT_ARGB32, 4, 1, {0xffffffff, 0x80808080, 0x00000000, 0x80800000});
  GrayImage img = read_gray_image(path);
  CHECK(img.pixels == std::vector<std::uint8_t>{255, 128, 0, 38});  // 0.299 * 128 = 38.3
}

TEST_CASE("an A8 surface saved as PNG reads back with its values as the gray levels", "[image]") {
  ScratchDir d;
  const std::string path = d.file("mask.png");
  save_png(path, CAIRO_FORMAT_A8, 3, 2, {0, 64, 200, 255, 1, 128});
  GrayImage img = read_gray_image(path);
  CHECK(img.width == 3);
  CHECK(img.height == 2);
  CHECK(img.pixels == std::vector<std::uint8_t>{0, 64, 200, 255, 1, 128});
}

TEST_CASE("the image format is told by the content, not the file name", "[image]") {
  ScratchDir d;
  const std::string png_named_pgm = d.file("really-a-png.pgm"), pgm_named_png = d.file("really-a-pgm.png");
  save_png(png_named_pgm, CAIRO_FORMAT_RGB24, 2, 1, {0x404040, 0xc0c0c0});
  gg::tools::write_pgm(pgm_named_png, GrayImage{2, 1, {7, 9}});
  CHECK(read_gray_image(png_named_pgm).pixels == std::vector<std::uint8_t>{0x40, 0xc0});
  CHECK(read_gray_image(pgm_named_png).pixels == std::vector<std::uint8_t>{7, 9});
}

TEST_CASE("reading a missing image file names the path and the reason", "[image]") {
  ScratchDir d;
  const std::string path = d.file("nope.png");
  const std::string msg = read_error(path);
  CHECK_ONE_LINE_NAMING(msg, path);
  CHECK(msg == path + ": cannot open: No such file or directory");
}

TEST_CASE("reading a directory as an image says so", "[image]") {
  ScratchDir d;
  const std::string msg = read_error(d.str());
  CHECK(msg == d.str() + ": is a directory, not an image file");
}

TEST_CASE("a file that opens but cannot be read gives the system's read error", "[image]") {
  // /proc/self/mem opens, but reading at offset 0 (an unmapped address) fails with EIO.
  const std::string path = "/proc/self/mem";
  const std::string msg = read_error(path);
  CHECK_ONE_LINE_NAMING(msg, path);
  CHECK(msg == path + ": read error: " + std::strerror(EIO));
}

TEST_CASE("a file without read permission gives the system's reason", "[image]") {
  ScratchDir d;
  const std::string path = d.file("secret.pgm");
  gg::tools::write_pgm(path, GrayImage{1, 1, {0}});
  REQUIRE(::chmod(path.c_str(), 0) == 0);
  if (::access(path.c_str(), R_OK) == 0) {
    WARN("running as root: permissions do not stop reads, nothing to check");
    return;
  }
  CHECK(read_error(path) == path + ": cannot open: " + std::strerror(EACCES));
}

TEST_CASE("a file that is neither PGM nor PNG is rejected naming its first bytes", "[image]") {
  ScratchDir d;
  const std::string path = d.file("digit.gif");
  write_bytes(path, std::string("GIF89a\x01\x00\x01\x00", 10));
  const std::string msg = read_error(path);
  CHECK_ONE_LINE_NAMING(msg, path);
  CHECK(msg == path + ": not a PGM or PNG image (starts with 47 49 46 38 39 61 01 00 \"GIF89a..\")");
}

TEST_CASE("an empty file is not an image", "[image]") {
  ScratchDir d;
  const std::string path = d.file("empty.pgm");
  write_bytes(path, "");
  CHECK(read_error(path) == path + ": not a PGM or PNG image (the file is empty)");
}

TEST_CASE("a colour PPM is rejected with a hint to convert it", "[image]") {
  ScratchDir d;
  const std::string path = d.file("colour.ppm");
  write_bytes(path, "P6\n1 1\n255\nabc");
  const std::string msg = read_error(path);
  CHECK_ONE_LINE_NAMING(msg, path);
  CHECK_THAT(msg, Catch::Contains("not a PGM or PNG image") && Catch::Contains("PPM (colour): convert it to PGM or PNG"));
}

TEST_CASE("truncated binary PGM data says how many bytes were needed and found", "[image]") {
  ScratchDir d;
  const std::string path = d.file("short.pgm");
  write_bytes(path, "P5\n28 28\n255\n" + std::string(700, '\x10'));
  const std::string msg = read_error(path);
  CHECK_ONE_LINE_NAMING(msg, path);
  CHECK(msg == path + ": truncated PGM data: a 28x28 image needs 784 bytes of pixels, the file has only 700");
}

TEST_CASE("truncated plain PGM data says how many values were found", "[image]") {
  ScratchDir d;
  const std::string path = d.file("short.pgm");
  write_bytes(path, "P2\n3 2\n255\n1 2 3\n4 5\n");
  CHECK(read_error(path) == path + ": truncated PGM data: a 3x2 image needs 6 pixel values, the file ends after 5");
}

TEST_CASE("a bad number in the PGM header names the field and what was found", "[image]") {
  ScratchDir d;
  const std::string letters = d.file("letters.pgm"), negative = d.file("negative.pgm"), cut = d.file("cut.pgm");
  write_bytes(letters, "P5\n28 abc\n255\n");
  write_bytes(negative, "P2 -3 2 255\n");
  write_bytes(cut, "P5\n28 28\n");
  const std::string m1 = read_error(letters), m2 = read_error(negative), m3 = read_error(cut);
  CHECK_ONE_LINE_NAMING(m1, letters);
  CHECK(m1 == letters + ": bad PGM header: expected the height, found 'a'");
  CHECK(m2 == negative + ": bad PGM header: expected the width, found '-'");
  CHECK(m3 == cut + ": bad PGM header: expected the maxval, found the end of the file");
}

TEST_CASE("a PGM maxval outside 1..255 is rejected", "[image]") {
  ScratchDir d;
  const std::string wide = d.file("16bit.pgm"), zero = d.file("zero.pgm");
  write_bytes(wide, "P5\n1 1\n65535\n");
  write_bytes(zero, "P2\n1 1\n0\n0\n");
  const std::string msg = read_error(wide);
  CHECK_ONE_LINE_NAMING(msg, wide);
  CHECK(msg == wide + ": PGM maxval 65535 is not supported (1..255: 8-bit gray; 16-bit PGM is not read)");
  CHECK_THAT(read_error(zero), Catch::StartsWith(zero + ": PGM maxval 0 is not supported"));
}

TEST_CASE("a PGM pixel value above maxval is rejected with its position", "[image]") {
  ScratchDir d;
  const std::string plain = d.file("plain.pgm"), binary = d.file("binary.pgm");
  write_bytes(plain, "P2\n2 2\n15\n0 15\n16 3\n");
  write_bytes(binary, "P5\n2 1\n15\n\x0f\x10");
  CHECK(read_error(plain) == plain + ": PGM pixel value 16 at row 1, column 0 exceeds the maxval 15");
  CHECK(read_error(binary) == binary + ": PGM pixel value 16 at row 0, column 1 exceeds the maxval 15");
}

TEST_CASE("a PGM with a zero dimension is rejected", "[image]") {
  ScratchDir d;
  const std::string path = d.file("zero.pgm");
  write_bytes(path, "P5\n0 28\n255\n");
  const std::string msg = read_error(path);
  CHECK_ONE_LINE_NAMING(msg, path);
  CHECK(msg == path + ": image is 0x28 pixels; width and height must each be 1..16384");
}

TEST_CASE("a PGM wider than 16384 pixels is rejected from its header, before its data", "[image]") {
  ScratchDir d;
  const std::string path = d.file("huge.pgm");
  write_bytes(path, "P5\n16385 1\n255\n");  // no pixel data: the size must be the complaint
  CHECK(read_error(path) == path + ": image is 16385x1 pixels; width and height must each be 1..16384");
}

TEST_CASE("a PNG larger than 16384 pixels is rejected from its IHDR, before decoding", "[image]") {
  ScratchDir d;
  const std::string path = d.file("huge.png");
  // Signature and an IHDR chunk (bad CRC, no image data): the size check comes first.
  write_bytes(path, "\x89PNG\r\n\x1a\n" + be32(13) + "IHDR" + be32(1) + be32(20000) + std::string("\x08\x00\x00\x00\x00", 5) +
                        be32(0));
  const std::string msg = read_error(path);
  CHECK_ONE_LINE_NAMING(msg, path);
  CHECK(msg == path + ": image is 1x20000 pixels; width and height must each be 1..16384");
}

TEST_CASE("a PNG cut short reports cairo's status and that the file ends early", "[image]") {
  ScratchDir d;
  const std::string png = small_png(d);
  const std::string path = d.file("cut.png");
  write_bytes(path, png.substr(0, png.size() / 2));
  const std::string msg = read_error(path);
  CHECK_ONE_LINE_NAMING(msg, path);
  CHECK(msg == path + ": cannot decode PNG: " + cairo_status_to_string(CAIRO_STATUS_READ_ERROR) + " (the file ends early)");
}

TEST_CASE("a damaged PNG reports cairo's status", "[image]") {
  ScratchDir d;
  std::string png = small_png(d);
  png[png.size() / 2] = static_cast<char>(png[png.size() / 2] ^ 0x5a);  // breaks a CRC or the data
  const std::string path = d.file("damaged.png");
  write_bytes(path, png);
  const std::string msg = read_error(path);
  CHECK_ONE_LINE_NAMING(msg, path);
  CHECK_THAT(msg, Catch::StartsWith(path + ": cannot decode PNG: "));
}

TEST_CASE("require_28x28 returns the 784 pixels of a 28x28 image", "[image]") {
  GrayImage img = pattern(28, 28);
  CHECK(gg::tools::require_28x28(img, "seven.png") == img.pixels);
}

TEST_CASE("require_28x28 rejects a 27x28 image naming both sizes", "[image]") {
  const std::string msg =
      message_of<std::runtime_error>([] { gg::tools::require_28x28(pattern(27, 28), "photo.png"); });
  CHECK(msg == "photo.png: image is 27x28; mnist-predict takes 28x28 grayscale images (MNIST's size); resize it first");
}

TEST_CASE("require_28x28 of an image whose pixels do not match its size is invalid_argument", "[image]") {
  GrayImage img = pattern(28, 28);
  img.pixels.pop_back();
  CHECK_THROWS_AS(gg::tools::require_28x28(img, "x.pgm"), std::invalid_argument);
  const std::int64_t huge = std::int64_t{1} << 40;  // width * height would overflow
  CHECK_THROWS_AS(gg::tools::require_28x28(GrayImage{huge, huge, {}}, "x.pgm"), std::invalid_argument);
}

TEST_CASE("write_pgm rejects a bad size or pixel count and writes nothing", "[image]") {
  ScratchDir d;
  const std::string path = d.file("bad.pgm");
  CHECK_THROWS_AS(gg::tools::write_pgm(path, GrayImage{0, 5, {}}), std::invalid_argument);
  CHECK_THROWS_AS(gg::tools::write_pgm(path, GrayImage{2, 2, {1, 2, 3}}), std::invalid_argument);
  CHECK_THROWS_AS(gg::tools::write_pgm(path, GrayImage{16385, 1, std::vector<std::uint8_t>(16385)}), std::invalid_argument);
  CHECK(d.entries() == 0);
}

TEST_CASE("a failing write_pgm names the path and leaves the existing file intact", "[image]") {
  ScratchDir d;
  const std::string path = d.file("big.pgm");
  write_bytes(path, "old");
  const std::string msg = message_with_small_file_limit([&] { gg::tools::write_pgm(path, pattern(100, 100)); });
  CHECK(msg == path + ": write failed: " + std::strerror(EFBIG));
  CHECK(slurp(path) == "old");
  CHECK(d.entries() == 1);
}

// ---------------------------------------------------------------------------------------------
// The confusion matrix.

namespace {

const std::vector<std::string> kDigits = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
constexpr Rgb kDarkest{8, 48, 107}, kLightest{247, 251, 255};

// A plausible MNIST result: ~900 right per class, a few mistakes.
std::vector<std::int64_t> mnist_like_counts() {
  std::vector<std::int64_t> c(100);
  for (int i = 0; i < 10; ++i)
    for (int j = 0; j < 10; ++j) c[static_cast<std::size_t>(i * 10 + j)] = i == j ? 900 + i : (i * j) % 7;
  return c;
}

// A pixel near the top-left corner of cell (row, col), clear of the count written at its centre.
Rgb cell_colour(const Png& png, int row, int col, int c) { return png.at(160 + col * c + 3, 64 + row * c + 3); }

}  // namespace

TEST_CASE("the confusion-matrix PNG has the documented size, shaded cells and labels", "[plot]") {
  ScratchDir d;
  const std::string path = d.file("confusion.png");
  gg::tools::plot_confusion_matrix(path, mnist_like_counts(), kDigits, "MNIST test set: 97.12% correct");
  CHECK(has_png_signature(path));
  Png png(path);
  REQUIRE(png.status == CAIRO_STATUS_SUCCESS);
  const int c = 64;  // max(12, min(64, 640 / 10), 192 / 10)
  CHECK(png.width == 270 + 10 * c);
  CHECK(png.height == 128 + 10 * c);
  for (int i = 0; i < 10; ++i) {
    INFO("class " << i);
    const Rgb right = cell_colour(png, i, i, c);
    CHECK((right.r < 20 && right.b < 170));                        // >= 97% of its row: dark blue
    CHECK(near(cell_colour(png, i, i == 7 ? 0 : 7, c), kLightest));  // a count of 0
  }
  CHECK(near(cell_colour(png, 0, 0, c), kDarkest));  // rows 0 and 7 have no mistakes: 100%
  CHECK(near(cell_colour(png, 7, 7, c), kDarkest));
  // The counts: white digits in a dark cell, dark digits in a light one.
  CHECK(png.count([](Rgb p) { return p.r > 200; }, 160, 64, 160 + c, 64 + c) > 20);
  CHECK(png.count([](Rgb p) { return p.r < 120; }, 160 + c, 64, 160 + 2 * c, 64 + c) > 10);
  // Class names left of the matrix and below it, the title above it.
  CHECK(png.count([](Rgb p) { return p.r < 150; }, 100, 64, 156, 64 + 10 * c) > 50);
  CHECK(png.count([](Rgb p) { return p.r < 150; }, 160, 64 + 10 * c + 4, 160 + 10 * c, 64 + 10 * c + 30) > 50);
  CHECK(png.count([](Rgb p) { return p.r < 150; }, 0, 0, png.width, 50) > 100);
  CHECK(d.entries() == 1);
}

TEST_CASE("confusion-matrix cells are shaded by their share of the row, not by the largest count", "[plot]") {
  ScratchDir d;
  const std::string path = d.file("rows.png");
  // Row 0: 1000 right; row 1: 1 right; row 2: half right; row 3: no examples.
  gg::tools::plot_confusion_matrix(path, {1000, 0, 0, 0, 0, 1, 0, 0, 3, 2, 5, 0, 0, 0, 0, 0}, {"a", "b", "c", "d"}, "rows");
  Png png(path);
  REQUIRE(png.status == CAIRO_STATUS_SUCCESS);
  const int c = 64;  // max(12, min(64, 160), 48)
  CHECK(png.width == 270 + 4 * c);
  CHECK(png.height == 128 + 4 * c);
  CHECK(near(cell_colour(png, 0, 0, c), kDarkest));
  CHECK(near(cell_colour(png, 1, 1, c), kDarkest));             // 1 of 1 is as dark as 1000 of 1000
  CHECK(near(cell_colour(png, 2, 2, c), Rgb{107, 174, 214}));   // 0.5: the middle of the colour map
  const Rgb c30 = cell_colour(png, 2, 0, c), c20 = cell_colour(png, 2, 1, c);
  CHECK(c30.r < c20.r);                                         // 0.3 darker than 0.2
  CHECK(c20.r < kLightest.r);
  CHECK(c30.r > 107);                                           // lighter than 0.5
  for (int k = 0; k < 4; ++k) CHECK(near(cell_colour(png, 3, k, c), kLightest));  // an empty row stays light
}

TEST_CASE("100 classes with long names give the taller layout with upright names", "[plot]") {
  ScratchDir d;
  const std::string path = d.file("hundred.png");
  std::vector<std::string> names;
  std::vector<std::int64_t> counts(10000, 1);
  for (int i = 0; i < 100; ++i) {
    names.push_back("class " + std::to_string(i));
    counts[static_cast<std::size_t>(i * 101)] = 50;
  }
  gg::tools::plot_confusion_matrix(path, counts, names, "a hundred classes");
  Png png(path);
  REQUIRE(png.status == CAIRO_STATUS_SUCCESS);
  CHECK(png.width == 270 + 100 * 12);
  CHECK(png.height == 194 + 100 * 12);
  CHECK(near(cell_colour(png, 99, 0, 12), cell_colour(png, 0, 1, 12)));  // off-diagonal: 1/149 each
  CHECK(cell_colour(png, 42, 42, 12).r < cell_colour(png, 42, 41, 12).r);
}

TEST_CASE("bad confusion-matrix arguments throw invalid_argument and write nothing", "[plot]") {
  ScratchDir d;
  const std::string path = d.file("bad.png");
  using gg::tools::plot_confusion_matrix;
  CHECK_THROWS_AS(plot_confusion_matrix(path, {}, {}, "no classes"), std::invalid_argument);
  CHECK_THROWS_AS(plot_confusion_matrix(path, {1, 2, 3}, {"a", "b"}, "3 counts for 2 classes"), std::invalid_argument);
  CHECK_THROWS_AS(plot_confusion_matrix(path, std::vector<std::int64_t>(101 * 101), std::vector<std::string>(101, "x"), "101"),
                  std::invalid_argument);
  CHECK_THROWS_AS(plot_confusion_matrix(path, {1, -1, 0, 1}, {"a", "b"}, "negative"), std::invalid_argument);
  CHECK_THROWS_WITH(plot_confusion_matrix(path, {1, 2, 3}, {"a", "b"}, "t"),
                    "plot_confusion_matrix: " + path + ": 3 counts for 2 classes; expected 4 (classes x classes)");
  CHECK(d.entries() == 0);
}

TEST_CASE("a failing confusion-matrix write names the path and leaves the existing file intact", "[plot]") {
  ScratchDir d;
  const std::string path = d.file("confusion.png");
  write_bytes(path, "old");
  const std::string msg = message_with_small_file_limit(
      [&] { gg::tools::plot_confusion_matrix(path, mnist_like_counts(), kDigits, "too big for the limit"); });
  CHECK(msg == path + ": write failed: " + std::strerror(EFBIG));
  CHECK(slurp(path) == "old");
  CHECK(d.entries() == 1);
}

// ---------------------------------------------------------------------------------------------
// The image grid.

namespace {

// Ten 28x28 images: image 0 all black, image 1 a checkerboard of 60 and 255, the rest mid-gray
// gradients (never 0).
std::vector<std::vector<std::uint8_t>> grid_images() {
  std::vector<std::vector<std::uint8_t>> images(10, std::vector<std::uint8_t>(784));
  for (int i = 0; i < 784; ++i) {
    images[1][static_cast<std::size_t>(i)] = (i / 28 + i % 28) % 2 ? 255 : 60;
    for (int k = 2; k < 10; ++k) images[static_cast<std::size_t>(k)][static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(100 + (i % 28) + k);
  }
  return images;
}

std::vector<std::string> grid_captions(std::size_t n) {
  std::vector<std::string> c;
  for (std::size_t k = 0; k < n; ++k) c.push_back("true " + std::to_string(k) + " → pred " + std::to_string((k + 3) % 10) + ", p=0.97");
  return c;
}

}  // namespace

TEST_CASE("the image grid has the documented size and each image scaled 3x, nearest neighbour", "[plot]") {
  ScratchDir d;
  const std::string path = d.file("wrong.png");
  auto images = grid_images();
  gg::tools::plot_image_grid(path, images, 28, 28, grid_captions(10), "most confidently wrong", 4);
  CHECK(has_png_signature(path));
  Png png(path);
  REQUIRE(png.status == CAIRO_STATUS_SUCCESS);
  const int cw = 140 + 12, ch = 84 + 46;  // s = 96 / 28 = 3: tiles 84x84, captions need 140
  CHECK(png.width == 32 + 4 * cw);        // 4 columns
  CHECK(png.height == 64 + 3 * ch);       // 10 images in 3 rows

  // Image 0 (all black) is exactly an 84x84 black square, at the first tile's place.
  const int x0 = 16 + (cw - 84) / 2, y0 = 56;
  CHECK(png.count([](Rgb p) { return p == Rgb{0, 0, 0}; }) == 84 * 84);
  CHECK(png.count([](Rgb p) { return p == Rgb{0, 0, 0}; }, x0, y0, x0 + 84, y0 + 84) == 84 * 84);

  // Image 1 (checkerboard): every 3x3 block is one source pixel, unblurred.
  const int x1 = x0 + cw;
  int mismatches = 0;
  for (int y = 0; y < 84; ++y)
    for (int x = 0; x < 84; ++x) {
      const int v = images[1][static_cast<std::size_t>((y / 3) * 28 + x / 3)];
      mismatches += !(png.at(x1 + x, y0 + y) == Rgb{v, v, v});
    }
  CHECK(mismatches == 0);

  // A caption under each tile, the title on top.
  for (int k = 0; k < 10; ++k) {
    INFO("caption " << k);
    const int cx = 16 + (k % 4) * cw, cy = 56 + (k / 4) * ch + 84;
    CHECK(png.count([](Rgb p) { return p.r < 150; }, cx, cy + 4, cx + cw, cy + 24) > 50);
  }
  CHECK(png.count([](Rgb p) { return p.r < 150; }, 0, 0, png.width, 48) > 100);
  CHECK(d.entries() == 1);
}

TEST_CASE("an image grid with no images draws the title and \"(no images)\"", "[plot]") {
  ScratchDir d;
  const std::string path = d.file("none.png");
  gg::tools::plot_image_grid(path, {}, 28, 28, {}, "no mistakes");
  Png png(path);
  REQUIRE(png.status == CAIRO_STATUS_SUCCESS);
  CHECK(png.width == 32 + 152);
  CHECK(png.height == 64 + 130);
  CHECK(png.count([](Rgb p) { return p.r < 150; }, 0, 0, png.width, 48) > 50);    // the title
  CHECK(png.count([](Rgb p) { return p.r < 150; }, 0, 56, png.width, 186) > 30);  // "(no images)"
}

TEST_CASE("bad image-grid arguments throw invalid_argument and write nothing", "[plot]") {
  ScratchDir d;
  const std::string path = d.file("bad.png");
  using gg::tools::plot_image_grid;
  auto images = grid_images();
  CHECK_THROWS_AS(plot_image_grid(path, images, 28, 28, grid_captions(9), "t"), std::invalid_argument);
  auto short_one = images;
  short_one[3].pop_back();
  CHECK_THROWS_AS(plot_image_grid(path, short_one, 28, 28, grid_captions(10), "t"), std::invalid_argument);
  CHECK_THROWS_AS(plot_image_grid(path, images, 28, 28, grid_captions(10), "t", 0), std::invalid_argument);
  CHECK_THROWS_AS(plot_image_grid(path, {}, 0, 28, {}, "t"), std::invalid_argument);
  // 3000 rows of 130 pixels: beyond cairo's 32767.
  CHECK_THROWS_AS(plot_image_grid(path, std::vector<std::vector<std::uint8_t>>(3000, std::vector<std::uint8_t>(784)), 28,
                                  28, std::vector<std::string>(3000), "t", 1),
                  std::invalid_argument);
  CHECK_THROWS_WITH(plot_image_grid(path, images, 28, 28, grid_captions(9), "t"),
                    "plot_image_grid: " + path + ": 10 images but 9 captions; there must be one caption per image");
  CHECK(d.entries() == 0);
}

TEST_CASE("a failing image-grid write names the path and leaves the existing file intact", "[plot]") {
  ScratchDir d;
  const std::string path = d.file("wrong.png");
  write_bytes(path, "old");
  const std::string msg = message_with_small_file_limit(
      [&] { gg::tools::plot_image_grid(path, grid_images(), 28, 28, grid_captions(10), "too big for the limit"); });
  CHECK(msg == path + ": write failed: " + std::strerror(EFBIG));
  CHECK(slurp(path) == "old");
  CHECK(d.entries() == 1);
}

TEST_CASE("plotting a grid into a missing directory names the path", "[plot]") {
  ScratchDir d;
  const std::string path = d.file("nope/wrong.png");
  CHECK_THROWS_WITH(gg::tools::plot_image_grid(path, grid_images(), 28, 28, grid_captions(10), "t"),
                    Catch::StartsWith(path + ": ") && Catch::Contains("No such file or directory"));
}
