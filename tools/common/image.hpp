// Grayscale image files for the MNIST tools: reading a PGM or PNG into 8-bit gray pixels (for
// mnist-predict), checking it is MNIST's 28x28, and writing binary PGM.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gg::tools {

// An 8-bit grayscale image: `pixels` holds width*height values, row-major (row 0 is the top),
// 0 = black, 255 = white.
struct GrayImage {
  std::int64_t width = 0, height = 0;
  std::vector<std::uint8_t> pixels;
};

// The largest width or height read_gray_image accepts (and write_pgm writes).
inline constexpr std::int64_t kMaxImageSide = 16384;

// Reads a grayscale image. The format is told by the file's first bytes, not by its name:
//  - PGM, binary ("P5") or plain/ASCII ("P2"), maxval 1..255; '#' comments in the header.
//    Values are scaled to 0..255 (v * 255 / maxval, rounded) when maxval is not 255; a value
//    above maxval is an error. Data after the first image is ignored.
//  - PNG (signature 89 50 4E 47 0D 0A 1A 0A), decoded by cairo: any bit depth or colour type.
//    Colour becomes gray by luminance, 0.299 R + 0.587 G + 0.114 B (rounded), of the colour
//    composited over BLACK: a transparent pixel is 0 and a half-transparent white one ~128.
//    Black is MNIST's background (its digits are white on black), so a white digit drawn on a
//    transparent canvas reads the way the network expects. The image is not inverted: a black
//    digit on a white background stays that way.
// Width and height must each be 1..kMaxImageSide (checked in the header, before decoding).
// Every failure throws std::runtime_error with a one-line message starting with "<path>: ".
GrayImage read_gray_image(const std::string& path);

// The 784 pixels of a 28x28 image. Anything else throws std::runtime_error
// "<path>: image is WxH; mnist-predict takes 28x28 grayscale images (MNIST's size); resize it first"
// (images are rejected, never resized). Throws std::invalid_argument if img.pixels does not hold
// width*height values.
std::vector<std::uint8_t> require_28x28(const GrayImage& img, const std::string& path);

// Writes `img` as a binary PGM ("P5", maxval 255), atomically: on failure an existing file is
// left as it was. Throws std::invalid_argument "write_pgm: <path>: ..." for a size outside
// 1..kMaxImageSide or pixels that do not hold width*height values, std::runtime_error
// "<path>: ..." if the file cannot be written.
void write_pgm(const std::string& path, const GrayImage& img);

}  // namespace gg::tools
