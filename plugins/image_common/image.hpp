// Images as the vision plugins take them: encoded bytes (PNG, JPEG, WebP,
// GIF) decoded to 8-bit RGB the way LMDeploy's load_image makes them
// (PIL's Image.open(...).convert("RGB")), so that what follows (CLIP's
// preprocessing, clip_preprocess.hpp) sees the pixels Python users' models
// see.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "hostrun/generation.hpp"
#include "hostrun/status.hpp"

namespace hostrun::image {

// Row-major, 3 bytes a pixel (R, G, B).
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> rgb;

  static RgbImage black(int width, int height) {
    return {width, height, std::vector<std::uint8_t>(std::size_t(width) * std::size_t(height) * 3, 0)};
  }
  std::uint8_t* pixel(int x, int y) { return rgb.data() + (std::size_t(y) * std::size_t(width) + std::size_t(x)) * 3; }
  const std::uint8_t* pixel(int x, int y) const {
    return rgb.data() + (std::size_t(y) * std::size_t(width) + std::size_t(x)) * 3;
  }
};

enum class ImageFormat { png, jpeg, webp, gif };
const char* to_string(ImageFormat format) noexcept;
const char* mime_type(ImageFormat format) noexcept;  // "image/png", ...

// The format named by the first bytes (the signature), or invalid_argument
// naming what was found.
Result<ImageFormat> sniff_image_format(std::span<const std::uint8_t> bytes);

// An image as a request carries it (generation.hpp): the bytes, and the MIME
// type their signature names; invalid_argument when they are no image. What
// frontends check before a request reaches the engine.
Result<ImageData> image_data(std::vector<std::uint8_t> bytes);

struct DecodeLimits {
  // Larger images are refused before their pixels are allocated: a small
  // file can declare a huge canvas (PIL warns above ~89M pixels too).
  std::int64_t max_pixels = 50'000'000;
  int max_side = 32'768;
};

// Decodes the first (or only) frame. Conversions as PIL's convert("RGB"):
// alpha dropped (not composited), grey replicated, palettes looked up,
// 16-bit RGB samples cut to their high byte and 16-bit grey clipped to 255
// (PIL's "I" mode), Adobe CMYK JPEGs through PIL's cmyk2rgb. No gamma, ICC
// or EXIF orientation is applied (PIL's open applies none). Bad or
// truncated bytes are invalid_argument naming the format and the decoder's
// complaint; nothing is read past `bytes`.
Result<RgbImage> decode_image(std::span<const std::uint8_t> bytes, const DecodeLimits& limits = {});

}  // namespace hostrun::image
