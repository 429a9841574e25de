// PNG (libpng) and JPEG (libjpeg-turbo) decoding to RGB with Pillow's
// convert("RGB") semantics; see image.h for the rules per mode.
//
// Both libraries report fatal errors through longjmp. The functions that call
// setjmp create no C++ objects with destructors after it; the state they need
// after an error (the message, the library handles) lives in structs owned by
// the caller, and the library handles are released by guards constructed
// before setjmp.
#include <png.h>

#include "common/image/image.h"
// jpeglib.h needs size_t and FILE declared first.
#include <jerror.h>
#include <jpeglib.h>

#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/error.h"

namespace stip {
namespace {

constexpr char kPngSignature[] = "\x89PNG\r\n\x1a\n";
// Progressive JPEGs can carry any number of scans, each a pass over the
// whole coefficient buffer; real encoders write at most a few dozen.
constexpr int kMaxJpegScans = 1000;

// ---------------------------------------------------------------- PNG

struct PngState {
  std::string_view bytes;
  std::string exif;  // the eXIf chunk (before IDAT), if any
  size_t offset = 0;
  char message[256] = {0};
  // Set when the failure is ours (a limit), not libpng's.
  bool limit_hit = false;
  bool zero_size = false;
};

void PngError(png_structp png, png_const_charp message) {
  auto* state = static_cast<PngState*>(png_get_error_ptr(png));
  std::snprintf(state->message, sizeof(state->message), "%s", message);
  png_longjmp(png, 1);
}

void PngWarning(png_structp, png_const_charp) {}  // Pillow ignores them too.

void PngRead(png_structp png, png_bytep out, png_size_t length) {
  auto* state = static_cast<PngState*>(png_get_io_ptr(png));
  if (state->bytes.size() - state->offset < length) {
    png_error(png, "truncated: the data ends inside the image");
  }
  std::memcpy(out, state->bytes.data() + state->offset, length);
  state->offset += length;
}

struct PngGuard {
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~PngGuard() { png_destroy_read_struct(&png, info ? &info : nullptr, nullptr); }
};

// One decoded row of `channels` samples of `depth` bits (8, or 16 for 16-bit
// gray, which Pillow clamps) to RGB.
void PngRowToRgb(const uint8_t* row, int width, int channels, int depth, uint8_t* out) {
  for (int x = 0; x < width; ++x, out += 3) {
    if (depth == 16) {  // gray 16 bit, big-endian: Pillow's "I" -> "RGB" clamps.
      unsigned v = (static_cast<unsigned>(row[2 * x]) << 8) | row[2 * x + 1];
      out[0] = out[1] = out[2] = static_cast<uint8_t>(std::min(v, 255u));
      continue;
    }
    const uint8_t* p = row + static_cast<size_t>(x) * channels;
    if (channels <= 2) {  // gray, gray+alpha: alpha dropped
      out[0] = out[1] = out[2] = p[0];
    } else {  // RGB, RGBA: alpha dropped
      out[0] = p[0];
      out[1] = p[1];
      out[2] = p[2];
    }
  }
}

// Returns false with state->message set on a libpng error.
// The buffers are the caller's, so that no destructor is skipped by a longjmp.
bool DecodePngInto(PngGuard& guard, PngState& state, const DecodeOptions& limits, Image& image,
                   std::vector<uint8_t>& buffer, std::vector<png_bytep>& rows) {
  png_structp png = guard.png;
  png_infop info = guard.info;
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_read_fn(png, &state, PngRead);
  png_read_info(png, info);
  png_uint_32 width = png_get_image_width(png, info);
  png_uint_32 height = png_get_image_height(png, info);
  if (width == 0 || height == 0) {
    state.zero_size = true;
    return false;
  }
  if (static_cast<uint64_t>(width) * height > limits.max_pixels) {
    state.limit_hit = true;
    std::snprintf(state.message, sizeof(state.message), "%u x %u", width, height);
    return false;
  }
  png_uint_32 exif_size = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(png, info, &exif_size, &exif) && exif) {
    state.exif.assign(reinterpret_cast<const char*>(exif), exif_size);
  }
  int color_type = png_get_color_type(png, info);
  int bit_depth = png_get_bit_depth(png, info);
  // Palette to RGB (RGBA where tRNS is present; the alpha is dropped below);
  // 1/2/4-bit gray scaled to 8 bits as Pillow's unpackers do.
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  const bool gray16 = color_type == PNG_COLOR_TYPE_GRAY && bit_depth == 16;
  if (bit_depth == 16 && !gray16) png_set_strip_16(png);  // the high byte, as Pillow
  const int passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int channels = png_get_channels(png, info);
  const size_t rowbytes = png_get_rowbytes(png, info);
  const int depth = gray16 ? 16 : 8;

  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  image.data.resize(static_cast<size_t>(width) * height * 3);
  if (passes == 1) {
    buffer.resize(rowbytes);
    for (png_uint_32 y = 0; y < height; ++y) {
      png_read_row(png, buffer.data(), nullptr);
      PngRowToRgb(buffer.data(), image.width, channels, depth,
                  image.data.data() + static_cast<size_t>(y) * width * 3);
    }
  } else {
    buffer.resize(rowbytes * height);
    rows.resize(height);
    for (png_uint_32 y = 0; y < height; ++y) rows[y] = buffer.data() + y * rowbytes;
    png_read_image(png, rows.data());
    for (png_uint_32 y = 0; y < height; ++y) {
      PngRowToRgb(buffer.data() + y * rowbytes, image.width, channels, depth,
                  image.data.data() + static_cast<size_t>(y) * width * 3);
    }
  }
  return true;
}

uint32_t ReadBe32(const char* p) {
  return (uint32_t{static_cast<uint8_t>(p[0])} << 24) |
         (uint32_t{static_cast<uint8_t>(p[1])} << 16) |
         (uint32_t{static_cast<uint8_t>(p[2])} << 8) | uint32_t{static_cast<uint8_t>(p[3])};
}

// The size that IHDR (the first chunk) claims, checked before libpng reads
// on: png_read_info only returns once it has reached the image data, and a
// file may stop right after its header.
void CheckPngHeaderSize(std::string_view bytes, const DecodeOptions& limits) {
  if (bytes.size() < 8 + 8 + 8 || bytes.substr(12, 4) != "IHDR") return;  // libpng reports it
  const uint64_t width = ReadBe32(bytes.data() + 16);
  const uint64_t height = ReadBe32(bytes.data() + 20);
  if (width == 0 || height == 0) {
    throw InvalidArgument("image: the PNG header gives a zero size (" + std::to_string(width) +
                          " x " + std::to_string(height) + ")");
  }
  if (width * height > limits.max_pixels) {
    throw ResourceExhausted("image: the PNG header claims " + std::to_string(width) + " x " +
                            std::to_string(height) + " pixels, more than the limit of " +
                            std::to_string(limits.max_pixels) + " pixels");
  }
}

Image DecodePng(std::string_view bytes, const DecodeOptions& limits, std::string& exif) {
  CheckPngHeaderSize(bytes, limits);
  PngState state;
  state.bytes = bytes;
  PngGuard guard;
  guard.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &state, PngError, PngWarning);
  if (!guard.png) throw Internal("image: png_create_read_struct failed");
  guard.info = png_create_info_struct(guard.png);
  if (!guard.info) throw Internal("image: png_create_info_struct failed");
  // libpng's own ceiling on either side; our pixel limit is checked after the header.
  png_set_user_limits(guard.png, 1'000'000, 1'000'000);
  // Ancillary chunks (text, profiles) may not make libpng allocate more than this.
  png_set_chunk_malloc_max(guard.png, 8u << 20);
  Image image;
  std::vector<uint8_t> buffer;
  std::vector<png_bytep> rows;
  if (!DecodePngInto(guard, state, limits, image, buffer, rows)) {
    if (state.zero_size) throw InvalidArgument("image: the PNG header gives a zero size");
    if (state.limit_hit) {
      throw ResourceExhausted(std::string("image: the PNG header claims ") + state.message +
                              " pixels, more than the limit of " +
                              std::to_string(limits.max_pixels) + " pixels");
    }
    throw InvalidArgument(std::string("image: invalid PNG: ") + state.message);
  }
  exif = std::move(state.exif);
  return image;
}

