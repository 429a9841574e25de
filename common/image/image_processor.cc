// Hugging Face's ViTImageProcessor and CLIPImageProcessor (slow, PIL-based):
// transformers/models/vit/image_processing_vit.py,
// transformers/models/clip/image_processing_clip.py,
// transformers/image_transforms.py (resize, center_crop, rescale, normalize,
// get_resize_output_image_size) and image_processing_utils.get_size_dict.
#include "common/image/image_processor.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"

namespace stip {
namespace {

// Largest side a config may ask for; far above any vision model's input.
constexpr int kMaxSide = 16384;

// transformers.image_utils constants.
constexpr std::array<double, 3> kImagenetStandardMean{0.5, 0.5, 0.5};
constexpr std::array<double, 3> kImagenetStandardStd{0.5, 0.5, 0.5};
constexpr std::array<double, 3> kOpenAiClipMean{0.48145466, 0.4578275, 0.40821073};
constexpr std::array<double, 3> kOpenAiClipStd{0.26862954, 0.26130258, 0.27577711};

using json = nlohmann::json;

std::string Field(const std::string& source, const std::string& key) {
  return source + ": \"" + key + "\"";
}

int GetSide(const json& v, const std::string& source, const std::string& key) {
  if (!v.is_number_integer()) {
    throw InvalidArgument(Field(source, key) + " must be an integer, not " +
                          QuoteForMessage(v.dump()));
  }
  const int64_t n = v.get<int64_t>();
  if (n <= 0 || n > kMaxSide) {
    throw InvalidArgument(Field(source, key) + " is " + std::to_string(n) + ", outside 1.." +
                          std::to_string(kMaxSide));
  }
  return static_cast<int>(n);
}

bool GetBool(const json& j, const std::string& key, bool fallback, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    throw InvalidArgument(Field(source, key) + " must be true or false, not " +
                          QuoteForMessage(it->dump()));
  }
  return it->get<bool>();
}

std::array<double, 3> GetTriple(const json& j, const std::string& key,
                                const std::array<double, 3>& fallback, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (it->is_number()) {
    const double v = it->get<double>();
    return {v, v, v};
  }
  if (it->is_array() && it->size() == 3 && (*it)[0].is_number() && (*it)[1].is_number() &&
      (*it)[2].is_number()) {
    return {(*it)[0].get<double>(), (*it)[1].get<double>(), (*it)[2].get<double>()};
  }
  throw InvalidArgument(Field(source, key) +
                        " must be a number or 3 numbers (one per RGB "
                        "channel), not " +
                        QuoteForMessage(it->dump()));
}

// get_size_dict for `size`: an int means a square (ViT, default_to_square)
// or the shortest edge (CLIP); [h, w] a fixed size; a dict names its keys.
void ParseSize(const json& v, bool default_to_square, const std::string& source,
               ImageProcessorConfig& c) {
  c.resize_height = c.resize_width = c.shortest_edge = 0;
  if (v.is_number_integer()) {
    const int s = GetSide(v, source, "size");
    if (default_to_square) {
      c.resize_height = c.resize_width = s;
    } else {
      c.shortest_edge = s;
    }
    return;
  }
  if (v.is_array() && v.size() == 2) {
    c.resize_height = GetSide(v[0], source, "size[0]");
    c.resize_width = GetSide(v[1], source, "size[1]");
    return;
  }
  if (v.is_object()) {
    if (v.contains("height") && v.contains("width") && v.size() == 2) {
      c.resize_height = GetSide(v["height"], source, "size.height");
      c.resize_width = GetSide(v["width"], source, "size.width");
      return;
    }
    if (v.contains("shortest_edge") && !v.contains("height") && !v.contains("width")) {
      if (v.contains("longest_edge") && !v["longest_edge"].is_null()) {
        throw Unimplemented(Field(source, "size") + " with longest_edge is not supported");
      }
      c.shortest_edge = GetSide(v["shortest_edge"], source, "size.shortest_edge");
      return;
    }
  }
  throw InvalidArgument(Field(source, "size") +
                        " must be an integer, [height, width], {\"height\", \"width\"} or "
                        "{\"shortest_edge\"}, not " +
                        QuoteForMessage(v.dump()));
}

void ParseCropSize(const json& v, const std::string& source, ImageProcessorConfig& c) {
  if (v.is_number_integer()) {
    c.crop_height = c.crop_width = GetSide(v, source, "crop_size");
    return;
  }
  if (v.is_object() && v.contains("height") && v.contains("width")) {
    c.crop_height = GetSide(v["height"], source, "crop_size.height");
    c.crop_width = GetSide(v["width"], source, "crop_size.width");
    return;
  }
  throw InvalidArgument(Field(source, "crop_size") +
                        " must be an integer or {\"height\", \"width\"}, not " +
                        QuoteForMessage(v.dump()));
}

float ToFloat32(double v) { return static_cast<float>(v); }

}  // namespace

