// The Llama model on CUDA: bf16/f16 weights on the GPU, cuBLAS GEMMs, the rest
// from kernels/cuda, K/V through the KvCachePolicy given at load (kv_cuda).
//
// Same StepInput semantics as llama_cpu (its README is the contract): the
// whole step is checked on the host before anything runs; q/k/v_proj are one
// fused [q + 2 kv, hidden] matrix and gate/up one [2 intermediate, hidden]
// matrix; the final norm and LM head run only on sampling positions; sampling
// (penalties, temperature, top-k/p, min-p, Philox) runs on the GPU; logits go
// to the host only for logprobs and return_logits.
//
// Memory: weights and a workspace sized at load for `max_tokens_per_step`
// tokens and `max_batch` sampled rows; a step with more tokens is run as
// several passes (whole sequences, or chunks of one long prefill), more rows
// as several LM-head chunks, so no step fails for its size. Only the index
// arena (block tables, penalty histories) grows, and only when a step needs
// more than any before it.
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

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <hostrun/sdk.hpp>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "checkpoint/llama_config.hpp"
#include "cuda/sampling.hpp"
#include "step_profile.hpp"

namespace hostrun::llama_cuda {

// cudaMalloc'd memory, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void allocate(size_t bytes, const char* what);  // throws Error naming `what` and the free memory
  void reset();
  void swap(DeviceBuffer& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(bytes_, other.bytes_);
  }
  std::byte* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  std::byte* data_ = nullptr;
  size_t bytes_ = 0;
};

// cudaMallocHost'd memory (staging for uploads and read-backs).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { reset(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void allocate(size_t bytes, const char* what);
  void reset();
  std::byte* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  std::byte* data_ = nullptr;
  size_t bytes_ = 0;
};

struct LayerWeights {
  const void* input_norm = nullptr;  // [hidden]
  const void* qkv = nullptr;         // [q_size + 2 kv_size, hidden]
  const void* o_proj = nullptr;      // [hidden, q_size]
  const void* post_norm = nullptr;   // [hidden]
  const void* gate_up = nullptr;     // [2 intermediate, hidden]
  const void* down_proj = nullptr;   // [hidden, intermediate]
};

// An instantiated CUDA graph, destroyed with its owner.
class GraphExec {
 public:
  explicit GraphExec(cudaGraphExec_t exec) : exec_(exec) {}
  ~GraphExec() {
    if (exec_) cudaGraphExecDestroy(exec_);
  }
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  cudaGraphExec_t get() const { return exec_; }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// One forward pass's share of a sequence: tokens [first, first + count) of its query.
struct Piece {
  size_t sequence = 0;
  int32_t first = 0;
  int32_t count = 0;
  bool sample = false;
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

 private:
  void load_checked(const LoadContext& context);
  void upload_weights(const WeightSource& weights);
  void allocate_workspace();
  void check_step(const StepInput& input) const;
  void submit_checked(const StepInput& input);
  void collect_checked(StepOutput& output);
  // One pass; its sampled rows are the step's rows [first_row, ...). With
  // `read_now` (logprobs / logits asked for) every LM-head chunk is
  // synchronized and reported into `output` at once.
  void forward(const StepInput& input, const std::vector<Piece>& pieces, int32_t first_row, bool read_now,
               StepOutput& output);
  void ensure_sample_capacity(int32_t rows);
  void clear_graphs();
  // Records `enqueue`'s launches on stream_ as a graph; nullptr (logged, graphs
  // turned off) when capture fails.
  std::unique_ptr<GraphExec> capture_graph(const std::function<void()>& enqueue);
  void gemm(const void* x, const void* weight, int m, int n, int k, void* y, bool f32_out = false);

  Logger log_;
  int64_t max_tokens_per_step_ = 8192;
  int64_t max_batch_ = 256;
  int64_t small_gemm_max_rows_ = 1;  // GEMMs of at most this many rows use cuda::small_gemm
  bool rotary_write_ = true;         // the KV policy's write_rotary, until it answers unsupported
  bool loaded_ = false;
  llama::LlamaConfig config_;
  std::vector<TokenId> eos_ids_;
  std::optional<TokenId> bos_id_;
  Device device_{DeviceKind::cuda, 0};
  DType dtype_ = DType::bf16;
  float softmax_scale_ = 1.0f;
  KvCachePolicy* kv_policy_ = nullptr;
  std::unique_ptr<KvCache> kv_cache_;
  int32_t block_tokens_ = 0;

  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  DeviceBuffer weight_memory_;
  size_t weight_bytes_ = 0;
  const void* embed_tokens_ = nullptr;
  const void* final_norm_ = nullptr;
  const void* lm_head_ = nullptr;  // embed_tokens_ when tied
  std::vector<LayerWeights> layers_;

  // Activations for max_tokens_per_step tokens, rows for max_batch sampled rows.
  DeviceBuffer workspace_;
  void* residual_ = nullptr;
  void* normed_ = nullptr;
  void* delta_ = nullptr;
  void* qkv_ = nullptr;
  void* attended_ = nullptr;
  void* gate_up_ = nullptr;
  void* activated_ = nullptr;
  void* last_residual_ = nullptr;
  void* last_delta_ = nullptr;
  void* last_normed_ = nullptr;
  float* logits_ = nullptr;
  void* sampling_workspace_ = nullptr;
  size_t sampling_workspace_bytes_ = 0;
  void* attention_workspace_ = nullptr;
  size_t attention_workspace_bytes_ = 0;
  float* inv_freq_ = nullptr;
  int32_t* error_flag_ = nullptr;

  // Per-pass index arrays (ids, positions, paged layout, sampling rows,
  // histories), packed on the host, placed in the step's pinned arena (after
  // the passes before it: their uploads may not have run yet) and sent in one
  // copy to device_arena_ (reused by every pass in stream order).
  std::vector<std::byte> host_arena_;
  PinnedBuffer pinned_arena_[2];  // by step parity
  size_t pinned_arena_used_ = 0;  // of the current step's arena
  DeviceBuffer device_arena_;
  PinnedBuffer pinned_logits_;   // [max_batch, vocab] f32, for logprobs / return_logits

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
  int parity_ = 0;                // of the step being submitted
  int32_t step_rows_ = 0;         // its sampled rows
  int32_t previous_rows_ = 0;     // sampled rows of the step submitted last (previous_sample's range)
  PinnedBuffer pinned_results_[2];  // by parity: [rows] sampled ids, then the error flag
  cudaEvent_t step_done_[2] = {nullptr, nullptr};

  StepProfile profile_;  // setting `profile`

  // CUDA graphs for small decode passes (setting `cuda_graphs`): at batch 1
  // a token is ~300 launches, most of a few microseconds, and replaying them
  // as one graph removes the launch gaps between them (157.5 -> 168.2 tok/s). A pass qualifies when
  // every sequence decodes one token, there are at most graph_max_sequences
  // of them, and nothing varies in size between steps (no logprobs/logits
  // read-back, penalties, suppressed ids or embeddings). Its index arrays go
  // to graph_arena_ at offsets fixed for graph_max_sequences sequences and
  // graph_blocks_ block-table entries each, so one graph per (sequences,
  // attention plan context) serves every such step; the graph's attention
  // plan is made for the context rounded up to a power of two (the decode
  // kernel reads each sequence's real length).
  static constexpr int32_t graph_max_sequences = 8;
  bool use_graphs_ = true;
  int32_t graph_blocks_ = 0;
  DeviceBuffer graph_arena_;
  std::map<std::pair<int32_t, int32_t>, std::unique_ptr<GraphExec>> graphs_;
};

}  // namespace hostrun::llama_cuda
