// The Llama model on the CPU: every op from kernels/ref, f32 activations,
// K/V through the KvCachePolicy given at load.
//
// Weights are converted to f32 once at load (4 bytes a parameter, twice a
// bf16 checkpoint's size): the GEMMs then read plain f32 rows, and the model
// does not depend on the WeightSource outliving load(). q/k/v_proj are
// stacked into one [q + 2 kv, hidden] matrix and gate/up into one
// [2 intermediate, hidden] matrix, so each takes one GEMM per layer.
#pragma once

#include <hostrun/sdk.hpp>

#include <memory>
#include <optional>
#include <vector>

#include "llama_common/llama_config.hpp"
#include "ref/rope.hpp"

namespace hostrun::llama_cpu {

struct LayerWeights {
  std::vector<float> input_norm;  // [hidden]
  std::vector<float> qkv;         // [q_size + 2 * kv_size, hidden]: q_proj, k_proj, v_proj rows
  std::vector<float> o_proj;      // [hidden, q_size]
  std::vector<float> post_norm;   // [hidden]
  std::vector<float> gate_up;     // [2 * intermediate, hidden]: gate_proj, up_proj rows
  std::vector<float> down_proj;   // [hidden, intermediate]
};

struct LlamaWeights {
  std::vector<float> embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;    // [hidden]
  std::vector<float> lm_head;       // [vocab, hidden]; empty when tied to embed_tokens
  size_t bytes = 0;

  const float* lm_head_rows() const { return lm_head.empty() ? embed_tokens.data() : lm_head.data(); }
};

class LlamaCpuModel final : public Model {
 public:
  explicit LlamaCpuModel(const CreateContext& context);

  Status load(const LoadContext& context) noexcept override;
  ModelInfo info() const noexcept override;
  Result<MemoryReport> memory() const noexcept override;
  Status allocate_kv_cache(int32_t num_blocks, int32_t block_tokens) noexcept override;
  Status step(const StepInput& input, StepOutput& output) noexcept override;

 private:
  void load_checked(const LoadContext& context);           // throws hostrun::Error
  void run_step(const StepInput& input, StepOutput& output);  // throws hostrun::Error
  void sample_sequence(const StepSequence& sequence, size_t sequence_index, const float* logits, StepOutput& output,
                       bool any_logprobs, bool any_logits) const;

  Logger log_;
  int threads_ = 1;
  bool loaded_ = false;
  llama::LlamaConfig config_;
  std::vector<TokenId> eos_ids_;  // config.json's, then generation_config.json's
  std::optional<TokenId> bos_id_;
  LlamaWeights weights_;
  ref::RopeTable rope_;
  float softmax_scale_ = 1.0f;
  KvCachePolicy* kv_policy_ = nullptr;  // owned by the host, outlives the model
  std::unique_ptr<KvCache> kv_cache_;   // made by kv_policy_ (its code frees it)
  int32_t block_tokens_ = 0;
};

}  // namespace hostrun::llama_cpu
