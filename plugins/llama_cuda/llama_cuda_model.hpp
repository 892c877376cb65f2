// The Llama model on CUDA: weights on the GPU, linear layers through
// hostrun::LinearLayer (the quantizer's, or dense_linear.hpp's cuBLAS and
// small_gemm), the rest from kernels/cuda, K/V through the KvCachePolicy
// given at load (kv_cuda).
//
// Same StepInput semantics as llama_cpu (its README is the contract): the
// whole step is checked on the host before anything runs
// (hostrun::check_step_input); q/k/v_proj are one fused [q + 2 kv, hidden]
// product and gate/up one [2 intermediate, hidden] product; the final norm
// and LM head run only on sampling positions; sampling (penalties,
// temperature, top-k/p, min-p, Philox) runs on the GPU; logits go to the
// host only for logprobs and return_logits.
//
// A step, file by file:
//   llama_cuda_step.cpp  submit / collect, and the step cut into passes
//   step_layout.cpp      a pass's index arrays: StepInput -> hostrun::PagedLayout
//                        and sampling rows -> pinned -> device arena (Pass)
//   step_layers.cpp      embedding, then per layer: norm, QKV, RoPE + KV write,
//                        attention, o_proj, MLP
//   step_head.cpp        final norm, LM head, sampling, logprobs/logits read-back
//   step_graphs.cpp      CUDA graphs of small decode passes
//
// Memory: weights and a workspace (step_workspace.hpp) sized at load for
// `max_tokens_per_step` tokens and `max_batch` sampled rows; a step with more
// tokens is run as several passes (whole sequences, or chunks of one long
// prefill), more rows as several LM-head chunks, so no step fails for its
// size. Only the index arena (block tables, penalty histories) grows, and
// only when a step needs more than any before it.
//
// Overlapped steps (Model::submit_step / collect_step): a step is enqueued
// whole (all passes, no synchronize) and collected by an event, so the
// engine schedules step N+1 while the GPU runs step N. The two queued steps
// alternate between two sets of pinned buffers (index arrays waiting for
// their upload; sampled ids and the error flag coming back), chosen by the
// step's parity. Sampled ids also stay on the GPU in sampled_; a step that
// decodes them (previous_sample) first copies them to previous_sampled_, and
// a kernel puts them in its token ids before the embedding lookup.
#pragma once

#include <cuda_runtime_api.h>
#include <hostrun/sdk.hpp>

#include <deque>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "cuda/sampling.hpp"
#include "dense_linear.hpp"
#include "device_memory.hpp"
#include "llama_common/llama_config.hpp"
#include "step_profile.hpp"
#include "step_workspace.hpp"

namespace hostrun::llama_cuda {

// One layer's weights: the norms dense on the GPU, the products as linear layers.
struct LayerWeights {
  const void* input_norm = nullptr;  // [hidden]
  PluginPtr<LinearLayer> qkv;        // [q_size + 2 kv_size, hidden]: q, k, v fused in that order
  PluginPtr<LinearLayer> o_proj;     // [hidden, q_size]
  const void* post_norm = nullptr;   // [hidden]
  PluginPtr<LinearLayer> gate_up;    // [2 intermediate, hidden]: gate, up fused in that order
  PluginPtr<LinearLayer> down_proj;  // [hidden, intermediate]
};

// One forward pass over pieces of a step, laid out (step_layout.cpp): its
// index arrays on the device and what its head needs on the host.
struct Pass {
  std::span<const StepPiece> pieces;
  int32_t first_row = 0;        // the step's sampled row of the pass's first
  int32_t num_tokens = 0;
  int32_t num_rows = 0;         // sampled rows
  bool decode = false;          // every piece is one token
  bool graphed = false;         // laid out in graph_arena_, at a CUDA graph's fixed addresses
  bool has_previous = false;    // a token is the previous step's sample (overlapped steps)
  bool has_embeddings = false;  // a piece has embedding spans
  // Whether any sampling sequence of the whole step asks for logprobs /
  // logits (then every sampled row gets an entry, as llama_cpu does).
  bool any_logprobs = false;
  bool any_logits = false;
  PagedKvBatch batch;  // on the device
  // On the device: token ids and, per token, which previous sample it is (or
  // -1), [token_slots] each; the pass's token each sampled row reads and its
  // sampling parameters, [num_rows] each; penalties' ids (null when none);
  // suppressed (row within its LM-head chunk, id) pairs.
  int32_t token_slots = 0;
  int32_t* token_ids = nullptr;
  const int32_t* previous_index = nullptr;
  const int32_t* row_tokens = nullptr;
  const cuda::SamplingRow* sampling = nullptr;
  const int32_t* history_ids = nullptr;
  const int32_t* suppressed = nullptr;
  // On the host: LM-head chunk c's suppressed pairs are [suppressed_begin[c],
  // suppressed_begin[c + 1]); the StepSequence of each sampled row.
  std::vector<int32_t> suppressed_begin;
  std::vector<int32_t> row_sequence;
};

class LlamaCudaModel final : public Model {
 public:
  explicit LlamaCudaModel(const CreateContext& context);
  ~LlamaCudaModel() override;

