// Role: Model — loads weights and runs one engine step on a batch of sequences
// (prefill chunks and decode tokens mixed), returning sampled tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "hostrun/exec.hpp"
#include "hostrun/generation.hpp"
#include "hostrun/kv_cache.hpp"
#include "hostrun/plugin_object.hpp"
#include "hostrun/quantizer.hpp"
#include "hostrun/status.hpp"
#include "hostrun/tensor.hpp"
#include "hostrun/tokenizer.hpp"
#include "hostrun/weights.hpp"

namespace hostrun {

struct ModelInfo {
  std::string architecture;  // "LlamaForCausalLM"
  int32_t vocab_size = 0;
  int32_t hidden_size = 0;
  int32_t layers = 0;
  int32_t q_heads = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  int32_t max_positions = 0;
  DType activation_dtype = DType::bf16;
  Device device{};
  size_t weight_bytes = 0;
  std::vector<TokenId> eos_ids;  // from config.json / generation_config.json
  std::optional<TokenId> bos_id;
};

struct LoadContext {
  // Kept alive by the host for as long as the model, so a model may keep views into it.
  const WeightSource* weights = nullptr;
  Device device{};
  DType activation_dtype = DType::bf16;
  // The manifest's [quantizer]: the model builds its linear layers through it
  // (Quantizer::load_linear). Null: the checkpoint's own dense weights.
  Quantizer* quantizer = nullptr;
  KvCachePolicy* kv_policy = nullptr;
  int32_t tensor_parallel_rank = 0;
  int32_t tensor_parallel_size = 1;
};

// Embeddings that replace a run of token embeddings (an image's features).
struct EmbeddingSpan {
  int32_t first_token = 0;  // index into the sequence's tokens of this step
  TensorView values;        // [tokens, hidden_size] on the model's device
};

struct StepSequence {
  int32_t query_start = 0;  // first of this sequence's tokens in StepInput::token_ids
  int32_t query_len = 0;    // tokens computed this step (a prefill chunk, or 1 when decoding)
  int32_t cached_len = 0;   // tokens already in the KV cache before this step
  std::span<const int32_t> block_table;
  bool sample = false;      // produce a token after the last query token
  const SamplingParams* sampling = nullptr;
  uint64_t rng_seed = 0;
  uint32_t rng_offset = 0;  // tokens sampled so far, so a seeded request is reproducible
  std::span<const TokenId> history;  // all ids so far, for repetition/presence penalties
  std::span<const TokenId> generated;  // the ids this request generated (a suffix of history)
  std::span<const TokenId> suppressed;  // ids that must not be sampled now (eos before min_tokens)
  std::span<const EmbeddingSpan> embeddings;
  bool return_logits = false;  // copy this sequence's full-vocabulary logits to the host
  // submit_step only. >= 0: the first query token is the previous_sample-th
  // token sampled by the step submitted just before this one (still on the
  // device, perhaps not yet computed); its entry in token_ids is a placeholder.
  // Such a sequence has no penalties: `history` lacks that token.
  int32_t previous_sample = -1;
};

struct StepInput {
  std::span<const TokenId> token_ids;
  std::span<const int32_t> positions;
  std::span<const StepSequence> sequences;
};

// `logprobs` and `logits` are either empty or hold exactly one entry per
// sampled token, in the order of `sampled`; an entry for a sequence that did
// not ask (top_logprobs < 0, return_logits false) holds only the chosen id,
// or no values.
struct StepOutput {
  std::vector<TokenId> sampled;           // one per sequence with sample, in order
  std::vector<TokenLogprob> logprobs;     // see above
  std::vector<std::vector<float>> logits; // see above
};

struct MemoryReport {
  size_t weight_bytes = 0;
  size_t free_bytes = 0;   // device memory free now
  size_t total_bytes = 0;
};

// Memory on a model's device that the engine owns (image embeddings kept
// while a request lives). Freed when the object goes.
class DeviceTensor : public PluginObject {
 public:
  virtual TensorView view() const noexcept = 0;
};

class Model : public PluginObject {
 public:
  virtual Status load(const LoadContext& context) noexcept = 0;
  virtual ModelInfo info() const noexcept = 0;
  virtual Result<MemoryReport> memory() const noexcept = 0;
  // Makes the KV cache through the policy given at load.
  virtual Status allocate_kv_cache(int32_t num_blocks, int32_t block_tokens) noexcept = 0;
  virtual Status step(const StepInput& input, StepOutput& output) noexcept = 0;

  // Overlapped steps (optional; docs/architecture.md, "Overlapped steps").
  // submit_step checks and queues a step and returns while the device runs
  // it; it reads `input` only during the call. collect_step waits for the
  // oldest queued step and gives its output, as step would have. The engine
  // submits step N+1, whose decoding sequences take step N's samples through
  // StepSequence::previous_sample, before it collects step N, so the device
  // never waits for the host; at most two steps are queued. A step that fails
  // at submit is not queued; a step whose kernels fail reports it at collect.
  virtual bool overlaps_steps() const noexcept { return false; }
  virtual Status submit_step(const StepInput& input) noexcept {
    (void)input;
    return Status(ErrorCode::unsupported, "this model does not overlap steps");
  }
  virtual Status collect_step(StepOutput& output) noexcept {
    (void)output;
    return Status(ErrorCode::unsupported, "this model does not overlap steps");
  }

  // Inputs the engine prepares ahead of a step (image embeddings): memory for
  // `rows` embeddings of [hidden_size] in the dtype EmbeddingSpans must have,
  // on the model's device: what the vision encoder fills (vision.hpp) and
  // steps later read. Its release must not wait for the device (a request
  // ends while steps are in flight).
  virtual Result<PluginPtr<DeviceTensor>> allocate_embeddings(int64_t rows) noexcept = 0;

  // Quantizer calibration: runs `tokens` as one sequence through the model
  // (after load; the KV cache, if any, is left as it was) and reports every
  // linear layer's input.
  virtual Status observe_linear_inputs(std::span<const TokenId> tokens, CalibrationObserver& observer) noexcept {
    (void)tokens;
    (void)observer;
    return Status(ErrorCode::unsupported, "this model does not support calibration");
  }
  // The linear layers that share an input and what produces it (after load),
  // so a quantizer can rescale channels; every linear observe_linear_inputs
  // reports is in exactly one group. Empty: the model offers none.
  virtual std::vector<LinearInputGroup> linear_input_groups() const noexcept { return {}; }
};

}  // namespace hostrun
