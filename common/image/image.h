// Image files to 8-bit RGB pixels, as the user's device reads them before
// preprocessing (torch-free; library stip_image).
//
// Decoding uses Debian's libpng (PNG) and libjpeg-turbo (JPEG), the libraries
// Pillow itself links, so that a JPEG decodes to the same bytes as
// `PIL.Image.open(f)` does. Every image is converted to RGB as Pillow's
// `Image.convert("RGB")` does (Debian 12's Pillow 9.4, the test oracle):
//   - gray (1/2/4/8 bit): replicated into R, G and B (low depths scaled to 0..255);
//   - gray 16 bit: Pillow opens it as mode "I" and clamps to 0..255 (no scaling);
//   - gray+alpha, RGBA: the alpha channel is dropped, no compositing;
//   - palette: looked up in PLTE; tRNS transparency is ignored;
//   - RGB/RGBA 16 bit: the high byte of each sample;
//   - JPEG gray: replicated; JPEG CMYK/YCCK: Pillow's cmyk2rgb.
// The EXIF orientation (JPEG APP1, PNG eXIf) is applied as transformers'
// load_image does (PIL.ImageOps.exif_transpose) unless switched off; PNG
// gamma and colour profiles are not applied (nor does Pillow).
//
// Bad input throws stip::Error: kInvalidArgument for what is not a PNG/JPEG,
// is truncated, corrupt or zero-sized; kResourceExhausted for an image whose
// header claims more pixels than DecodeOptions allows (refused before the pixel
// buffer is allocated); kNotFound for a missing file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace stip {

// An 8-bit RGB image, rows top to bottom, pixels interleaved: the byte of
// channel c of pixel (x, y) is data[(y * width + x) * 3 + c] (HWC, as
// numpy.asarray(pil_image) lays it out).
struct Image {
  static constexpr int kChannels = 3;
  int width = 0;
  int height = 0;
  std::vector<uint8_t> data;

  uint8_t at(int y, int x, int c) const {
    return data[(static_cast<size_t>(y) * width + x) * kChannels + c];
  }
};

struct DecodeOptions {
  // Rotate/mirror as the EXIF orientation tag (0x0112, values 2..8) says.
  bool apply_exif_orientation = true;
  // Pillow's Image.MAX_IMAGE_PIXELS (its decompression-bomb warning threshold).
  uint64_t max_pixels = 89'478'485;
  // Largest file LoadImageFile reads (DecodeImage checks it too).
  uint64_t max_file_bytes = 256ull << 20;
};

enum class ImageFormat { kUnknown, kPng, kJpeg };

// The format that the bytes' signature names (kUnknown for anything else).
ImageFormat SniffImageFormat(std::string_view bytes);

// Decodes a PNG or JPEG held in memory to RGB. Throws stip::Error as above.
Image DecodeImage(std::string_view bytes, const DecodeOptions& options = {});

// Reads and decodes a file; errors name the path.
Image LoadImageFile(const std::string& path, const DecodeOptions& options = {});

// The orientation (1..8) in an EXIF block (a TIFF structure, with or without
// the "Exif\0\0" prefix of JPEG's APP1); 1 when absent or malformed.
int ExifOrientation(std::string_view exif);

// PIL.ImageOps.exif_transpose's transposition for `orientation` (2: mirror,
// 3: rotate 180, 4: flip, 5: transpose, 6: rotate 90 clockwise,
// 7: transverse, 8: rotate 90 counter-clockwise; anything else: unchanged).
Image ApplyExifOrientation(const Image& image, int orientation);

}  // namespace stip