// ---------------------------------------------------------------- JPEG

struct JpegErrorManager {
  jpeg_error_mgr pub;
  jmp_buf jump;
  jpeg_progress_mgr progress;
  char message[JMSG_LENGTH_MAX + 64] = {0};
  bool limit_hit = false;
  // Set once jpeg_start_decompress has returned (a progressive JPEG's scans
  // are all read by then) for a Huffman-coded JPEG: from there on, running
  // out of input only matters if the entropy decoder still needed bits, which
  // it reports as JWRN_HIT_MARKER; a missing EOI marker alone is tolerated.
  bool eof_tolerated = false;
};

[[noreturn]] void JpegErrorExit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  char text[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, text);
  std::snprintf(err->message, sizeof(err->message), "%s", text);
  longjmp(err->jump, 1);
}

// Warnings that only describe harmless oddities of the file; every other
// warning means the entropy-coded data is corrupt or truncated, which libjpeg
// would paper over with gray blocks: that is refused.
bool IsBenignJpegWarning(int code) {
  switch (code) {
    case JWRN_ADOBE_XFORM:
    case JWRN_EXTRANEOUS_DATA:
    case JWRN_JFIF_MAJOR:
    case JWRN_BOGUS_ICC:
      return true;
    default:
      return false;
  }
}

