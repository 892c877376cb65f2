// Randomly initialised Llama checkpoints in the HF layout: fixtures for tests
// and inputs for benchmarks (speed does not depend on the values). A host-side
// tool (it writes through the host's safetensors writer), never part of a plugin.
#pragma once

#include <cstdint>
#include <filesystem>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint/safetensors.hpp"
#include "hostrun/status.hpp"
#include "hostrun/tensor.hpp"
#include "llama_common/llama_config.hpp"

namespace hostrun::llama {

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

// The pieces of write_random_llama_checkpoint other random folders (LLaVA)
// share. They throw Error.
void check_random_options(const RandomLlamaOptions& options);
// The tensors of `specs`, in that order, in shards as save_pretrained makes
// them (model.safetensors, or numbered files and an index). A tensor's values
// come from the seed and the name values_of(its name) gives (default: its
// own), so folders that name one tensor differently can hold the same
// values; elements from zero_from on are zeros (padded embedding rows).
struct TensorValues {
  std::string name;
  uint64_t zero_from = UINT64_MAX;
};
using ValuesOf = std::function<TensorValues(const std::string& name)>;
void write_random_tensors(const std::filesystem::path& directory, std::vector<checkpoint::TensorSpec> specs,
                          const RandomLlamaOptions& options, const ValuesOf& values_of = {});
void write_generation_config(const std::filesystem::path& directory, const LlamaConfig& config);

// The value write_random_llama_checkpoint stores at element `index` of a
// normal-initialised tensor, before rounding to the dtype (for tests).
float random_llama_value(uint64_t seed, std::string_view tensor_name, uint64_t index, double init_std) noexcept;

}  // namespace hostrun::llama
