// Image decoding and Hugging Face image preprocessing (common/image/) against
// real oracles:
//  - Debian's Pillow + numpy (tests/image_oracle.py via tests/image_oracle.sh,
//    run at test time) for the
//    decoded RGB of every PNG/JPEG mode, the bytes after Pillow's resize and
//    the center crop, and the float32 pixel_values of transformers' ViT and
//    CLIP processors;
//  - models/vit-digits/reference.safetensors: the pixel_values that
//    transformers computed for the demo model's sample images.
// Bad images (truncated, not an image, huge or zero headers, corrupt data)
// must give a clear stip::Error.
#include "common/image/image.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/format/safetensors.h"
#include "common/image/image_processor.h"
#include "common/image/resample.h"

namespace stip {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// One directory per test process: ctest runs the tests of this file in
// parallel processes.
std::string OracleDir() {
  static const std::string dir =
      std::string(STIP_TEST_BINARY_DIR) + "/image_oracle." + std::to_string(getpid());
  return dir;
}

// Runs tests/image_oracle.py once per test binary run.
class ImageOracleTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // tests/image_oracle.sh uses the system's python3-pil/python3-numpy, or
    // fetches them into the build directory once when they are missing.
    const std::string run = "rm -rf '" + OracleDir() + "' && '" + STIP_SOURCE_DIR +
                            "/tests/image_oracle.sh' '" + STIP_TEST_BINARY_DIR +
                            "/image_oracle_env' '" + OracleDir() + "' '" + STIP_MODELS_DIR +
                            "/vit-digits' 2>&1";
    if (std::system(run.c_str()) != 0) {
      oracle_error_ =
          "tests/image_oracle.sh failed (Debian's python3-pil and python3-numpy: "
          "deploy/install-deps.sh installs them)";
      return;
    }
    manifest_ = nlohmann::json::parse(ReadAll(OracleDir() + "/manifest.json"));
  }
  static void TearDownTestSuite() {
    const std::string rm = "rm -rf '" + OracleDir() + "'";
    if (std::system(rm.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", rm.c_str());
  }
  void SetUp() override { ASSERT_TRUE(oracle_error_.empty()) << oracle_error_; }

  static std::string oracle_error_;
  static nlohmann::json manifest_;
};
std::string ImageOracleTest::oracle_error_;
nlohmann::json ImageOracleTest::manifest_;

TEST_F(ImageOracleTest, DecodesEveryModeAsPillowConvertRgb) {
  ASSERT_GE(manifest_["images"].size(), 25u);
  for (const auto& entry : manifest_["images"]) {
    const std::string file = entry["file"];
    SCOPED_TRACE(file + " (Pillow mode " + entry["mode"].get<std::string>() + ")");
    Image image = LoadImageFile(OracleDir() + "/" + file);
    ASSERT_EQ(image.width, entry["width"].get<int>());
    ASSERT_EQ(image.height, entry["height"].get<int>());
    const std::string want = ReadAll(OracleDir() + "/" + entry["rgb"].get<std::string>());
    ASSERT_EQ(want.size(), image.data.size());
    size_t mismatches = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      mismatches += static_cast<uint8_t>(want[i]) != image.data[i];
    }
    EXPECT_EQ(mismatches, 0u) << "bytes differing from Pillow's convert(\"RGB\")";
  }
}

TEST_F(ImageOracleTest, ExifOrientationCanBeIgnored) {
  DecodeOptions raw;
  raw.apply_exif_orientation = false;
  for (const char* name : {"exif6_14x9.jpg", "exif6_14x9.png", "exif8_14x9.jpg"}) {
    const std::string path = OracleDir() + "/images/" + name;
    const Image upright = LoadImageFile(path);
    EXPECT_EQ(upright.width, 9) << name;
    EXPECT_EQ(upright.height, 14) << name;
    const Image stored = LoadImageFile(path, raw);
    EXPECT_EQ(stored.width, 14) << name;
    EXPECT_EQ(stored.height, 9) << name;
  }
  EXPECT_EQ(ExifOrientation(""), 1);
  EXPECT_EQ(ExifOrientation(std::string("Exif\0\0MM\0\x2a\xff\xff\xff\xff", 14)), 1);
}