void JpegEmitMessage(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // trace messages
  if (IsBenignJpegWarning(cinfo->err->msg_code)) return;
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  if (cinfo->err->msg_code == JWRN_JPEG_EOF && err->eof_tolerated) return;
  char text[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, text);
  if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
    std::snprintf(err->message, sizeof(err->message), "truncated: %s", text);
  } else if (cinfo->err->msg_code == JWRN_HIT_MARKER) {
    std::snprintf(err->message, sizeof(err->message), "truncated or corrupt: %s", text);
  } else {
    std::snprintf(err->message, sizeof(err->message), "%s", text);
  }
  longjmp(err->jump, 1);
}

void JpegProgress(j_common_ptr cinfo) {
  if (cinfo->is_decompressor &&
      reinterpret_cast<j_decompress_ptr>(cinfo)->input_scan_number > kMaxJpegScans) {
    auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
    std::snprintf(err->message, sizeof(err->message), "more than %d progressive scans",
                  kMaxJpegScans);
    err->limit_hit = true;
    longjmp(err->jump, 1);
  }
}

struct JpegGuard {
  jpeg_decompress_struct cinfo;
  bool created = false;
  ~JpegGuard() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

// Pillow's CMYK -> RGB (libImaging/Convert.c cmyk2rgb) on samples that
// Pillow's "CMYK;I" unpacker has inverted (Adobe's convention, assumed for
// every 4-component JPEG).
inline uint8_t Clip8(int v) { return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v)); }
inline int MulDiv255(int a, int b) {
  int tmp = a * b + 128;
  return ((tmp >> 8) + tmp) >> 8;
}

enum class JpegResult { kOk, kError, kZeroSize, kLimit };

