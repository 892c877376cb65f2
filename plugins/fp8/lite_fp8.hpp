// `hostrun lite fp8 MODEL_DIR --work-dir OUT`: an FP8 folder from a 16- or
// 32-bit one, with no calibration (activation scales are dynamic, per token).
//
// Every linear layer the model lists (Model::linear_input_groups: q/k/v/o and
// gate/up/down for Llama; the LM head and embeddings are not among them and
// stay as they are) becomes `<prefix>.weight` F8_E4M3 [out, in] with
// `<prefix>.weight_scale` f32 [out, 1]: per output channel, scale =
// max|row| / 448 and codes = e4m3(w / scale) (ref::quantize_weight_e4m3).
// Every other tensor is copied in its own dtype. config.json gains
// quantization_config {quant_method "fp8", activation_scheme "dynamic",
// fmt "e4m3", ignored_layers ["lm_head"]}: vLLM's keys (its own fp8 loader
// takes one scale per tensor, so it does not read these channel scales).
#pragma once

#include <hostrun/sdk.hpp>

namespace hostrun::fp8 {

Status run_lite_fp8(const QuantizeJob& job) noexcept;

}  // namespace hostrun::fp8