void ImageProcessorConfig::Validate() const {
  auto bad = [](const std::string& m) { return InvalidArgument("image processor: " + m); };
  if (do_resize) {
    const bool fixed = resize_height > 0 && resize_width > 0;
    if (fixed == (shortest_edge > 0)) {
      throw bad("resizing needs either size {height, width} or size {shortest_edge}");
    }
    if (std::max({resize_height, resize_width, shortest_edge}) > kMaxSide) {
      throw bad("the resize size exceeds " + std::to_string(kMaxSide));
    }
  }
  if (do_center_crop &&
      (crop_height <= 0 || crop_width <= 0 || crop_height > kMaxSide || crop_width > kMaxSide)) {
    throw bad("crop_size " + std::to_string(crop_height) + " x " + std::to_string(crop_width) +
              " is outside 1.." + std::to_string(kMaxSide));
  }
  if (do_rescale && !std::isfinite(rescale_factor)) throw bad("rescale_factor is not finite");
  if (do_normalize) {
    for (int c = 0; c < 3; ++c) {
      if (!std::isfinite(image_mean[c]) || !std::isfinite(image_std[c]) ||
          ToFloat32(image_std[c]) == 0.0f) {
        throw bad("image_mean/image_std of channel " + std::to_string(c) +
                  " must be finite with a non-zero std");
      }
    }
  }
}

ImageProcessorConfig ParseImageProcessorConfig(const std::string& json_text,
                                               const std::string& source) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    throw InvalidArgument(source + ": not a JSON object");
  }
  std::string type;
  for (const char* key : {"image_processor_type", "feature_extractor_type"}) {
    auto it = j.find(key);
    if (it != j.end() && it->is_string()) {
      type = it->get<std::string>();
      break;
    }
  }
  ImageProcessorConfig c;
  bool clip;
  if (type == "ViTImageProcessor" || type == "ViTFeatureExtractor") {
    clip = false;
    c.processor_type = "ViTImageProcessor";
    c.resize_height = c.resize_width = 224;
    c.resample = Resample::kBilinear;
    c.image_mean = kImagenetStandardMean;
    c.image_std = kImagenetStandardStd;
  } else if (type == "CLIPImageProcessor" || type == "CLIPFeatureExtractor") {
    clip = true;
    c.processor_type = "CLIPImageProcessor";
    c.shortest_edge = 224;
    c.resample = Resample::kBicubic;
    c.do_center_crop = true;
    c.crop_height = c.crop_width = 224;
    c.image_mean = kOpenAiClipMean;
    c.image_std = kOpenAiClipStd;
  } else if (type.empty()) {
    throw InvalidArgument(source + ": no \"image_processor_type\" names the processor");
  } else {
    throw Unimplemented(source + ": image processor " + QuoteForMessage(type) +
                        " is not supported (ViTImageProcessor, CLIPImageProcessor)");
  }

  c.do_resize = GetBool(j, "do_resize", true, source);
  if (j.contains("size") && !j["size"].is_null()) ParseSize(j["size"], !clip, source, c);
  if (auto it = j.find("resample"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > 5) {
      throw InvalidArgument(Field(source, "resample") +
                            " must be a PIL resampling filter 0..5, not " +
                            QuoteForMessage(it->dump()));
    }
    c.resample = static_cast<Resample>(it->get<int>());
  }
  if (clip) {
    c.do_center_crop = GetBool(j, "do_center_crop", true, source);
    if (j.contains("crop_size") && !j["crop_size"].is_null()) {
      ParseCropSize(j["crop_size"], source, c);
    }
  } else if (GetBool(j, "do_center_crop", false, source)) {
    throw Unimplemented(Field(source, "do_center_crop") + " is not part of " + c.processor_type);
  }
  c.do_rescale = GetBool(j, "do_rescale", true, source);
  if (auto it = j.find("rescale_factor"); it != j.end() && !it->is_null()) {
    if (!it->is_number()) {
      throw InvalidArgument(Field(source, "rescale_factor") + " must be a number");
    }
    c.rescale_factor = it->get<double>();
  }
  c.do_normalize = GetBool(j, "do_normalize", true, source);
  c.image_mean = GetTriple(j, "image_mean", c.image_mean, source);
  c.image_std = GetTriple(j, "image_std", c.image_std, source);
  // Options of other processors that would change the pixels if honoured.
  for (const char* key : {"do_pad", "do_reduce_labels", "do_flip_channel_order"}) {
    if (GetBool(j, key, false, source)) {
      throw Unimplemented(Field(source, key) + " is not supported by " + c.processor_type);
    }
  }
  c.Validate();
  return c;
}