JpegResult DecodeJpegInto(JpegGuard& guard, JpegErrorManager& err, std::string_view bytes,
                          const DecodeOptions& limits, Image& image, std::vector<uint8_t>& row,
                          std::string& exif) {
  jpeg_decompress_struct* cinfo = &guard.cinfo;
  cinfo->err = jpeg_std_error(&err.pub);
  err.pub.error_exit = JpegErrorExit;
  err.pub.emit_message = JpegEmitMessage;
  if (setjmp(err.jump)) return err.limit_hit ? JpegResult::kLimit : JpegResult::kError;
  jpeg_create_decompress(cinfo);
  guard.created = true;
  err.progress.progress_monitor = JpegProgress;
  cinfo->progress = &err.progress;
  jpeg_mem_src(cinfo, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  jpeg_save_markers(cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(cinfo, TRUE);
  // The first APP1 "Exif\0\0" segment, as Pillow's JpegImagePlugin keeps.
  for (jpeg_saved_marker_ptr m = cinfo->marker_list; m; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 &&
        std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      exif.assign(reinterpret_cast<const char*>(m->data), m->data_length);
      break;
    }
  }
  if (cinfo->image_width == 0 || cinfo->image_height == 0) return JpegResult::kZeroSize;
  if (static_cast<uint64_t>(cinfo->image_width) * cinfo->image_height > limits.max_pixels) {
    std::snprintf(err.message, sizeof(err.message), "%u x %u", cinfo->image_width,
                  cinfo->image_height);
    return JpegResult::kLimit;
  }
  // Pillow's JpegImagePlugin: gray stays gray ("L"), 4 components are CMYK
  // ("CMYK;I"), everything else is decoded to RGB by libjpeg.
  switch (cinfo->jpeg_color_space) {
    case JCS_GRAYSCALE:
      cinfo->out_color_space = JCS_GRAYSCALE;
      break;
    case JCS_CMYK:
    case JCS_YCCK:
      cinfo->out_color_space = JCS_CMYK;
      break;
    default:
      cinfo->out_color_space = JCS_RGB;
      break;
  }
  jpeg_start_decompress(cinfo);
  err.eof_tolerated = !cinfo->arith_code;
  const int width = static_cast<int>(cinfo->output_width);
  const int height = static_cast<int>(cinfo->output_height);
  const int components = cinfo->output_components;
  image.width = width;
  image.height = height;
  image.data.resize(static_cast<size_t>(width) * height * 3);
  row.resize(static_cast<size_t>(width) * components);
  while (cinfo->output_scanline < cinfo->output_height) {
    const size_t y = cinfo->output_scanline;
    JSAMPROW rows[1] = {row.data()};
    jpeg_read_scanlines(cinfo, rows, 1);
    uint8_t* out = image.data.data() + y * width * 3;
    for (int x = 0; x < width; ++x, out += 3) {
      const uint8_t* p = row.data() + static_cast<size_t>(x) * components;
      if (components == 1) {
        out[0] = out[1] = out[2] = p[0];
      } else if (components == 3) {
        out[0] = p[0];
        out[1] = p[1];
        out[2] = p[2];
      } else {
        const int nk = p[3];  // 255 - inverted K
        for (int c = 0; c < 3; ++c) out[c] = Clip8(nk - MulDiv255(255 - p[c], nk));
      }
    }
  }
  jpeg_finish_decompress(cinfo);
  return JpegResult::kOk;
}

Image DecodeJpeg(std::string_view bytes, const DecodeOptions& limits, std::string& exif) {
  JpegGuard guard;
  JpegErrorManager err;
  Image image;
  std::vector<uint8_t> row;
  switch (DecodeJpegInto(guard, err, bytes, limits, image, row, exif)) {
    case JpegResult::kOk:
      return image;
    case JpegResult::kZeroSize:
      throw InvalidArgument("image: the JPEG header gives a zero size");
    case JpegResult::kLimit:
      if (std::strncmp(err.message, "more than", 9) == 0) {
        throw ResourceExhausted(std::string("image: JPEG with ") + err.message);
      }
      throw ResourceExhausted(std::string("image: the JPEG header claims ") + err.message +
                              " pixels, more than the limit of " +
                              std::to_string(limits.max_pixels) + " pixels");
    case JpegResult::kError:
      break;
  }
  throw InvalidArgument(std::string("image: invalid JPEG: ") + err.message);
}

std::string DescribeStart(std::string_view bytes) {
  if (bytes.empty()) return "the data is empty";
  return "it starts with " + QuoteForMessage(bytes.substr(0, 8), 16);
}

}  // namespace

ImageFormat SniffImageFormat(std::string_view bytes) {
  if (bytes.size() >= 8 && std::memcmp(bytes.data(), kPngSignature, 8) == 0) {
    return ImageFormat::kPng;
  }
  if (bytes.size() >= 3 && static_cast<uint8_t>(bytes[0]) == 0xFF &&
      static_cast<uint8_t>(bytes[1]) == 0xD8 && static_cast<uint8_t>(bytes[2]) == 0xFF) {
    return ImageFormat::kJpeg;
  }
  return ImageFormat::kUnknown;
}

Image DecodeImage(std::string_view bytes, const DecodeOptions& limits) {
  if (bytes.size() > limits.max_file_bytes) {
    throw ResourceExhausted("image: " + std::to_string(bytes.size()) +
                            " bytes, more than the limit of " +
                            std::to_string(limits.max_file_bytes) + " bytes");
  }
  std::string exif;
  Image image;
  switch (SniffImageFormat(bytes)) {
    case ImageFormat::kPng:
      image = DecodePng(bytes, limits, exif);
      break;
    case ImageFormat::kJpeg:
      image = DecodeJpeg(bytes, limits, exif);
      break;
    case ImageFormat::kUnknown:
      throw InvalidArgument("image: not a PNG or JPEG image (" + DescribeStart(bytes) + ")");
  }
  if (limits.apply_exif_orientation && !exif.empty()) {
    const int orientation = ExifOrientation(exif);
    if (orientation != 1) return ApplyExifOrientation(image, orientation);
  }
  return image;
}