  Status load(const LoadContext& context) noexcept override;
  ModelInfo info() const noexcept override;
  Result<MemoryReport> memory() const noexcept override;
  Status allocate_kv_cache(int32_t num_blocks, int32_t block_tokens) noexcept override;
  Status step(const StepInput& input, StepOutput& output) noexcept override;
  // Not while profiling: the profile synchronizes every pass to read its events.
  bool overlaps_steps() const noexcept override { return !profile_.enabled(); }
  Status submit_step(const StepInput& input) noexcept override;
  Status collect_step(StepOutput& output) noexcept override;
  Result<PluginPtr<DeviceTensor>> allocate_embeddings(int64_t rows) noexcept override;
  // Which linears read one input (`hostrun lite fp8 --device cuda` lists the
  // layers to quantize from it, `lite auto_awq --device cuda` what to scale).
  std::vector<LinearInputGroup> linear_input_groups() const noexcept override;
  // The tokens as one prefill over a KV cache of its own (the model's, if
  // any, is not touched; no step may be queued), in passes of at most
  // max_tokens_per_step tokens; every linear input is widened to f32 on the
  // GPU and read back before the observer sees it.
  Status observe_linear_inputs(std::span<const TokenId> tokens, CalibrationObserver& observer) noexcept override;

 private:
  struct LayerViews;  // step_layers.cpp

  // llama_cuda_load.cpp
  void load_checked(const LoadContext& context);
  void load_weights(const WeightSource& weights, Quantizer* quantizer);
  void allocate_workspace();
  void upload_rope_table();
  void allocate_kv_cache_checked(int32_t num_blocks, int32_t block_tokens);

  // llama_cuda_step.cpp
  void submit_checked(const StepInput& input);
  void collect_checked(StepOutput& output);
  void ensure_sample_capacity(int32_t rows);
  // One pass; its sampled rows are the step's rows [first_row, ...). With
  // `read_now` (logprobs / logits asked for) every LM-head chunk is
  // synchronized and reported into `output` at once.
  void run_pass(const StepInput& input, std::span<const StepPiece> pieces, int32_t first_row, bool read_now,
                StepOutput& output);
  void end_profiled_pass(int32_t tokens);
  void observe(std::span<const TokenId> tokens, CalibrationObserver& observer);
  // During observe(): `rows` [tokens, columns] of the pass, reported as the
  // input of each of `linears` (names after the layer prefix).
  void report_input(int32_t layer, std::initializer_list<const char*> linears, const std::byte* rows, int64_t tokens,
                    int64_t columns);

  // step_layout.cpp
  Pass lay_out_pass(const StepInput& input, std::span<const StepPiece> pieces, int32_t first_row);
  size_t graph_arena_bytes() const;

  // step_layers.cpp
  void enqueue_layers(const StepInput& input, const Pass& pass);
  void enqueue_embeddings(const StepInput& input, const Pass& pass);
  void enqueue_attention(int32_t layer, const Pass& pass, const LayerViews& views);
  void enqueue_mlp(int32_t layer, const Pass& pass, const LayerViews& views);

  // step_head.cpp
  void run_head(const StepInput& input, const Pass& pass, bool read_now, StepOutput& output);
  void enqueue_head(const Pass& pass, int32_t chunk_start, int32_t chunk_rows, int32_t chunk, bool read_now);
  void read_back_ids(const Pass& pass, int32_t row, int32_t rows);
  void report_rows(const StepInput& input, const Pass& pass, int32_t chunk_start, int32_t chunk_rows,
                   StepOutput& output);

  // step_graphs.cpp
  // Replays the pass's graph, capturing it first if new; false when capture
  // failed (logged; graphs are off from then on).
  bool replay_graph(const StepInput& input, const Pass& pass);
  std::unique_ptr<GraphExec> capture_graph(const std::function<void()>& enqueue);
  void clear_graphs();

