// The Llama model on the CPU: every op from kernels/ref, f32 activations,
// K/V through the KvCachePolicy given at load, linear layers through the
// Quantizer given at load (or, without one, dense f32 layers of its own).
//
// Dense weights are converted to f32 once at load (4 bytes a parameter, twice
// a bf16 checkpoint's size): the GEMMs then read plain f32 rows, and the model
// does not depend on the WeightSource outliving load(). q/k/v_proj are one
// linear layer with [q + 2 kv] outputs and gate/up one with [2 intermediate],
// so each takes one product per layer, whoever implements it.
#pragma once

#include <hostrun/sdk.hpp>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "llama_common/llama_config.hpp"
#include "ref/rope.hpp"

namespace hostrun::llama_cpu {

// A linear layer is called on at most this many rows at once (a step's tokens
// in slices), so a quantizer knows the largest call at load (LinearLoad::
// max_rows) and the workspace is sized once.
constexpr int64_t kLinearRows = 512;

struct LayerWeights {
  std::vector<float> input_norm;    // [hidden]
  PluginPtr<LinearLayer> qkv;       // q_proj, k_proj, v_proj: [q_size + 2 * kv_size] outputs
  PluginPtr<LinearLayer> o_proj;    // [hidden] outputs from [q_size]
  std::vector<float> post_norm;     // [hidden]
  PluginPtr<LinearLayer> gate_up;   // gate_proj, up_proj: [2 * intermediate] outputs
  PluginPtr<LinearLayer> down_proj; // [hidden] outputs from [intermediate]
};

struct LlamaWeights {
  std::vector<float> embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;    // [hidden]
  std::vector<float> lm_head;       // [vocab, hidden]; empty when tied to embed_tokens
  size_t bytes = 0;                 // dense tensors plus every linear layer's weight_bytes

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
  Result<PluginPtr<DeviceTensor>> allocate_embeddings(int64_t rows) noexcept override;
  Status observe_linear_inputs(std::span<const TokenId> tokens, CalibrationObserver& observer) noexcept override;
  std::vector<LinearInputGroup> linear_input_groups() const noexcept override;

 private:
  struct LinearWorkspace {
    std::unique_ptr<std::byte[]> memory;
    size_t bytes = 0;
  };

  void load_checked(const LoadContext& context);              // throws hostrun::Error
  PluginPtr<LinearLayer> load_linear(const LoadContext& context, const std::vector<std::string>& prefixes,
                                     int64_t in_features, const std::vector<int64_t>& out_features) const;
  void run_step(const StepInput& input, StepOutput& output);  // throws hostrun::Error
  void observe(std::span<const TokenId> tokens, CalibrationObserver& observer);
  // The embeddings of the layout's tokens, with the step's image spans in place.
  std::vector<float> embed(const StepInput& input, const PagedLayout& layout) const;
  // Every decoder layer over the layout's tokens: `residual` is the stream
  // before the last sublayer's output `delta` is added (the final norm adds
  // it). With an observer, every linear layer's input is reported first.
  void run_layers(KvCache& cache, const PagedLayout& layout, std::vector<float>& residual, std::vector<float>& delta,
                  CalibrationObserver* observer);
  // y [rows, out] = x [rows, in] W^T, in slices of kLinearRows rows.
  void linear(LinearLayer& layer, float* x, size_t in_features, float* y, size_t out_features, size_t rows);
  void sample_sequence(const StepSequence& sequence, size_t sequence_index, const float* logits, StepOutput& output,
                       bool any_logprobs, bool any_logits) const;

  Logger log_;
  LibraryPin library_;
  int threads_ = 1;
  bool loaded_ = false;
  llama::LlamaConfig config_;
  std::vector<TokenId> eos_ids_;  // config.json's, then generation_config.json's
  std::optional<TokenId> bos_id_;
  LlamaWeights weights_;
  std::string linear_format_;     // "f32", or the quantizer's format, for logs
  LinearWorkspace linear_workspace_;
  ref::RopeTable rope_;
  float softmax_scale_ = 1.0f;
  KvCachePolicy* kv_policy_ = nullptr;  // owned by the host, outlives the model
  PluginPtr<KvCache> kv_cache_;         // made by kv_policy_ (its code frees it)
  int32_t block_tokens_ = 0;
};

}  // namespace hostrun::llama_cpu
