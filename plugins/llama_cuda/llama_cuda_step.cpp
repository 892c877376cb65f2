// step(), submit_step(), collect_step(): one engine step as
// docs/architecture.md draws it, on the GPU. Every check on the caller's
// input happens on the host before the first launch, so a bad step fails
// with a message and leaves the KV cache as it was. The step is then cut into
// passes that fit the workspace, and each pass is laid out
// (step_layout.cpp), run through the layers (step_layers.cpp) and the head
// (step_head.cpp), or replayed as a graph (step_graphs.cpp).
#include <fmt/format.h>

#include <algorithm>

#include "errors.hpp"
#include "llama_cuda_model.hpp"

namespace hostrun::llama_cuda {

namespace {

// Passes of at most `max_tokens` tokens, in sequence order, so the sampled
// ids come out in the order of the sequences; a prefill longer than a pass is
// cut into chunks, each reading the K/V the previous one wrote.
std::vector<std::vector<StepPiece>> cut_into_passes(const StepInput& input, int64_t max_tokens) {
  std::vector<std::vector<StepPiece>> passes(1);
  int64_t pass_tokens = 0;
  for (size_t s = 0; s < input.sequences.size(); ++s) {
    const StepSequence& seq = input.sequences[s];
    int32_t first = 0;
    while (first < seq.query_len) {
      if (pass_tokens == max_tokens) {
        passes.emplace_back();
        pass_tokens = 0;
      }
      const int32_t count = int32_t(std::min<int64_t>(seq.query_len - first, max_tokens - pass_tokens));
      passes.back().push_back(StepPiece{int32_t(s), first, count, seq.sample && first + count == seq.query_len});
      pass_tokens += count;
      first += count;
    }
  }
  if (passes.back().empty()) passes.pop_back();
  return passes;
}

}  // namespace

void LlamaCudaModel::ensure_sample_capacity(int32_t rows) {
  if (rows <= sampled_capacity_) return;
  const int32_t capacity = std::max(rows, 2 * sampled_capacity_);
  // The queued steps read and write the old buffers: let them finish, and
  // keep the last step's ids (a step may still decode them).
  check_cuda(cudaStreamSynchronize(stream_), "waiting for the queued steps");
  DeviceBuffer grown;
  grown.allocate(2 * size_t(capacity) * sizeof(int32_t), "sampled ids");
  if (sampled_ && previous_rows_ > 0)
    check_cuda(cudaMemcpy(grown.data(), sampled_, size_t(previous_rows_) * sizeof(int32_t), cudaMemcpyDeviceToDevice),
               "keeping the sampled ids");
  sampled_memory_.swap(grown);
  sampled_ = reinterpret_cast<int32_t*>(sampled_memory_.data());
  previous_sampled_ = sampled_ + capacity;
  sampled_capacity_ = capacity;
  clear_graphs();  // they hold the old addresses
}

void LlamaCudaModel::submit_checked(const StepInput& input) {
  if (!loaded_) fail(ErrorCode::invalid_argument, "step: the model is not loaded");
  if (!kv_cache_) fail(ErrorCode::invalid_argument, "step: no KV cache: call allocate_kv_cache first");
  if (queued_.size() >= 2) fail(ErrorCode::invalid_argument, "step: two steps are queued already; collect one first");
  StepLimits limits;
  limits.vocab_size = config_.vocab_size;
  limits.num_blocks = kv_cache_->num_blocks();
  limits.block_tokens = block_tokens_;
  limits.hidden_size = config_.hidden_size;
  limits.embedding_device = device_;
  limits.embedding_dtypes = dtype_bit(dtype_);
  limits.previous_samples = previous_rows_;
  if (Status checked = check_step_input(input, limits); !checked) fail(checked.code(), "step: " + checked.message());
  check_cuda(cudaSetDevice(device_.index), "cudaSetDevice");

  QueuedStep queued;
  queued.parity = int(submitted_ % 2);
  bool any_previous = false;
  for (const StepSequence& seq : input.sequences) {
    queued.rows += seq.sample ? 1 : 0;
    queued.reported |= seq.sample && (seq.sampling->top_logprobs >= 0 || seq.return_logits);
    any_previous |= seq.previous_sample >= 0;
  }
  ensure_sample_capacity(queued.rows);
  // Until it is queued, a failing step leaves no ids for the next to decode.
  const int32_t previous_rows = previous_rows_;
  previous_rows_ = 0;
  // This parity's pinned buffers were last used by the step before the one
  // still queued, which has been collected: free to reuse or replace.
  const size_t results_bytes = (size_t(queued.rows) + 1) * sizeof(int32_t);
  if (pinned_results_[queued.parity].bytes() < results_bytes)
    pinned_results_[queued.parity].allocate(std::max<size_t>(results_bytes, size_t(max_batch_ + 1) * sizeof(int32_t)),
                                            "sampled ids read-back");
  parity_ = queued.parity;
  step_rows_ = queued.rows;
  pinned_arena_used_ = 0;
  if (any_previous)
    check_cuda(cudaMemcpyAsync(previous_sampled_, sampled_, size_t(previous_rows) * sizeof(int32_t),
                               cudaMemcpyDeviceToDevice, stream_),
               "keeping the previous step's ids");

  int32_t first_row = 0;
  for (const std::vector<StepPiece>& pieces : cut_into_passes(input, max_tokens_per_step_)) {
    run_pass(input, pieces, first_row, queued.reported, queued.output);
    first_row += int32_t(std::count_if(pieces.begin(), pieces.end(), [](const StepPiece& p) { return p.sample; }));
  }
  auto* results = reinterpret_cast<int32_t*>(pinned_results_[queued.parity].data());
  check_cuda(cudaMemcpyAsync(results + queued.rows, workspace_.error_flag, sizeof(int32_t), cudaMemcpyDeviceToHost,
                             stream_),
             "reading the error flag");
  check_cuda(cudaEventRecord(step_done_[queued.parity], stream_), "cudaEventRecord");
  queued_.push_back(std::move(queued));
  ++submitted_;
  previous_rows_ = step_rows_;
}

void LlamaCudaModel::collect_checked(StepOutput& output) {
  if (queued_.empty()) fail(ErrorCode::invalid_argument, "step: collect_step with no step submitted");
  QueuedStep queued = std::move(queued_.front());
  queued_.pop_front();
  check_cuda(cudaEventSynchronize(step_done_[queued.parity]), "step");
  const auto* results = reinterpret_cast<const int32_t*>(pinned_results_[queued.parity].data());
  if (const int32_t flag = results[queued.rows]; flag != 0) {
    cudaMemsetAsync(workspace_.error_flag, 0, sizeof(int32_t), stream_);
    fail(ErrorCode::internal, fmt::format("step: a kernel reported {}", ref::status_name(ref::Status(flag))));
  }
  if (queued.reported) {
    output = std::move(queued.output);
    return;
  }
  output.sampled.assign(results, results + queued.rows);
  output.logprobs.clear();
  output.logits.clear();
}

void LlamaCudaModel::run_pass(const StepInput& input, std::span<const StepPiece> pieces, int32_t first_row,
                              bool read_now, StepOutput& output) {
  const Pass pass = lay_out_pass(input, pieces, first_row);
  if (pass.graphed && replay_graph(input, pass)) {
    // Outside the graph: the pinned buffer depends on the step's parity.
    read_back_ids(pass, 0, pass.num_rows);
  } else {
    enqueue_layers(input, pass);
    run_head(input, pass, read_now, output);
  }
  end_profiled_pass(pass.num_tokens);
}

// With the profile on, every pass waits for itself so its events can be read.
void LlamaCudaModel::end_profiled_pass(int32_t tokens) {
  if (!profile_.enabled()) return;
  profile_.before_sync(stream_);
  check_cuda(cudaStreamSynchronize(stream_), "step");
  profile_.after_sync(tokens);
}

}  // namespace hostrun::llama_cuda
