#include "image_common/clip_preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

namespace hostrun::image {

namespace {

// PIL's 8-bit resampling keeps 22 fractional bits in its coefficients, so
// a sum of 8-bit samples times them fits an int32 with room for overshoot.
constexpr int kFractionBits = 32 - 8 - 2;

double cubic(double x) {  // Keys' cubic with a = -0.5, PIL's BICUBIC
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// Which input samples (first, count) each output sample reads along one
// axis, and their fixed-point weights (taps a sample, padded with zeros).
struct AxisTaps {
  int taps = 0;
  std::vector<int> first, count;
  std::vector<std::int32_t> weight;  // [out][taps]
};

AxisTaps axis_taps(int in_size, int out_size) {
  const double scale = double(in_size) / double(out_size);
  const double widen = std::max(scale, 1.0);  // shrinking widens the filter to the source spacing
  const double support = 2.0 * widen;
  AxisTaps t;
  t.taps = int(std::ceil(support)) * 2 + 1;
  t.first.resize(std::size_t(out_size));
  t.count.resize(std::size_t(out_size));
  t.weight.assign(std::size_t(out_size) * std::size_t(t.taps), 0);
  std::vector<double> w(std::size_t(t.taps));
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    // Truncation toward zero, then clamping, as PIL's (int) casts.
    const int lo = std::max(int(center - support + 0.5), 0);
    const int hi = std::min(int(center + support + 0.5), in_size);
    const int n = hi - lo;
    double sum = 0.0;
    for (int i = 0; i < n; ++i) {
      w[std::size_t(i)] = cubic((i + lo - center + 0.5) / widen);
      sum += w[std::size_t(i)];
    }
    for (int i = 0; i < n; ++i) {
      const double k = sum != 0.0 ? w[std::size_t(i)] / sum : w[std::size_t(i)];
      const double fixed = k * double(1 << kFractionBits);
      t.weight[std::size_t(o) * std::size_t(t.taps) + std::size_t(i)] =
          std::int32_t(k < 0.0 ? fixed - 0.5 : fixed + 0.5);  // rounded half away from zero
    }
    t.first[std::size_t(o)] = lo;
    t.count[std::size_t(o)] = n;
  }
  return t;
}

std::uint8_t fixed_to_u8(std::int32_t sum) {
  return std::uint8_t(std::clamp(sum >> kFractionBits, 0, 255));  // arithmetic shift: floor
}

// out[y][x] = sum_i in[y][first_x + i] w_x[i] for rows [row0, row0 + out.height).
void resample_rows(const RgbImage& in, int row0, const AxisTaps& t, RgbImage& out) {
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) {
      const std::int32_t* w = t.weight.data() + std::size_t(x) * std::size_t(t.taps);
      std::int32_t sum[3] = {1 << (kFractionBits - 1), 1 << (kFractionBits - 1), 1 << (kFractionBits - 1)};
      const std::uint8_t* src = in.pixel(t.first[std::size_t(x)], row0 + y);
      for (int i = 0; i < t.count[std::size_t(x)]; ++i)
        for (int c = 0; c < 3; ++c) sum[c] += std::int32_t(src[3 * i + c]) * w[i];
      for (int c = 0; c < 3; ++c) out.pixel(x, y)[c] = fixed_to_u8(sum[c]);
    }
}

// out[y][x] = sum_i in[first_y - row0 + i][x] w_y[i].
void resample_columns(const RgbImage& in, int row0, const AxisTaps& t, RgbImage& out) {
  for (int y = 0; y < out.height; ++y) {
    const std::int32_t* w = t.weight.data() + std::size_t(y) * std::size_t(t.taps);
    const int first = t.first[std::size_t(y)] - row0;
    for (int x = 0; x < out.width; ++x) {
      std::int32_t sum[3] = {1 << (kFractionBits - 1), 1 << (kFractionBits - 1), 1 << (kFractionBits - 1)};
      for (int i = 0; i < t.count[std::size_t(y)]; ++i) {
        const std::uint8_t* src = in.pixel(x, first + i);
        for (int c = 0; c < 3; ++c) sum[c] += std::int32_t(src[c]) * w[i];
      }
      for (int c = 0; c < 3; ++c) out.pixel(x, y)[c] = fixed_to_u8(sum[c]);
    }
  }
}

int floor_div2(int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

}  // namespace

RgbImage resize_bicubic(const RgbImage& image, int width, int height) {
  if (width == image.width && height == image.height) return image;
  const AxisTaps across = axis_taps(image.width, width), down = axis_taps(image.height, height);
  const bool horizontal = width != image.width, vertical = height != image.height;
  if (!vertical) {
    RgbImage out = RgbImage::black(width, height);
    resample_rows(image, 0, across, out);
    return out;
  }
  if (!horizontal) {
    RgbImage out = RgbImage::black(width, height);
    resample_columns(image, 0, down, out);
    return out;
  }
  // Horizontal first, over only the rows the vertical pass reads, then
  // vertical on that strip (both rounded to 8 bits, as PIL does).
  const int row0 = down.first.front();
  const int row1 = down.first.back() + down.count.back();
  RgbImage strip = RgbImage::black(width, row1 - row0);
  resample_rows(image, row0, across, strip);
  RgbImage out = RgbImage::black(width, height);
  resample_columns(strip, row0, down, out);
  return out;
}

std::array<int, 2> shortest_edge_size(int width, int height, int shortest_edge) {
  const bool portrait = width <= height;
  const int short_side = portrait ? width : height, long_side = portrait ? height : width;
  const int new_long = int(double(std::int64_t(shortest_edge) * long_side) / double(short_side));
  return portrait ? std::array<int, 2>{shortest_edge, new_long} : std::array<int, 2>{new_long, shortest_edge};
}

RgbImage center_crop(const RgbImage& image, int width, int height) {
  // transformers' arithmetic: floor division, and ceil for the padding.
  const int pad_w = std::max(width, image.width), pad_h = std::max(height, image.height);
  const int left_pad = (pad_w - image.width + 1) / 2, top_pad = (pad_h - image.height + 1) / 2;
  const int left = floor_div2(image.width - width) + left_pad, top = floor_div2(image.height - height) + top_pad;
  RgbImage out = RgbImage::black(width, height);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x) {
      const int sx = left + x - left_pad, sy = top + y - top_pad;  // in the unpadded image
      if (sx < 0 || sy < 0 || sx >= image.width || sy >= image.height) continue;
      std::copy_n(image.pixel(sx, sy), 3, out.pixel(x, y));
    }
  return out;
}

