// Hugging Face image processors: an RGB image to the `pixel_values` tensor a
// vision model takes, driven by the model directory's preprocessor_config.json.
// Torch-free (library stip_image).
//
// Supported `image_processor_type`s (or legacy `feature_extractor_type`s):
//   ViTImageProcessor (ViTFeatureExtractor): resize to size {height, width}
//     (default 224 x 224, BILINEAR), rescale, normalize (default mean/std 0.5).
//   CLIPImageProcessor (CLIPFeatureExtractor): resize the shortest edge to
//     size.shortest_edge keeping the aspect ratio (default 224, BICUBIC),
//     center crop to crop_size (default 224 x 224), rescale, normalize
//     (default OpenAI CLIP mean/std).
// Anything else is kUnimplemented naming the type. The steps and their
// arithmetic follow transformers' slow (PIL) processors exactly:
//   1. RGB conversion: DecodeImage already gives RGB (Pillow's convert("RGB"),
//      as transformers' load_image and convert_to_rgb do);
//   2. resize: Pillow's Image.resize on the uint8 image (resample.h), output
//      size from image_transforms.get_resize_output_image_size;
//   3. center crop: image_transforms.center_crop (offsets (in - crop) // 2,
//      zero padding where the crop is larger than the image);
//   4. rescale: float32(uint8 * rescale_factor), the product in double;
//   5. normalize: (x - float32(mean[c])) / float32(std[c]) in float32;
//   6. channels first: [3, height, width].
// These give Pillow's resized bytes exactly and pixel values equal to
// transformers' float32 ones (tests/image_test.cc measures both against
// Debian's Pillow and numpy).
//
// Typical use on the client:
//   ImageProcessorConfig config = LoadImageProcessorConfig(model_dir);
//   PixelValues pixels = Preprocess(LoadImageFile(path), config);
//   // pixels.data: 3 * pixels.height * pixels.width floats, CHW
#pragma once

#include <array>
#include <string>
#include <vector>

#include "common/image/image.h"
#include "common/image/resample.h"

namespace stip {

struct ImageProcessorConfig {
  // "ViTImageProcessor" or "CLIPImageProcessor".
  std::string processor_type;

  bool do_resize = true;
  // Exactly one of the two resize modes is set when do_resize:
  //   fixed: resize_height x resize_width (ViT);
  //   shortest edge: shortest_edge > 0 (CLIP).
  int resize_height = 0;
  int resize_width = 0;
  int shortest_edge = 0;
  Resample resample = Resample::kBilinear;

  bool do_center_crop = false;
  int crop_height = 0;
  int crop_width = 0;

  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;

  bool do_normalize = true;
  std::array<double, 3> image_mean{0.5, 0.5, 0.5};
  std::array<double, 3> image_std{0.5, 0.5, 0.5};

  // Checks sizes, mean and std; throws kInvalidArgument naming the field.
  void Validate() const;
};

// Parses a preprocessor_config.json (`source` names it in errors). Fields
// absent from the file take the processor class's defaults, as
// transformers' from_pretrained does. kInvalidArgument for malformed JSON or
// values, kUnimplemented for processors or options not supported.
ImageProcessorConfig ParseImageProcessorConfig(const std::string& json_text,
                                               const std::string& source);

// Reads `<model_dir>/preprocessor_config.json` (kNotFound when absent).
ImageProcessorConfig LoadImageProcessorConfig(const std::string& model_dir);

// The geometric steps (resize, center crop) on the uint8 image: what the
// processor holds just before rescaling. Exposed for tests and previews.
Image ResizeAndCrop(const Image& image, const ImageProcessorConfig& config);

// The output of Preprocess: one image's pixel_values, channels first.
struct PixelValues {
  int channels = Image::kChannels;
  int height = 0;
  int width = 0;
  std::vector<float> data;  // [channels][height][width]
};

// The full pipeline: ResizeAndCrop, rescale, normalize, channels first.
PixelValues Preprocess(const Image& image, const ImageProcessorConfig& config);

}  // namespace stip
