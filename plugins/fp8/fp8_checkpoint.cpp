#include "fp8_checkpoint.hpp"

#include <hostrun/json_bounds.hpp>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "ref/dtype.hpp"

namespace hostrun::fp8 {

namespace {

using nlohmann::json;

std::string lowercase(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return text;
}

// A scale tensor's values as f32, each finite and not negative.
std::vector<float> scale_values(const WeightSource& weights, const std::string& name, const TensorView& view) {
  if (!view.is_contiguous() || view.device.kind != DeviceKind::cpu)
    throw Error(ErrorCode::corrupt_data,
                fmt::format("fp8: {}: scale tensor '{}' is not a contiguous host tensor", weights.directory(), name));
  const ref::DType dtype = view.dtype == DType::f32   ? ref::DType::f32
                           : view.dtype == DType::bf16 ? ref::DType::bf16
                                                       : ref::DType::f16;  // find_weight_scale allowed these three
  std::vector<float> values(size_t(view.numel()));
  ref::convert_to_f32(view.data, dtype, values.size(), values.data());
  for (size_t i = 0; i < values.size(); ++i)
    if (!std::isfinite(values[i]) || values[i] < 0.0f)
      throw Error(ErrorCode::corrupt_data, fmt::format("fp8: {}: scale tensor '{}' holds {} at element {} (scales are "
                                                       "finite and not negative)",
                                                       weights.directory(), name, values[i], i));
  return values;
}

}  // namespace

Fp8Config read_fp8_config(const WeightSource& weights) {
  const std::string source = weights.directory() + "/config.json";
  auto parsed = parse_json_bounded<json>(weights.config_json(), JsonLimits{}, source);
  if (!parsed) throw Error(parsed.status());
  const json& root = parsed.value();
  const auto fail = [&](const std::string& what) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("fp8: {}: quantization_config: {}; this plugin reads FP8 folders as vLLM and AutoFP8 "
                            "write them (quant_method \"fp8\", activation_scheme \"dynamic\" or \"static\", e4m3 "
                            "weights with per-tensor or per-channel weight_scale)",
                            source, what));
  };
  if (!root.is_object() || !root.contains("quantization_config") || !root["quantization_config"].is_object())
    fail("missing (not an FP8 folder)");
  const json& q = root["quantization_config"];
  const auto text = [&](const char* key) -> std::string {
    if (!q.contains(key) || !q[key].is_string()) fail(fmt::format("'{}' missing or not a string", key));
    return lowercase(q[key].get<std::string>());
  };
  if (const std::string method = text("quant_method"); method != "fp8")
    fail(fmt::format("quant_method is \"{}\"", method));
  Fp8Config config;
  const std::string scheme = text("activation_scheme");
  if (scheme != "dynamic" && scheme != "static") fail(fmt::format("activation_scheme is \"{}\"", scheme));
  config.static_activations = scheme == "static";
  if (q.contains("weight_block_size") && !q["weight_block_size"].is_null())
    fail(fmt::format("weight_block_size is {} (block-wise scales are another layout)", q["weight_block_size"].dump()));
  if (q.contains("fmt") && text("fmt") != "e4m3")
    fail(fmt::format("fmt is \"{}\" (weights here are e4m3)", text("fmt")));
  return config;
}

Fp8Prefix read_fp8_prefix(const WeightSource& weights, const std::string& prefix, const Fp8Config& config) {
  Fp8Prefix p;
  const std::string name = prefix + ".weight";
  auto found = weights.tensor(name);
  if (!found) throw Error(found.status());
  const TensorView& view = found.value();
  if (view.dtype != DType::f8_e4m3 || view.rank != 2 || !view.is_contiguous() || view.device.kind != DeviceKind::cpu)
    throw Error(ErrorCode::corrupt_data,
                fmt::format("fp8: {}: tensor '{}': expected an F8_E4M3 matrix [out, in], found {} rank {}{}",
                            weights.directory(), name, dtype_name(view.dtype), view.rank,
                            view.dtype == DType::f8_e4m3 || view.dtype == DType::f8_e5m2
                                ? ""
                                : " (layers left unquantized in an FP8 folder are not read by this plugin)"));
  p.codes = view;
  p.codes.dtype = DType::u8;
  p.out_features = view.shape[0];
  p.in_features = view.shape[1];

  auto scale = find_weight_scale(weights, prefix, p.out_features);
  if (!scale) throw Error(scale.status());
  const std::vector<float> values = scale_values(weights, scale->name, scale->values);
  p.channel_scales = scale->granularity == ScaleGranularity::per_channel
                         ? values
                         : std::vector<float>(size_t(p.out_features), values.front());

  if (config.static_activations) {
    const std::string input = prefix + ".input_scale";
    auto input_view = weights.tensor(input);
    if (!input_view)
      throw Error(input_view.status().code(),
                  fmt::format("fp8: {}: activation_scheme \"static\" needs '{}': {}", weights.directory(), input,
                              input_view.status().message()));
    if (input_view->numel() != 1 ||
        (input_view->dtype != DType::f32 && input_view->dtype != DType::bf16 && input_view->dtype != DType::f16))
      throw Error(ErrorCode::corrupt_data, fmt::format("fp8: {}: '{}' must be one f32, bf16 or f16 value, found {} "
                                                       "values of {}",
                                                       weights.directory(), input, input_view->numel(),
                                                       dtype_name(input_view->dtype)));
    p.input_scale = scale_values(weights, input, input_view.value()).front();
    if (!(p.input_scale > 0.0f))
      throw Error(ErrorCode::corrupt_data,
                  fmt::format("fp8: {}: '{}' is {} (a static input scale is positive)", weights.directory(), input,
                              p.input_scale));
  }
  return p;
}

}  // namespace hostrun::fp8
