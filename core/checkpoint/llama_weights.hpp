// What a Llama checkpoint must hold, the check that it does, and a writer of
// randomly initialised ones (fixtures for tests, inputs for `hostrun bench`).
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "checkpoint/llama_config.hpp"
#include "checkpoint/safetensors.hpp"
#include "hostrun/weights.hpp"

namespace hostrun::checkpoint {

// Every tensor LlamaForCausalLM loads, with its HF name and shape (nn.Linear
// weights are [out_features, in_features]), in HF's order: embeddings, layer
// by layer, final norm, lm_head (absent when tie_word_embeddings).
std::vector<TensorSpec> llama_tensor_specs(const LlamaConfig& config, DType dtype);

// Checks that `weights` holds every tensor of llama_tensor_specs() with that
// shape and a floating dtype (f32, f16, bf16). Extra tensors are allowed (old
// checkpoints carry rotary_emb.inv_freq). The error lists every problem
// (up to a few dozen), each naming the tensor, the expected and the found
// shape; its code is not_found when a tensor is missing, corrupt_data
// otherwise. A quantized config (quant_method set) is `unsupported` here:
// its linear layers are stored in another layout.
Status validate_llama_weights(const LlamaConfig& config, const WeightSource& weights) noexcept;

struct RandomLlamaOptions {
  uint64_t seed = 0;
  DType dtype = DType::bf16;  // bf16, f16 or f32
  double init_std = 0.02;     // HF's initializer_range
  // Shard when the tensors add up to more than this (HF's default
  // max_shard_size is 5 GB); a shard always holds at least one tensor.
  uint64_t max_shard_bytes = 5'000'000'000;
  bool write_generation_config = true;
};

// Writes config.json (with torch_dtype set from options.dtype), the weights
// (model.safetensors, or model-0000K-of-0000N.safetensors plus
// model.safetensors.index.json) and generation_config.json into `directory`
// (created if needed; stale model.safetensors / index there are removed).
// Linear weights and embeddings are normal-like (mean 0, std init_std),
// norms are ones, biases zeros. The values of a tensor depend only on the
// seed and its name, not on dtype-independent layout choices like sharding.
// Tensors are generated and written in pieces of a few MB, so a Llama-3-8B
// checkpoint needs only that much memory.
Status write_random_llama_checkpoint(const std::filesystem::path& directory, const LlamaConfig& config,
                                     const RandomLlamaOptions& options = {}) noexcept;

// The value write_random_llama_checkpoint stores at element `index` of a
// normal-initialised tensor, before rounding to the dtype (for tests).
float random_llama_value(uint64_t seed, std::string_view tensor_name, uint64_t index, double init_std) noexcept;

}  // namespace hostrun::checkpoint
