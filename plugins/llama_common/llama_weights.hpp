// What a Llama checkpoint must hold, and the check that it does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hostrun/quantizer.hpp"
#include "hostrun/weights.hpp"
#include "llama_common/llama_config.hpp"

namespace hostrun::llama {

// Every tensor LlamaForCausalLM loads, with its HF name and shape (nn.Linear
// weights are [out_features, in_features]), in HF's order: embeddings, layer
// by layer, final norm, lm_head (absent when tie_word_embeddings).
struct LlamaTensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<LlamaTensorSpec> llama_tensor_specs(const LlamaConfig& config);

// Checks that `weights` holds every tensor of llama_tensor_specs() with that
// shape and a floating dtype (f32, f16, bf16). Extra tensors are allowed (old
// checkpoints carry rotary_emb.inv_freq). The error lists every problem
// (up to a few dozen), each naming the tensor, the expected and the found
// shape; its code is not_found when a tensor is missing, corrupt_data
// otherwise. A quantized config (quant_method set) is `unsupported` here:
// its linear layers are stored in another layout.
Status validate_llama_weights(const LlamaConfig& config, const WeightSource& weights) noexcept;

// Model::linear_input_groups for a Llama graph, four groups a layer:
// q/k/v after input_layernorm; o_proj after v_proj (a producer only without
// grouped-query attention, when v's rows are o's columns one to one); gate/up
// after post_attention_layernorm; down_proj after up_proj (silu(gate) * up is
// linear in up's rows). Biases of producers are listed with their weights.
std::vector<LinearInputGroup> llama_linear_input_groups(const LlamaConfig& config);

}  // namespace hostrun::llama