TEST_F(ImageOracleTest, ResizeAndCropMatchPillowExactly) {
  size_t cases = 0;
  for (const auto& c : manifest_["cases"]) {
    SCOPED_TRACE(c["image"].get<std::string>() + " with " + c["config"].get<std::string>());
    const ImageProcessorConfig config =
        LoadImageProcessorConfig(OracleDir() + "/" + c["config"].get<std::string>());
    const Image out =
        ResizeAndCrop(LoadImageFile(OracleDir() + "/" + c["image"].get<std::string>()), config);
    ASSERT_EQ(out.height, c["height"].get<int>());
    ASSERT_EQ(out.width, c["width"].get<int>());
    const std::string want = ReadAll(OracleDir() + "/" + c["resized"].get<std::string>());
    ASSERT_EQ(want.size(), out.data.size());
    int max_diff = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      max_diff = std::max(max_diff, std::abs(static_cast<uint8_t>(want[i]) - out.data[i]));
    }
    EXPECT_EQ(max_diff, 0) << "largest byte difference from Pillow's resize";
    ++cases;
  }
  EXPECT_GE(cases, 300u);
}

TEST_F(ImageOracleTest, PixelValuesMatchTransformers) {
  // Bit-identical float32: the resized bytes are equal (checked above), and
  // rescale (double product, float32 result) and normalize (float32) are the
  // same IEEE operations as numpy's. Measured: 0 on all cases.
  constexpr double kTolerance = 0;
  double worst = 0;
  for (const auto& c : manifest_["cases"]) {
    SCOPED_TRACE(c["image"].get<std::string>() + " with " + c["config"].get<std::string>());
    const ImageProcessorConfig config =
        LoadImageProcessorConfig(OracleDir() + "/" + c["config"].get<std::string>());
    const PixelValues pv =
        Preprocess(LoadImageFile(OracleDir() + "/" + c["image"].get<std::string>()), config);
    ASSERT_EQ(pv.channels, 3);
    ASSERT_EQ(pv.height, c["height"].get<int>());
    ASSERT_EQ(pv.width, c["width"].get<int>());
    const std::string want = ReadAll(OracleDir() + "/" + c["pixels"].get<std::string>());
    ASSERT_EQ(want.size(), pv.data.size() * sizeof(float));
    double max_diff = 0;
    for (size_t i = 0; i < pv.data.size(); ++i) {
      float w;
      std::memcpy(&w, want.data() + i * sizeof(float), sizeof(float));
      max_diff = std::max(max_diff, std::fabs(static_cast<double>(w) - pv.data[i]));
    }
    EXPECT_LE(max_diff, kTolerance);
    worst = std::max(worst, max_diff);
  }
  std::printf("largest |pixel_values - transformers| over all cases: %g\n", worst);
  RecordProperty("max_abs_diff", std::to_string(worst));
}

// The pixel_values that transformers 5.17 computed when the demo model was
// made. Its default (fast, torchvision) ViT processor fuses rescale and
// normalize into (x - 255 mean) / (255 std) in float32, which differs from
// the slow processor's arithmetic (ours, bit-identical to it above) by at
// most one float32 ulp. Measured: 1.19e-7 (one ulp below 1.0).
TEST(ImageTest, VitDigitsSamplesMatchTheirReferencePixelValues) {
  const std::string dir = std::string(STIP_MODELS_DIR) + "/vit-digits";
  const auto reference = nlohmann::json::parse(ReadAll(dir + "/reference.json"));
  const auto tensors = SafetensorsFile::Open(dir + "/reference.safetensors");
  const TensorInfo& info = tensors->Get("pixel_values");
  ASSERT_EQ(info.shape, (std::vector<int64_t>{8, 3, 32, 32}));
  const float* want = reinterpret_cast<const float*>(tensors->Data(info));
  const ImageProcessorConfig config = LoadImageProcessorConfig(dir);
  ASSERT_EQ(reference["samples"].size(), 8u);
  double worst = 0;
  for (size_t s = 0; s < 8; ++s) {
    const std::string file = reference["samples"][s]["file"];
    const PixelValues pv = Preprocess(LoadImageFile(dir + "/" + file), config);
    ASSERT_EQ(pv.data.size(), 3u * 32 * 32) << file;
    double max_diff = 0;
    for (size_t i = 0; i < pv.data.size(); ++i) {
      max_diff = std::max(max_diff, std::fabs(double(want[s * 3072 + i]) - pv.data[i]));
    }
    EXPECT_LE(max_diff, 2.4e-7) << file;  // two ulps at |x| <= 1
    worst = std::max(worst, max_diff);
  }
  std::printf("largest |pixel_values - vit-digits reference|: %g\n", worst);
}

// ------------------------------------------------------------ bad images