int ExifOrientation(std::string_view exif) {
  if (exif.substr(0, 6) == std::string_view("Exif\0\0", 6)) exif.remove_prefix(6);
  if (exif.size() < 8) return 1;
  const bool little = exif.substr(0, 2) == "II";
  if (!little && exif.substr(0, 2) != "MM") return 1;
  auto u16 = [&](size_t at) -> uint32_t {
    const auto* p = reinterpret_cast<const uint8_t*>(exif.data()) + at;
    return little ? (p[0] | (p[1] << 8)) : ((p[0] << 8) | p[1]);
  };
  auto u32 = [&](size_t at) -> uint32_t {
    return little ? (u16(at) | (u16(at + 2) << 16)) : ((u16(at) << 16) | u16(at + 2));
  };
  if (u16(2) != 42) return 1;
  const uint64_t ifd = u32(4);
  if (ifd + 2 > exif.size()) return 1;
  const uint32_t entries = u16(ifd);
  for (uint32_t i = 0; i < entries; ++i) {
    const uint64_t e = ifd + 2 + 12ull * i;
    if (e + 12 > exif.size()) return 1;
    if (u16(e) != 0x0112) continue;
    const uint32_t type = u16(e + 2);
    uint32_t value = 0;
    if (type == 3) {  // SHORT
      value = u16(e + 8);
    } else if (type == 4) {  // LONG
      value = u32(e + 8);
    } else {
      return 1;
    }
    return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
  }
  return 1;
}

Image ApplyExifOrientation(const Image& in, int orientation) {
  if (orientation < 2 || orientation > 8) return in;
  const int w = in.width, h = in.height;
  const bool swap = orientation >= 5;  // transpose, rotations by 90, transverse
  Image out;
  out.width = swap ? h : w;
  out.height = swap ? w : h;
  out.data.resize(in.data.size());
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2:  // FLIP_LEFT_RIGHT
          sx = w - 1 - x;
          break;
        case 3:  // ROTATE_180
          sx = w - 1 - x;
          sy = h - 1 - y;
          break;
        case 4:  // FLIP_TOP_BOTTOM
          sy = h - 1 - y;
          break;
        case 5:  // TRANSPOSE
          sx = y;
          sy = x;
          break;
        case 6:  // ROTATE_270 (clockwise)
          sx = y;
          sy = h - 1 - x;
          break;
        case 7:  // TRANSVERSE
          sx = w - 1 - y;
          sy = h - 1 - x;
          break;
        case 8:  // ROTATE_90 (counter-clockwise)
          sx = w - 1 - y;
          sy = x;
          break;
      }
      const uint8_t* p = in.data.data() + (static_cast<size_t>(sy) * w + sx) * 3;
      uint8_t* q = out.data.data() + (static_cast<size_t>(y) * out.width + x) * 3;
      q[0] = p[0];
      q[1] = p[1];
      q[2] = p[2];
    }
  }
  return out;
}

Image LoadImageFile(const std::string& path, const DecodeOptions& limits) {
  std::string bytes;
  {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw NotFound("image file " + QuoteForMessage(path, 256) + ": cannot open it");
    char chunk[1 << 16];
    size_t n;
    while ((n = std::fread(chunk, 1, sizeof(chunk), f)) > 0) {
      bytes.append(chunk, n);
      if (bytes.size() > limits.max_file_bytes) {
        std::fclose(f);
        throw ResourceExhausted("image file " + QuoteForMessage(path, 256) +
                                ": larger than the limit of " +
                                std::to_string(limits.max_file_bytes) + " bytes");
      }
    }
    const bool failed = std::ferror(f);
    std::fclose(f);
    if (failed) throw NotFound("image file " + QuoteForMessage(path, 256) + ": read error");
  }
  try {
    return DecodeImage(bytes, limits);
  } catch (const Error& e) {
    std::string what = e.what();
    if (what.rfind("image: ", 0) == 0) what = what.substr(7);
    throw Error(e.code(), "image file " + QuoteForMessage(path, 256) + ": " + what);
  }
}

}  // namespace stip
