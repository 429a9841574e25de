// Pillow's resampling (libImaging/Resample.c and Geometry.c of Pillow 9.4,
// unchanged in this respect since Pillow 4.3), re-implemented for 8-bit RGB.
#include "common/image/resample.h"

#include <cmath>
#include <string>
#include <vector>

#include "common/error.h"

namespace stip {
namespace {

// 32 bits of accumulator: 8 for the sample, 2 for overshoot of filters with
// negative lobes, the rest for the weights.
constexpr int kPrecisionBits = 32 - 8 - 2;

double BoxFilter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double BilinearFilter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

double HammingFilter(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * M_PI;
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));
}

double BicubicFilter(double x) {
  // Keys' cubic convolution with a = -0.5.
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double Sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return std::sin(x) / x;
}

double LanczosFilter(double x) {
  if (-3.0 <= x && x < 3.0) return Sinc(x) * Sinc(x / 3);
  return 0.0;
}

struct Filter {
  double (*fn)(double);
  double support;
};

Filter FilterFor(Resample resample) {
  switch (resample) {
    case Resample::kBox:
      return {BoxFilter, 0.5};
    case Resample::kBilinear:
      return {BilinearFilter, 1.0};
    case Resample::kHamming:
      return {HammingFilter, 1.0};
    case Resample::kBicubic:
      return {BicubicFilter, 2.0};
    case Resample::kLanczos:
      return {LanczosFilter, 3.0};
    case Resample::kNearest:
      break;
  }
  throw Internal("resample: no convolution filter for nearest");
}

// Per output sample: the first input sample and how many follow, and the
// weights (ksize per output sample) in fixed point.
struct Coefficients {
  int ksize = 0;
  std::vector<int> bounds;  // xmin, count per output sample
  std::vector<int32_t> k;   // ksize per output sample
};

Coefficients PrecomputeCoefficients(int in_size, float in0, float in1, int out_size,
                                    const Filter& filter) {
  double scale = static_cast<double>(in1 - in0) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = filter.support * filterscale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(static_cast<size_t>(out_size) * 2);
  c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      w[x] = filter.fn((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    int32_t* k = &c.k[static_cast<size_t>(xx) * c.ksize];
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      // normalize_coeffs_8bpc
      k[x] = v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits))
                   : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    c.bounds[xx * 2] = xmin;
    c.bounds[xx * 2 + 1] = xmax;
  }
  return c;
}

inline uint8_t Clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;  // arithmetic shift, as Pillow's table lookup
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Rows [row0, row0 + out.height) of `in`, resampled horizontally into `out`.
void ResampleHorizontal(const Image& in, int row0, const Coefficients& c, Image& out) {
  for (int yy = 0; yy < out.height; ++yy) {
    const uint8_t* src = in.data.data() + static_cast<size_t>(yy + row0) * in.width * 3;
    uint8_t* dst = out.data.data() + static_cast<size_t>(yy) * out.width * 3;
    for (int xx = 0; xx < out.width; ++xx) {
      const int xmin = c.bounds[xx * 2];
      const int xmax = c.bounds[xx * 2 + 1];
      const int32_t* k = &c.k[static_cast<size_t>(xx) * c.ksize];
      int32_t ss0 = 1 << (kPrecisionBits - 1), ss1 = ss0, ss2 = ss0;
      for (int x = 0; x < xmax; ++x) {
        const uint8_t* p = src + static_cast<size_t>(x + xmin) * 3;
        ss0 += p[0] * k[x];
        ss1 += p[1] * k[x];
        ss2 += p[2] * k[x];
      }
      dst[xx * 3] = Clip8(ss0);
      dst[xx * 3 + 1] = Clip8(ss1);
      dst[xx * 3 + 2] = Clip8(ss2);
    }
  }
}

void ResampleVertical(const Image& in, const std::vector<int>& ymins, const Coefficients& c,
                      Image& out) {
  const size_t stride = static_cast<size_t>(in.width) * 3;
  for (int yy = 0; yy < out.height; ++yy) {
    const int ymin = ymins[yy];
    const int ymax = c.bounds[yy * 2 + 1];
    const int32_t* k = &c.k[static_cast<size_t>(yy) * c.ksize];
    uint8_t* dst = out.data.data() + static_cast<size_t>(yy) * stride;
    for (size_t i = 0; i < stride; ++i) {
      int32_t ss = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < ymax; ++y) ss += in.data[(ymin + y) * stride + i] * k[y];
      dst[i] = Clip8(ss);
    }
  }
}

