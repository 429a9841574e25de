// Pillow's image resizing on 8-bit RGB images, bit for bit: what Hugging Face
// image processors run when they call `PIL.Image.resize` on a uint8 array
// (transformers' image_transforms.resize). Torch-free.
//
// The convolution filters (Pillow's libImaging/Resample.c, ImagingResample):
// separable, horizontal pass first, then vertical; each output sample is a
// weighted sum over the input samples within the filter's support, the
// support scaled by the downscale factor (antialiasing); the weights are
// computed in double, normalized to sum 1, then turned into 22-bit fixed
// point; each pass rounds and clamps to 8 bits. NEAREST is Pillow's affine
// scale (Geometry.c, ImagingScaleAffine).
#pragma once

#include "common/image/image.h"

namespace stip {

// PIL.Image.Resampling values, as `resample` in preprocessor_config.json.
enum class Resample {
  kNearest = 0,
  kLanczos = 1,
  kBilinear = 2,
  kBicubic = 3,
  kBox = 4,
  kHamming = 5,
};

// "bilinear", "bicubic", ... for messages.
const char* ResampleName(Resample resample);

// PIL's `image.resize((width, height), resample)`. Throws kInvalidArgument
// for a non-positive size.
Image ResizeImage(const Image& image, int width, int height, Resample resample);

}  // namespace stip