RgbImage pad_to_square(const RgbImage& image, std::array<std::uint8_t, 3> background) {
  if (image.width == image.height) return image;
  const int side = std::max(image.width, image.height);
  RgbImage out = RgbImage::black(side, side);
  for (std::size_t i = 0; i < out.rgb.size(); ++i) out.rgb[i] = background[i % 3];
  const int left = (side - image.width) / 2, top = (side - image.height) / 2;
  for (int y = 0; y < image.height; ++y)
    std::copy_n(image.pixel(0, y), std::size_t(image.width) * 3, out.pixel(left, top + y));
  return out;
}

std::array<std::uint8_t, 3> mean_color(const ClipPreprocess& params) {
  std::array<std::uint8_t, 3> color{};
  for (int c = 0; c < 3; ++c) color[std::size_t(c)] = std::uint8_t(std::clamp(int(double(params.mean[std::size_t(c)]) * 255.0), 0, 255));
  return color;
}

std::array<int, 2> clip_output_size(int width, int height, const ClipPreprocess& params) {
  if (params.pad_to_square) width = height = std::max(width, height);
  if (params.do_resize) {
    const std::array<int, 2> size = shortest_edge_size(width, height, params.shortest_edge);
    width = size[0];
    height = size[1];
  }
  if (params.do_center_crop) return {params.crop_width, params.crop_height};
  return {width, height};
}

RgbImage clip_pixels(const RgbImage& image, const ClipPreprocess& params) {
  RgbImage out = params.pad_to_square ? pad_to_square(image, mean_color(params)) : image;
  if (params.do_resize) {
    const std::array<int, 2> size = shortest_edge_size(out.width, out.height, params.shortest_edge);
    out = resize_bicubic(out, size[0], size[1]);
  }
  if (params.do_center_crop) out = center_crop(out, params.crop_width, params.crop_height);
  return out;
}

Status clip_preprocess(const RgbImage& image, const ClipPreprocess& params, std::span<float> out) {
  if (image.width <= 0 || image.height <= 0 || image.rgb.size() != std::size_t(image.width) * image.height * 3)
    return Status(ErrorCode::invalid_argument, "clip_preprocess: an empty or malformed image");
  if ((params.do_resize && (params.shortest_edge <= 0 || params.shortest_edge > 8192)) ||
      (params.do_center_crop && (params.crop_width <= 0 || params.crop_height <= 0 || params.crop_width > 8192 ||
                                 params.crop_height > 8192)))
    return Status(ErrorCode::invalid_argument,
                  fmt::format("clip_preprocess: sizes out of range (shortest edge {}, crop {} x {}; 1 to 8192)",
                              params.shortest_edge, params.crop_width, params.crop_height));
  for (int c = 0; c < 3; ++c)
    if (params.do_normalize && !(params.std[std::size_t(c)] != 0.0f))
      return Status(ErrorCode::invalid_argument, "clip_preprocess: image_std has a zero");
  const std::array<int, 2> size = clip_output_size(image.width, image.height, params);
  const std::size_t plane = std::size_t(size[0]) * std::size_t(size[1]);
  if (out.size() != 3 * plane)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("clip_preprocess: the output holds {} values, the image needs 3 x {} x {}", out.size(),
                              size[1], size[0]));
  const RgbImage pixels = clip_pixels(image, params);
  for (std::size_t i = 0; i < plane; ++i)
    for (std::size_t c = 0; c < 3; ++c) {
      // transformers: x * factor in f64 stored as f32, then (x - mean) / std in f32
      float x = params.do_rescale ? float(double(pixels.rgb[3 * i + c]) * params.rescale_factor)
                                  : float(pixels.rgb[3 * i + c]);
      if (params.do_normalize) x = (x - params.mean[c]) / params.std[c];
      out[c * plane + i] = x;
    }
  return Status();
}

}  // namespace hostrun::image
