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
#include "llama_common/calibration_step.hpp"
#include "llama_cuda_model.hpp"
#include "llama_kernels.hpp"

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

namespace {

// Pages of the private cache observe() runs on (any size gives a step's numbers).
constexpr int32_t kCalibrationBlockTokens = 64;

}  // namespace

Status LlamaCudaModel::observe_linear_inputs(std::span<const TokenId> tokens, CalibrationObserver& observer) noexcept {
  return guard([&] { observe(tokens, observer); });
}

void LlamaCudaModel::observe(std::span<const TokenId> tokens, CalibrationObserver& observer) {
  if (!loaded_) fail(ErrorCode::invalid_argument, "observe_linear_inputs: the model is not loaded");
  if (!queued_.empty())
    fail(ErrorCode::invalid_argument, "observe_linear_inputs: a step is queued; collect it first");
  auto step = llama::CalibrationStep::make(tokens, kCalibrationBlockTokens, config_);
  if (!step) fail(step.status().code(), "observe_linear_inputs: " + step.status().message());
  const StepInput& input = step.value()->input();
  const int32_t num_tokens = step.value()->num_tokens(), num_blocks = step.value()->num_blocks();
  check_cuda(cudaSetDevice(device_.index), "cudaSetDevice");

  // A cache and attention workspace of its own, swapped in for the passes
  // and swapped back (after the GPU is done with them) however they end.
  const std::vector<std::vector<StepPiece>> passes = cut_into_passes(input, max_tokens_per_step_);
  const int32_t pass_tokens = int32_t(std::min<int64_t>(num_tokens, max_tokens_per_step_));  // a pass's most
  const KvShape shape{int32_t(config_.num_hidden_layers), int32_t(config_.num_key_value_heads),
                      int32_t(config_.head_dim), kCalibrationBlockTokens, dtype_};
  KvWorkspaceQuery query;
  query.shape = shape;
  query.q_heads = int32_t(config_.num_attention_heads);
  query.max_tokens = pass_tokens;
  query.max_sequences = 1;
  query.max_context = num_tokens;
  query.device = device_;
  auto workspace_bytes = kv_policy_->workspace_bytes(query);
  throw_if_error(workspace_bytes.status());
  DeviceBuffer attention_workspace;
  attention_workspace.allocate(workspace_bytes.value(), "the calibration pass's attention workspace");
  auto made = kv_policy_->allocate(shape, num_blocks, device_);
  if (!made)
    fail(made.status().code(), fmt::format("observe_linear_inputs: a KV cache for {} tokens: {}", num_tokens,
                                           made.status().message()));
  PluginPtr<KvCache> cache = std::move(made.value());
  if (!cache) fail(ErrorCode::internal, "the KV cache policy returned no cache");
  const size_t widest = size_t(std::max({config_.hidden_size, config_.q_size(), config_.intermediate_size}));
  const size_t observed_bytes = size_t(pass_tokens) * widest * sizeof(float);
  if (observed_f32_.bytes() < observed_bytes) {
    observed_f32_.reset();
    observed_host_.reset();
    observed_f32_.allocate(observed_bytes, "the calibration pass's f32 rows");
    observed_host_.allocate(observed_bytes, "the calibration pass's f32 rows read-back");
  }

  struct Swapped {
    LlamaCudaModel& model;
    PluginPtr<KvCache>& cache;
    DeviceBuffer& workspace;
    int32_t block_tokens;
    Swapped(LlamaCudaModel& m, PluginPtr<KvCache>& c, DeviceBuffer& w, CalibrationObserver& observer)
        : model(m), cache(c), workspace(w), block_tokens(m.block_tokens_) {
      std::swap(model.kv_cache_, cache);
      model.attention_workspace_.swap(workspace);
      model.block_tokens_ = kCalibrationBlockTokens;
      model.observer_ = &observer;
    }
    ~Swapped() {
      cudaStreamSynchronize(model.stream_);
      std::swap(model.kv_cache_, cache);
      model.attention_workspace_.swap(workspace);
      model.block_tokens_ = block_tokens;
      model.observer_ = nullptr;
    }
  } swapped(*this, cache, attention_workspace, observer);
  parity_ = int(submitted_ % 2);
  pinned_arena_used_ = 0;
  for (const std::vector<StepPiece>& pieces : passes) {
    const Pass pass = lay_out_pass(input, pieces, 0);
    enqueue_layers(input, pass);
    end_profiled_pass(pass.num_tokens);
  }
  check_cuda(cudaStreamSynchronize(stream_), "observe_linear_inputs");
}

void LlamaCudaModel::report_input(int32_t layer, std::initializer_list<const char*> linears, const std::byte* rows,
                                  int64_t tokens, int64_t columns) {
  const int64_t count = tokens * columns;
  auto* widened = reinterpret_cast<float*>(observed_f32_.data());
  check_cuda(widen_to_f32(dtype_ == DType::f16 ? cuda::DType::f16 : cuda::DType::bf16, rows, count, widened, stream_),
             "widen_to_f32");
  check_cuda(cudaMemcpyAsync(observed_host_.data(), widened, size_t(count) * sizeof(float), cudaMemcpyDeviceToHost,
                             stream_),
             "reading a linear input back");
  check_cuda(cudaStreamSynchronize(stream_), "observe_linear_inputs");
  const TensorView x = TensorView::contiguous(observed_host_.data(), DType::f32, {tokens, columns});
  for (const char* linear : linears) observer_->on_linear_input(config_.names.layer(int64_t(layer)) + linear, x);
}

}  // namespace hostrun::llama_cuda
