// libFuzzer target: image decoding (common/image/image_decode.cc: libpng,
// libjpeg-turbo) and the ViT/CLIP preprocessing of whatever decodes.
// Contract: a stip::Error, or an RGB image whose buffer matches its size and
// whose pixel_values have the configured shape and are finite; anything else
// (a crash, an ASan/UBSan report, another exception type) is a finding.
// libpng and libjpeg are Debian's (not instrumented): coverage guides the
// fuzzer through our wrapper and the preprocessing, ASan checks every buffer
// we hand the libraries.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "common/error.h"
#include "common/image/image.h"
#include "common/image/image_processor.h"

namespace {

const stip::ImageProcessorConfig& Clip() {
  static const stip::ImageProcessorConfig c = stip::ParseImageProcessorConfig(
      R"({"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 12},
          "crop_size": {"height": 10, "width": 14}})",
      "fuzz-clip");
  return c;
}

const stip::ImageProcessorConfig& Vit() {
  static const stip::ImageProcessorConfig c = stip::ParseImageProcessorConfig(
      R"({"image_processor_type": "ViTImageProcessor", "size": {"height": 9, "width": 7},
          "resample": 1})",
      "fuzz-vit");
  return c;
}

void CheckPixels(const stip::PixelValues& pv, int height, int width) {
  if (pv.height != height || pv.width != width || pv.channels != 3) abort();
  if (pv.data.size() != static_cast<size_t>(3) * height * width) abort();
  for (float v : pv.data) {
    if (!std::isfinite(v)) abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  stip::DecodeOptions limits;
  limits.max_pixels = 1 << 20;  // keeps each input fast; the limit path is fuzzed too
  stip::Image image;
  try {
    image = stip::DecodeImage(std::string_view(reinterpret_cast<const char*>(data), size), limits);
  } catch (const stip::Error&) {
    return 0;
  }
  if (image.width <= 0 || image.height <= 0) abort();
  if (static_cast<uint64_t>(image.width) * image.height > limits.max_pixels) abort();
  if (image.data.size() != static_cast<size_t>(image.width) * image.height * 3) abort();
  CheckPixels(stip::Preprocess(image, Vit()), 9, 7);
  try {
    CheckPixels(stip::Preprocess(image, Clip()), 10, 14);
  } catch (const stip::Error& e) {
    // Only an aspect ratio too extreme for a 12-pixel shortest edge is refused.
    if (e.code() != stip::ErrorCode::kInvalidArgument) abort();
    const int64_t lo = std::min(image.width, image.height);
    const int64_t hi = std::max(image.width, image.height);
    if (12 * hi / lo <= 16384) abort();
  }
  return 0;
}