  Logger log_;
  LibraryPin library_;  // carried by the embedding rows handed out
  int64_t max_tokens_per_step_ = 8192;
  int64_t max_batch_ = 256;
  int64_t small_gemm_max_rows_ = 1;  // products of at most this many rows use cuda::small_gemm
  bool loaded_ = false;
  llama::LlamaConfig config_;
  std::vector<TokenId> eos_ids_;
  std::optional<TokenId> bos_id_;
  Device device_{DeviceKind::cuda, 0};
  DType dtype_ = DType::bf16;
  float softmax_scale_ = 1.0f;
  KvCachePolicy* kv_policy_ = nullptr;
  KvFormat kv_format_;
  PluginPtr<KvCache> kv_cache_;
  DeviceBuffer attention_workspace_;  // KvCachePolicy::workspace_bytes for the cache's shape
  int32_t block_tokens_ = 0;

  cudaStream_t stream_ = nullptr;
  std::shared_ptr<EmbeddingPool> embedding_pool_;  // shared with the rows handed out, which may outlive the model
  std::unique_ptr<DenseGemm> gemm_;  // the dense layers' and the LM head's
  DeviceBuffer weight_memory_;       // embeddings, norms, LM head, and the dense layers' weights
  size_t weight_bytes_ = 0;          // weight_memory_ and the quantizer's layers
  const void* embed_tokens_ = nullptr;
  const void* final_norm_ = nullptr;
  const void* lm_head_ = nullptr;  // embed_tokens_ when tied
  std::vector<LayerWeights> layers_;

  StepWorkspace workspace_;

  // Per-pass index arrays: laid out by paged_layout_ (and the sampling rows)
  // straight into the step's pinned arena (after the passes before it: their
  // uploads may not have run yet) and sent in one copy to device_arena_
  // (reused by every pass in stream order).
  PagedLayout paged_layout_;
  PinnedBuffer pinned_arena_[2];  // by step parity
  size_t pinned_arena_used_ = 0;  // of the current step's arena
  DeviceBuffer device_arena_;
  PinnedBuffer pinned_logits_;  // [max_batch, vocab] f32, for logprobs / return_logits

  // Sampled ids of the step submitted last, [sampled_capacity_] each.
  DeviceBuffer sampled_memory_;
  int32_t* sampled_ = nullptr;
  int32_t* previous_sampled_ = nullptr;
  int32_t sampled_capacity_ = 0;
  // Queued steps, oldest first (at most two).
  struct QueuedStep {
    int parity = 0;
    int32_t rows = 0;       // sampled ids it returns
    bool reported = false;  // `output` was filled at submit (logprobs / logits)
    StepOutput output;
  };
  std::deque<QueuedStep> queued_;
  uint64_t submitted_ = 0;
  int parity_ = 0;                  // of the step being submitted
  int32_t step_rows_ = 0;           // its sampled rows
  int32_t previous_rows_ = 0;       // sampled rows of the step submitted last (previous_sample's range)
  PinnedBuffer pinned_results_[2];  // by parity: [rows] sampled ids, then the error flag
  cudaEvent_t step_done_[2] = {nullptr, nullptr};

  StepProfile profile_;  // setting `profile`

  // Set only inside observe(): the layers report their linears' inputs to it
  // through f32 copies on the device and in pinned memory.
  CalibrationObserver* observer_ = nullptr;
  DeviceBuffer observed_f32_;
  PinnedBuffer observed_host_;

  // CUDA graphs for small decode passes (setting `cuda_graphs`): at batch 1
  // a token is ~300 launches, most of a few microseconds, and replaying them
  // as one graph removes the launch gaps between them (157.5 -> 168.2 tok/s).
  // A pass qualifies when every sequence decodes one token, there are at most
  // graph_max_sequences of them, and nothing varies in size between steps (no
  // logprobs/logits read-back, penalties, suppressed ids or embeddings). Its
  // index arrays go to graph_arena_ at offsets fixed for graph_max_sequences
  // sequences and graph_blocks_ block-table entries each, so one graph per
  // (sequences, attention plan context) serves every such step; the graph's
  // attention plan is made for the context rounded up to a power of two (the
  // decode kernel reads each sequence's real length).
  static constexpr int32_t graph_max_sequences = 8;
  bool use_graphs_ = true;
  int32_t graph_blocks_ = 0;
  DeviceBuffer graph_arena_;
  std::map<std::pair<int32_t, int32_t>, std::unique_ptr<GraphExec>> graphs_;
};

}  // namespace hostrun::llama_cuda
