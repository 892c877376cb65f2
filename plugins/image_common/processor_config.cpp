// parse_clip_preprocess / read_clip_preprocess (clip_preprocess.hpp).
#include <fmt/format.h>
#include <hostrun/json_bounds.hpp>
#include <hostrun/weights.hpp>
#include <nlohmann/json.hpp>

#include "image_common/clip_preprocess.hpp"

namespace hostrun::image {

namespace {

using nlohmann::json;

[[noreturn]] void refuse(std::string_view source, std::string_view key, std::string_view why) {
  throw Error(ErrorCode::invalid_argument, fmt::format("{}: \"{}\" {}", source, key, why));
}

bool read_bool(const json& object, const char* key, bool fallback, std::string_view source) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) refuse(source, key, fmt::format("must be true or false, found {}", it->dump()));
  return it->get<bool>();
}

int read_side(const json& value, std::string_view source, std::string_view key) {
  if (!value.is_number_integer() || value.get<std::int64_t>() < 1 || value.get<std::int64_t>() > 8192)
    refuse(source, key, fmt::format("must be a whole number of pixels from 1 to 8192, found {}", value.dump()));
  return value.get<int>();
}

std::array<float, 3> read_triple(const json& object, const char* key, std::array<float, 3> fallback,
                                 std::string_view source) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_array() || it->size() != 3)
    refuse(source, key, fmt::format("must be three numbers (R, G, B), found {}", it->dump()));
  std::array<float, 3> out{};
  for (std::size_t c = 0; c < 3; ++c) {
    if (!(*it)[c].is_number()) refuse(source, key, fmt::format("must be three numbers, found {}", it->dump()));
    out[c] = (*it)[c].get<float>();
  }
  return out;
}

ClipPreprocess parse(const json& p, std::string_view source) {
  ClipPreprocess out;
  out.do_resize = read_bool(p, "do_resize", out.do_resize, source);
  out.do_center_crop = read_bool(p, "do_center_crop", out.do_center_crop, source);
  out.do_rescale = read_bool(p, "do_rescale", out.do_rescale, source);
  out.do_normalize = read_bool(p, "do_normalize", out.do_normalize, source);
  out.pad_to_square = read_bool(p, "do_pad", out.pad_to_square, source);
  if (!read_bool(p, "do_convert_rgb", true, source))
    refuse(source, "do_convert_rgb", "false is not supported (images are always converted to RGB)");
  if (const auto it = p.find("size"); it != p.end() && !it->is_null()) {
    if (it->is_object()) {
      const auto edge = it->find("shortest_edge");
      if (edge == it->end())
        refuse(source, "size", fmt::format("must name \"shortest_edge\" (CLIP's resize), found {}", it->dump()));
      out.shortest_edge = read_side(*edge, source, "size.shortest_edge");
    } else {
      out.shortest_edge = read_side(*it, source, "size");
    }
  }
  if (const auto it = p.find("crop_size"); it != p.end() && !it->is_null()) {
    if (it->is_object()) {
      if (!it->contains("height") || !it->contains("width"))
        refuse(source, "crop_size", fmt::format("must name \"height\" and \"width\", found {}", it->dump()));
      out.crop_height = read_side(it->at("height"), source, "crop_size.height");
      out.crop_width = read_side(it->at("width"), source, "crop_size.width");
    } else {
      out.crop_height = out.crop_width = read_side(*it, source, "crop_size");
    }
  }
  if (const auto it = p.find("resample"); it != p.end() && !it->is_null() && *it != json(3))
    refuse(source, "resample",
           fmt::format("is {}; only 3 (PIL's BICUBIC, what CLIP and LLaVA use) is supported", it->dump()));
  if (const auto it = p.find("rescale_factor"); it != p.end() && !it->is_null()) {
    if (!it->is_number() || !(it->get<double>() > 0.0))
      refuse(source, "rescale_factor", fmt::format("must be a positive number, found {}", it->dump()));
    out.rescale_factor = it->get<double>();
  }
  out.mean = read_triple(p, "image_mean", out.mean, source);
  out.std = read_triple(p, "image_std", out.std, source);
  for (float s : out.std)
    if (!(s > 0.0f)) refuse(source, "image_std", "must be three positive numbers");
  return out;
}

}  // namespace

Result<ClipPreprocess> parse_clip_preprocess(std::string_view json_text, std::string_view source) {
  return guard_result<ClipPreprocess>([&] {
    Result<json> root = parse_json_bounded<json>(json_text, JsonLimits{}, source);
    if (!root) throw Error(root.status());
    if (!root->is_object())
      throw Error(ErrorCode::invalid_argument, fmt::format("{}: expected a JSON object", source));
    // transformers 5 nests the image processor inside the processor's file.
    const auto nested = root->find("image_processor");
    if (nested != root->end()) {
      if (!nested->is_object()) refuse(source, "image_processor", "must be an object");
      return parse(*nested, fmt::format("{} (image_processor)", source));
    }
    return parse(*root, source);
  });
}

Result<ClipPreprocess> read_clip_preprocess(const WeightSource& folder) {
  for (const char* name : {"preprocessor_config.json", "processor_config.json"}) {
    Result<std::string> text = folder.read_file(name);
    if (text) return parse_clip_preprocess(*text, fmt::format("{}/{}", folder.directory(), name));
    if (text.status().code() != ErrorCode::not_found) return text.status();
  }
  return Status(ErrorCode::not_found,
                fmt::format("{} has neither preprocessor_config.json nor processor_config.json (the image "
                            "processor's sizes and statistics)",
                            folder.directory()));
}

}  // namespace hostrun::image