ImageProcessorConfig LoadImageProcessorConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/preprocessor_config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw NotFound("image processor: " + path + " is missing");
  std::ostringstream text;
  text << in.rdbuf();
  return ParseImageProcessorConfig(text.str(), path);
}

namespace {

// image_transforms.center_crop on an HWC uint8 image: offsets
// (in - crop) // 2 (floor), zeros where the crop extends past the image.
Image CenterCrop(const Image& in, int crop_height, int crop_width) {
  auto floordiv2 = [](int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); };
  const int top = floordiv2(in.height - crop_height);
  const int left = floordiv2(in.width - crop_width);
  if (top == 0 && left == 0 && crop_height == in.height && crop_width == in.width) return in;
  // When padding, transformers pads by ceil((new - in) / 2) first and then
  // crops from top + pad; both give the same source offset `top`/`left`.
  Image out;
  out.width = crop_width;
  out.height = crop_height;
  out.data.assign(static_cast<size_t>(crop_width) * crop_height * 3, 0);
  for (int y = 0; y < crop_height; ++y) {
    const int sy = y + top;
    if (sy < 0 || sy >= in.height) continue;
    for (int x = 0; x < crop_width; ++x) {
      const int sx = x + left;
      if (sx < 0 || sx >= in.width) continue;
      for (int c = 0; c < 3; ++c) {
        out.data[(static_cast<size_t>(y) * crop_width + x) * 3 + c] = in.at(sy, sx, c);
      }
    }
  }
  return out;
}

}  // namespace

Image ResizeAndCrop(const Image& image, const ImageProcessorConfig& config) {
  config.Validate();
  if (image.width <= 0 || image.height <= 0 ||
      image.data.size() != static_cast<size_t>(image.width) * image.height * 3) {
    throw InvalidArgument("image processor: the image is empty or its buffer does not match " +
                          std::to_string(image.width) + " x " + std::to_string(image.height));
  }
  Image out = image;
  if (config.do_resize) {
    int height, width;
    if (config.shortest_edge > 0) {
      // get_resize_output_image_size(default_to_square=False): the short side
      // becomes `size`, the long one int(size * long / short).
      const int64_t s = config.shortest_edge;
      const bool portrait = image.width <= image.height;
      const int64_t short_side = portrait ? image.width : image.height;
      const int64_t long_side = portrait ? image.height : image.width;
      const double scaled = static_cast<double>(s * long_side) / static_cast<double>(short_side);
      if (scaled > kMaxSide) {
        throw InvalidArgument("image processor: resizing the " + std::to_string(image.width) +
                              " x " + std::to_string(image.height) +
                              " image to a shortest edge of " + std::to_string(s) +
                              " makes its long side exceed " + std::to_string(kMaxSide));
      }
      const int new_long = static_cast<int>(scaled);
      height = portrait ? new_long : static_cast<int>(s);
      width = portrait ? static_cast<int>(s) : new_long;
    } else {
      height = config.resize_height;
      width = config.resize_width;
    }
    out = ResizeImage(out, width, height, config.resample);
  }
  if (config.do_center_crop) out = CenterCrop(out, config.crop_height, config.crop_width);
  return out;
}

PixelValues Preprocess(const Image& image, const ImageProcessorConfig& config) {
  const Image ready = ResizeAndCrop(image, config);
  PixelValues pv;
  pv.height = ready.height;
  pv.width = ready.width;
  const size_t plane = static_cast<size_t>(pv.height) * pv.width;
  pv.data.resize(plane * 3);
  for (int c = 0; c < 3; ++c) {
    // Per-channel lookup over the 256 byte values, with transformers' float
    // arithmetic: rescale in double then float32; normalize in float32.
    float table[256];
    const float mean = ToFloat32(config.image_mean[c]);
    const float std = ToFloat32(config.image_std[c]);
    for (int v = 0; v < 256; ++v) {
      float x =
          config.do_rescale ? static_cast<float>(v * config.rescale_factor) : static_cast<float>(v);
      if (config.do_normalize) {
        x = (x - mean) / std;
      }
      table[v] = x;
    }
    float* dst = pv.data.data() + plane * c;
    for (size_t i = 0; i < plane; ++i) dst[i] = table[ready.data[i * 3 + c]];
  }
  return pv;
}

}  // namespace stip
