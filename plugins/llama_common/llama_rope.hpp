// Llama's rotary embedding as kernels/ref's RopeParams: theta and, for Llama
// 3.1 and later, the llama3 frequency scaling, from config.json's fields.
#pragma once

#include "llama_common/llama_config.hpp"
#include "ref/rope.hpp"

namespace hostrun::llama {

inline ref::RopeParams rope_params(const LlamaConfig& config) {
  ref::RopeParams rope;
  rope.head_dim = size_t(config.head_dim);
  rope.theta = config.rope_theta;
  if (config.rope_scaling) {
    rope.scaling_type = ref::RopeScalingType::llama3;
    rope.factor = config.rope_scaling->factor;
    rope.low_freq_factor = config.rope_scaling->low_freq_factor;
    rope.high_freq_factor = config.rope_scaling->high_freq_factor;
    rope.original_max_position_embeddings = double(config.rope_scaling->original_max_position_embeddings);
  }
  return rope;
}

}  // namespace hostrun::llama