uint32_t Crc32(const std::string& data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char b : data) {
    crc ^= b;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

std::string Be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

std::string PngChunk(const std::string& tag, const std::string& data) {
  return Be32(static_cast<uint32_t>(data.size())) + tag + data + Be32(Crc32(tag + data));
}

// A PNG signature and IHDR (8-bit RGB) claiming width x height, then `rest`.
std::string PngWithHeader(uint32_t width, uint32_t height, const std::string& rest = "") {
  std::string ihdr = Be32(width) + Be32(height) + std::string("\x08\x02\x00\x00\x00", 5);
  return std::string("\x89PNG\r\n\x1a\n", 8) + PngChunk("IHDR", ihdr) + rest;
}

// A baseline JPEG's SOI + SOF0 claiming width x height (3 components), then EOI.
std::string JpegWithHeader(uint16_t width, uint16_t height) {
  std::string sof = std::string("\xFF\xC0\x00\x11\x08", 5);
  sof += static_cast<char>(height >> 8);
  sof += static_cast<char>(height & 0xFF);
  sof += static_cast<char>(width >> 8);
  sof += static_cast<char>(width & 0xFF);
  sof += std::string("\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01", 10);
  return std::string("\xFF\xD8", 2) + sof + std::string("\xFF\xD9", 2);
}

// A real JPEG with its SOF0 size replaced: the rest of the file (tables,
// scan) is intact, so only the size is wrong.
std::string JpegClaiming(std::string jpeg, uint16_t width, uint16_t height) {
  const size_t sof = jpeg.find("\xFF\xC0");
  EXPECT_NE(sof, std::string::npos);
  jpeg[sof + 5] = static_cast<char>(height >> 8);
  jpeg[sof + 6] = static_cast<char>(height & 0xFF);
  jpeg[sof + 7] = static_cast<char>(width >> 8);
  jpeg[sof + 8] = static_cast<char>(width & 0xFF);
  return jpeg;
}

// A real PNG with its IHDR size replaced (and the CRC recomputed).
std::string PngClaiming(const std::string& png, uint32_t width, uint32_t height) {
  std::string ihdr = Be32(width) + Be32(height) + png.substr(24, 5);
  return png.substr(0, 8) + PngChunk("IHDR", ihdr) + png.substr(33);
}

std::string SamplePng() {
  return ReadAll(std::string(STIP_MODELS_DIR) + "/vit-digits/samples/digit3_idx705.png");
}

std::string SampleJpeg() {
  return ReadAll(std::string(STIP_SOURCE_DIR) + "/fuzz/corpus/image/photo_16x12.jpg");
}

// Expects DecodeImage to throw `code` with every word of `needles` in the message.
void ExpectDecodeError(const std::string& bytes, ErrorCode code,
                       const std::vector<std::string>& needles, const DecodeOptions& limits = {}) {
  try {
    DecodeImage(bytes, limits);
    ADD_FAILURE() << "decoded without an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const auto& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "'" << n << "' not in: " << e.what();
  }
}

TEST(ImageTest, SamplesDecode) {
  const Image png = DecodeImage(SamplePng());
  EXPECT_EQ(png.width, 32);
  EXPECT_EQ(png.height, 32);
  const Image jpeg = DecodeImage(SampleJpeg());
  EXPECT_EQ(jpeg.width, 16);
  EXPECT_EQ(jpeg.height, 12);
  EXPECT_EQ(SniffImageFormat(SamplePng()), ImageFormat::kPng);
  EXPECT_EQ(SniffImageFormat(SampleJpeg()), ImageFormat::kJpeg);
}

TEST(ImageTest, TruncatedImagesAreRefused) {
  const std::string png = SamplePng();
  for (size_t keep : {size_t{9}, size_t{20}, size_t{40}, png.size() / 2, png.size() - 13}) {
    SCOPED_TRACE("PNG cut to " + std::to_string(keep) + " bytes");
    ExpectDecodeError(png.substr(0, keep), ErrorCode::kInvalidArgument, {"PNG", "truncated"});
  }
  const std::string jpeg = SampleJpeg();
  for (size_t keep : {size_t{4}, size_t{30}, jpeg.size() / 2, jpeg.size() - 3}) {
    SCOPED_TRACE("JPEG cut to " + std::to_string(keep) + " bytes");
    ExpectDecodeError(jpeg.substr(0, keep), ErrorCode::kInvalidArgument, {"JPEG"});
  }
  ExpectDecodeError(jpeg.substr(0, jpeg.size() / 2), ErrorCode::kInvalidArgument,
                    {"JPEG", "truncated"});
  // Only the final EOI marker missing: every pixel is there.
  ASSERT_EQ(jpeg.substr(jpeg.size() - 2), "\xFF\xD9");
  EXPECT_EQ(DecodeImage(jpeg.substr(0, jpeg.size() - 2)).data, DecodeImage(jpeg).data);
  // A progressive JPEG needs all of its scans before the first scanline.
  const std::string progressive =
      ReadAll(std::string(STIP_SOURCE_DIR) + "/fuzz/corpus/image/progressive_16x12.jpg");
  ExpectDecodeError(progressive.substr(0, progressive.size() - 2), ErrorCode::kInvalidArgument,
                    {"JPEG", "truncated"});
}

TEST(ImageTest, NotAnImageIsRefused) {
  ExpectDecodeError("hello, world", ErrorCode::kInvalidArgument, {"not a PNG or JPEG", "hello, w"});
  ExpectDecodeError("", ErrorCode::kInvalidArgument, {"not a PNG or JPEG", "empty"});
  ExpectDecodeError("GIF89a\x01\x00\x01\x00", ErrorCode::kInvalidArgument, {"not a PNG or JPEG"});
  // A PNG signature with no chunks, a JPEG SOI with garbage.
  ExpectDecodeError(std::string("\x89PNG\r\n\x1a\n", 8), ErrorCode::kInvalidArgument, {"PNG"});
  ExpectDecodeError(std::string("\xFF\xD8\xFF", 3) + std::string(100, 'x'),
                    ErrorCode::kInvalidArgument, {"JPEG"});
}

TEST(ImageTest, HugeHeadersAreRefusedBeforeAllocating) {
  // 100000 x 100000 RGB would be 30 GB; nothing follows the header, so only
  // an early refusal gives ResourceExhausted (not "truncated").
  ExpectDecodeError(PngWithHeader(100000, 100000), ErrorCode::kResourceExhausted,
                    {"100000 x 100000", "limit of 89478485 pixels"});
  ExpectDecodeError(PngClaiming(SamplePng(), 100000, 100000), ErrorCode::kResourceExhausted,
                    {"100000 x 100000", "limit of 89478485 pixels"});
  // JPEG sizes stop at 65535.
  ExpectDecodeError(JpegClaiming(SampleJpeg(), 60000, 60000), ErrorCode::kResourceExhausted,
                    {"60000 x 60000", "limit"});
  // Beyond libpng's own 1000000-pixel side limit.
  ExpectDecodeError(PngWithHeader(2000000, 1), ErrorCode::kInvalidArgument, {"PNG"});
  // The limit is configurable.
  DecodeOptions small;
  small.max_pixels = 32 * 31;
  ExpectDecodeError(SamplePng(), ErrorCode::kResourceExhausted, {"32 x 32", "limit of 992"}, small);
  small.max_pixels = 32 * 32;
  EXPECT_EQ(DecodeImage(SamplePng(), small).width, 32);
  DecodeOptions tiny_file;
  tiny_file.max_file_bytes = 100;
  ExpectDecodeError(SamplePng(), ErrorCode::kResourceExhausted, {"limit of 100 bytes"}, tiny_file);
}

TEST(ImageTest, ZeroSizesAreRefused) {
  ExpectDecodeError(PngWithHeader(0, 10), ErrorCode::kInvalidArgument, {"PNG"});
  ExpectDecodeError(PngWithHeader(10, 0), ErrorCode::kInvalidArgument, {"PNG"});
  ExpectDecodeError(PngClaiming(SamplePng(), 32, 0), ErrorCode::kInvalidArgument,
                    {"PNG", "zero size"});
  ExpectDecodeError(JpegWithHeader(0, 10), ErrorCode::kInvalidArgument, {"JPEG"});
  ExpectDecodeError(JpegWithHeader(10, 0), ErrorCode::kInvalidArgument, {"JPEG"});
  ExpectDecodeError(JpegClaiming(SampleJpeg(), 0, 12), ErrorCode::kInvalidArgument, {"JPEG"});
  ExpectDecodeError(JpegClaiming(SampleJpeg(), 16, 0), ErrorCode::kInvalidArgument, {"JPEG"});
}

TEST(ImageTest, CorruptDataIsRefused) {
  std::string png = SamplePng();
  const size_t idat = png.find("IDAT");
  ASSERT_NE(idat, std::string::npos);
  const uint32_t len = (uint8_t(png[idat - 4]) << 24) | (uint8_t(png[idat - 3]) << 16) |
                       (uint8_t(png[idat - 2]) << 8) | uint8_t(png[idat - 1]);
  // A flipped bit in IDAT's CRC.
  std::string bad_crc = png;
  bad_crc[idat + 4 + len] ^= 0x01;
  ExpectDecodeError(bad_crc, ErrorCode::kInvalidArgument, {"PNG", "CRC"});
  // A flipped byte inside IDAT: zlib stops on it before the CRC is read.
  std::string flipped = png;
  flipped[idat + 10] ^= 0x55;
  ExpectDecodeError(flipped, ErrorCode::kInvalidArgument, {"PNG", "IDAT"});
  // Corrupt data with a matching CRC: the zlib stream itself is bad.
  std::string data = png.substr(idat + 4, len);
  for (size_t i = 2; i < data.size(); i += 7) data[i] ^= 0xA5;
  std::string bad_zlib =
      png.substr(0, idat - 4) + PngChunk("IDAT", data) + png.substr(idat + 4 + len + 4);
  ExpectDecodeError(bad_zlib, ErrorCode::kInvalidArgument, {"PNG"});
  // JPEG: garbage in the entropy-coded data after the scan header.
  std::string jpeg = SampleJpeg();
  const size_t sos = jpeg.find("\xFF\xDA");
  ASSERT_NE(sos, std::string::npos);
  for (size_t i = sos + 20; i + 2 < jpeg.size(); i += 3) jpeg[i] = static_cast<char>(0xFF);
  ExpectDecodeError(jpeg, ErrorCode::kInvalidArgument, {"JPEG"});
}

TEST(ImageTest, FileErrorsNameThePath) {
  try {
    LoadImageFile("/nonexistent/cat.png");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/cat.png"), std::string::npos);
  }
  try {
    LoadImageFile(std::string(STIP_MODELS_DIR) + "/vit-digits/config.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not a PNG or JPEG"), std::string::npos) << e.what();
  }
}

