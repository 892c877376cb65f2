// CLIP's image preprocessing (transformers' CLIPImageProcessor, and
// LLaVA's pad-to-square before it), on the RGB pixels of image.hpp:
//   [pad to a square of the mean colour] -> resize the shortest edge
//   (PIL's bicubic, exactly) -> centre crop -> x / 255 -> (x - mean) / std
// into f32 [3, crop_height, crop_width]. Every size and statistic comes
// from the model folder's processor config (the caller parses it).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>

#include "hostrun/status.hpp"
#include "image_common/image.hpp"

namespace hostrun::image {

struct ClipPreprocess {
  bool pad_to_square = false;  // LLaVA's "pad" (LlavaImageProcessor do_pad)
  bool do_resize = true;
  int shortest_edge = 336;
  bool do_center_crop = true;
  int crop_height = 336;
  int crop_width = 336;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f};  // OpenAI CLIP's
  std::array<float, 3> std{0.26862954f, 0.26130258f, 0.27577711f};
};

// PIL's Image.resize(size, Image.BICUBIC) on 8-bit RGB: a separable
// a = -0.5 cubic widened by the scale when shrinking, fixed-point
// coefficients (22 fractional bits), horizontal pass first, each pass
// rounded and clipped to 8 bits. Same size: a copy.
RgbImage resize_bicubic(const RgbImage& image, int width, int height);

// transformers' get_resize_output_image_size(default_to_square=False): the
// shortest edge becomes `shortest_edge`, the other int(edge * long / short).
std::array<int, 2> shortest_edge_size(int width, int height, int shortest_edge);  // {width, height}

// The centre `width` x `height` window (top = (H - height) / 2, left alike,
// rounded down); a smaller image is padded with zeros around it first, as
// transformers' center_crop does.
RgbImage center_crop(const RgbImage& image, int width, int height);

// The image in the middle of a square of `background` (rows or columns
// (long - short) / 2 from the top / left), as LLaVA's expand2square.
RgbImage pad_to_square(const RgbImage& image, std::array<std::uint8_t, 3> background);
// LLaVA's background: int(mean * 255) per channel.
std::array<std::uint8_t, 3> mean_color(const ClipPreprocess& params);

// The pixels the model sees, before the float steps (pad, resize, crop).
RgbImage clip_pixels(const RgbImage& image, const ClipPreprocess& params);
// All of it: [3, H, W] f32 written to `out` (3 * H * W values; H, W the
// crop size, or the resized size without a crop). invalid_argument when
// `out` has the wrong size or a parameter is out of range.
Status clip_preprocess(const RgbImage& image, const ClipPreprocess& params, std::span<float> out);
// The [3, H, W] size clip_preprocess writes for an image of this size.
std::array<int, 2> clip_output_size(int width, int height, const ClipPreprocess& params);  // {width, height}

}  // namespace hostrun::image

namespace hostrun {
class WeightSource;
}

namespace hostrun::image {

// The image processor's settings as transformers writes them:
// preprocessor_config.json (transformers 4: the keys at the top) or
// processor_config.json (transformers 5: under "image_processor").
// `size` {"shortest_edge"} or a number, `crop_size` {"height", "width"} or a
// number, `do_pad` (LlavaImageProcessor's pad to square), `resample` 3
// (PIL's BICUBIC, the only one here: anything else is refused naming it),
// image_mean / image_std of three, rescale_factor. Absent keys keep
// CLIPImageProcessor's defaults; a key of the wrong type or out of range is
// invalid_argument naming `source` and the key.
Result<ClipPreprocess> parse_clip_preprocess(std::string_view json_text, std::string_view source);
// From a model folder: preprocessor_config.json, else processor_config.json;
// not_found naming both when neither is there.
Result<ClipPreprocess> read_clip_preprocess(const WeightSource& folder);

}  // namespace hostrun::image