Image ResampleConvolution(const Image& in, int xsize, int ysize, const Filter& filter) {
  const bool need_horizontal = xsize != in.width;
  const bool need_vertical = ysize != in.height;
  Coefficients horiz =
      PrecomputeCoefficients(in.width, 0.0f, static_cast<float>(in.width), xsize, filter);
  Coefficients vert =
      PrecomputeCoefficients(in.height, 0.0f, static_cast<float>(in.height), ysize, filter);
  // Rows of the source that the vertical pass reads.
  const int ybox_first = vert.bounds[0];
  const int ybox_last = vert.bounds[ysize * 2 - 2] + vert.bounds[ysize * 2 - 1];
  std::vector<int> ymins(ysize);
  for (int i = 0; i < ysize; ++i) ymins[i] = vert.bounds[i * 2];

  Image temp;
  const Image* src = &in;
  if (need_horizontal) {
    for (int i = 0; i < ysize; ++i) ymins[i] -= ybox_first;
    temp.width = xsize;
    temp.height = ybox_last - ybox_first;
    temp.data.resize(static_cast<size_t>(temp.width) * temp.height * 3);
    ResampleHorizontal(in, ybox_first, horiz, temp);
    src = &temp;
  }
  if (!need_vertical) {
    // Pillow's horizontal pass then covers every row (ybox spans the image).
    return need_horizontal ? temp : in;
  }
  Image out;
  out.width = src->width;
  out.height = ysize;
  out.data.resize(static_cast<size_t>(out.width) * out.height * 3);
  ResampleVertical(*src, ymins, vert, out);
  return out;
}

// Pillow's NEAREST resize: an affine scale sampling at the centres of the
// output pixels, coordinates accumulated in double.
Image ResampleNearest(const Image& in, int xsize, int ysize) {
  const double a0 = static_cast<double>(in.width) / xsize;
  const double a4 = static_cast<double>(in.height) / ysize;
  auto coord = [](double v) { return v < 0.0 ? -1 : static_cast<int>(v); };
  std::vector<int> xin(xsize);
  double xo = a0 * 0.5;
  for (int x = 0; x < xsize; ++x, xo += a0) xin[x] = coord(xo);
  Image out;
  out.width = xsize;
  out.height = ysize;
  out.data.resize(static_cast<size_t>(xsize) * ysize * 3);
  double yo = a4 * 0.5;
  for (int y = 0; y < ysize; ++y, yo += a4) {
    const int yi = coord(yo);
    for (int x = 0; x < xsize; ++x) {
      // In range by construction (the scale maps centres inside the image).
      const uint8_t* p = in.data.data() + (static_cast<size_t>(yi) * in.width + xin[x]) * 3;
      uint8_t* q = out.data.data() + (static_cast<size_t>(y) * xsize + x) * 3;
      q[0] = p[0];
      q[1] = p[1];
      q[2] = p[2];
    }
  }
  return out;
}

}  // namespace

const char* ResampleName(Resample resample) {
  switch (resample) {
    case Resample::kNearest:
      return "nearest";
    case Resample::kLanczos:
      return "lanczos";
    case Resample::kBilinear:
      return "bilinear";
    case Resample::kBicubic:
      return "bicubic";
    case Resample::kBox:
      return "box";
    case Resample::kHamming:
      return "hamming";
  }
  return "?";
}

Image ResizeImage(const Image& image, int width, int height, Resample resample) {
  if (width <= 0 || height <= 0) {
    throw InvalidArgument("resize: the target size " + std::to_string(width) + " x " +
                          std::to_string(height) + " is not positive");
  }
  if (image.width <= 0 || image.height <= 0 ||
      image.data.size() != static_cast<size_t>(image.width) * image.height * 3) {
    throw InvalidArgument("resize: the source image is empty or its buffer does not match " +
                          std::to_string(image.width) + " x " + std::to_string(image.height));
  }
  if (width == image.width && height == image.height) return image;  // Pillow copies
  if (resample == Resample::kNearest) return ResampleNearest(image, width, height);
  return ResampleConvolution(image, width, height, FilterFor(resample));
}

}  // namespace stip