// ------------------------------------------------------------ configs

void ExpectConfigError(const std::string& json_text, ErrorCode code, const std::string& needle) {
  try {
    ParseImageProcessorConfig(json_text, "preprocessor_config.json");
    ADD_FAILURE() << "accepted " << json_text;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(ImageTest, ProcessorConfigDefaultsAndErrors) {
  const auto vit =
      ParseImageProcessorConfig(R"({"image_processor_type": "ViTImageProcessor"})", "x");
  EXPECT_EQ(vit.resize_height, 224);
  EXPECT_EQ(vit.resample, Resample::kBilinear);
  EXPECT_FALSE(vit.do_center_crop);
  const auto clip = ParseImageProcessorConfig(
      R"({"image_processor_type": "CLIPImageProcessor", "size": 336, "crop_size": 336})", "x");
  EXPECT_EQ(clip.shortest_edge, 336);
  EXPECT_EQ(clip.crop_width, 336);
  EXPECT_EQ(clip.resample, Resample::kBicubic);
  EXPECT_DOUBLE_EQ(clip.image_mean[0], 0.48145466);

  ExpectConfigError("{", ErrorCode::kInvalidArgument, "not a JSON object");
  ExpectConfigError("{}", ErrorCode::kInvalidArgument, "image_processor_type");
  ExpectConfigError(R"({"image_processor_type": "SiglipImageProcessor"})",
                    ErrorCode::kUnimplemented, "SiglipImageProcessor");
  ExpectConfigError(R"({"image_processor_type": "ViTImageProcessor", "size": {"height": 0,
                    "width": 3}})",
                    ErrorCode::kInvalidArgument, "size.height");
  ExpectConfigError(R"({"image_processor_type": "ViTImageProcessor", "size": "big"})",
                    ErrorCode::kInvalidArgument, "size");
  ExpectConfigError(R"({"image_processor_type": "ViTImageProcessor", "resample": 9})",
                    ErrorCode::kInvalidArgument, "resample");
  ExpectConfigError(R"({"image_processor_type": "ViTImageProcessor", "image_std": [1, 0, 1]})",
                    ErrorCode::kInvalidArgument, "std");
  ExpectConfigError(R"({"image_processor_type": "ViTImageProcessor", "image_mean": [1, 2]})",
                    ErrorCode::kInvalidArgument, "image_mean");
  ExpectConfigError(R"({"image_processor_type": "CLIPImageProcessor", "do_pad": true})",
                    ErrorCode::kUnimplemented, "do_pad");
  try {
    LoadImageProcessorConfig("/nonexistent-model");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
  }
}

TEST(ImageTest, ExtremeAspectRatiosAreRefusedNotAllocated) {
  // A 1-pixel-high image resized to a shortest edge of 224 would be 224 x 2e7.
  Image strip;
  strip.width = 100000;
  strip.height = 1;
  strip.data.assign(300000, 7);
  const auto clip =
      ParseImageProcessorConfig(R"({"image_processor_type": "CLIPImageProcessor"})", "x");
  try {
    Preprocess(strip, clip);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("100000 x 1"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace stip
