// What an FP8 folder holds, read and checked: its quantization_config and,
// per linear layer, the e4m3 codes with their scales.
//
// The format (vLLM's and AutoFP8's "fp8", llm-compressor's channel scales):
//   config.json  quantization_config = {quant_method: "fp8",
//                activation_scheme: "dynamic" | "static", ...}
//   <prefix>.weight        F8_E4M3 [out, in] (HF Linear layout)
//   <prefix>.weight_scale  one value, or one per output channel ([out] or
//                          [out, 1]); f32, bf16 or f16
//   <prefix>.input_scale   one value, with activation_scheme "static"
// and W = e4m3_to_f32(code) * weight_scale. Block-wise scales
// (weight_block_size, DeepSeek's layout) are another format and refused.
#pragma once

#include <hostrun/sdk.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace hostrun::fp8 {

struct Fp8Config {
  bool static_activations = false;  // activation_scheme "static": input_scale per layer
};

// quantization_config checked; refusals name the key and the format read.
Fp8Config read_fp8_config(const WeightSource& weights);

// One prefix's tensors: its codes (a view of the checkpoint) and scales as
// f32, one per output channel (a per-tensor scale repeated), so prefixes
// with scales of either kind fuse into one layer.
struct Fp8Prefix {
  TensorView codes;                  // u8 view of F8_E4M3 [out, in]
  int64_t out_features = 0, in_features = 0;
  std::vector<float> channel_scales;  // [out]
  float input_scale = 0.0f;           // static scheme only (> 0)
};

Fp8Prefix read_fp8_prefix(const WeightSource& weights, const std::string& prefix, const Fp8Config& config);

}  // namespace hostrun::fp8
