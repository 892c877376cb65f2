// step(): one engine step as docs/architecture.md draws it, on the GPU. Every
// check on the caller's input happens on the host before the first launch,
// so a bad step fails with a message and leaves the KV cache as it was.
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <functional>
#include <cmath>
#include <cstring>
#include <limits>

#include "cuda/embedding.hpp"
#include "cuda/rmsnorm.hpp"
#include "cuda/silu_mul.hpp"
#include "cuda/small_gemm.hpp"
#include "llama_cuda_model.hpp"
#include "llama_kernels.hpp"
#include "ref/logprobs.hpp"

namespace hostrun::llama_cuda {

namespace {

[[noreturn]] void fail(ErrorCode code, std::string message) {
  throw Error(code, "llama_cuda: step: " + std::move(message));
}
void throw_if_error(const Status& status) {
  if (!status) throw Error(status);
}
void check_cuda(cudaError_t error, const char* what) {
  if (error != cudaSuccess)
    fail(ErrorCode::internal, fmt::format("{}: {} ({})", what, cudaGetErrorString(error), cudaGetErrorName(error)));
}

// Sections of the per-pass index arena, each 16-byte aligned.
struct ArenaLayout {
  size_t bytes = 0;
  size_t add(size_t size) {
    const size_t at = bytes;
    bytes += (size + 15) / 16 * 16;
    return at;
  }
};

}  // namespace

void LlamaCudaModel::gemm(const void* x, const void* weight, int m, int n, int k, void* y, bool f32_out) {
  // A few rows (batch-1..8 decode): our bandwidth-bound kernel; else cuBLAS.
  const cuda::DType kdtype = dtype_ == DType::f16 ? cuda::DType::f16 : cuda::DType::bf16;
  if (m <= small_gemm_max_rows_ && cuda::small_gemm_supported(kdtype, m, k, x, weight)) {
    check_cuda(cuda::small_gemm(x, weight, kdtype, m, n, k, y, f32_out, stream_), "small_gemm");
    return;
  }
  // Row-major y[m, n] = x[m, k] . weight[n, k]^T is column-major y^T = weight^T . x^T.
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t in = dtype_ == DType::f16 ? CUDA_R_16F : CUDA_R_16BF;
  const cublasStatus_t status =
      cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, weight, in, k, x, in, k, &beta, y,
                   f32_out ? CUDA_R_32F : in, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS)
    fail(ErrorCode::internal, fmt::format("cublasGemmEx (m {}, n {}, k {}) failed: {}", m, n, k,
                                          cublasGetStatusString(status)));
}

void LlamaCudaModel::check_step(const StepInput& input) const {
  const size_t num_tokens = input.token_ids.size();
  const size_t num_sequences = input.sequences.size();
  if (input.positions.size() != num_tokens)
    fail(ErrorCode::invalid_argument, fmt::format("{} token ids but {} positions", num_tokens, input.positions.size()));
  if (num_tokens > size_t(INT32_MAX)) fail(ErrorCode::invalid_argument, "too many tokens in one step");
  if (num_sequences == 0 && num_tokens != 0)
    fail(ErrorCode::invalid_argument, fmt::format("{} tokens but no sequences", num_tokens));
  const int64_t vocab = config_.vocab_size;
  const int32_t num_blocks = kv_cache_->num_blocks();
  int32_t expected_start = 0;
  for (size_t s = 0; s < num_sequences; ++s) {
    const StepSequence& seq = input.sequences[s];
    if (seq.query_start != expected_start)
      fail(ErrorCode::invalid_argument,
           fmt::format("sequence {}: query_start {}, expected {} (sequences own consecutive runs of token_ids, in order)",
                       s, seq.query_start, expected_start));
    if (seq.query_len <= 0 || int64_t(seq.query_start) + seq.query_len > int64_t(num_tokens))
      fail(ErrorCode::invalid_argument, fmt::format("sequence {}: query_len {} from token {} does not fit the step's {} tokens",
                                                    s, seq.query_len, seq.query_start, num_tokens));
    if (seq.cached_len < 0 || int64_t(seq.cached_len) + seq.query_len > INT32_MAX)
      fail(ErrorCode::invalid_argument, fmt::format("sequence {}: cached_len {} is out of range", s, seq.cached_len));
    const int32_t context = seq.cached_len + seq.query_len;
    for (int32_t j = 0; j < seq.query_len; ++j) {
      const size_t t = size_t(seq.query_start + j);
      if (input.positions[t] != seq.cached_len + j)
        fail(ErrorCode::invalid_argument, fmt::format("sequence {}: token {} is at position {}, expected cached_len + {} = {}",
                                                      s, t, input.positions[t], j, seq.cached_len + j));
      if (input.token_ids[t] < 0 || input.token_ids[t] >= vocab)
        fail(ErrorCode::invalid_argument,
             fmt::format("token id {} (token {} of the step, sequence {}) is outside the vocabulary of {}",
                         input.token_ids[t], t, s, vocab));
    }
    const int32_t blocks_needed = int32_t((int64_t(context) + block_tokens_ - 1) / block_tokens_);
    if (int64_t(seq.block_table.size()) < blocks_needed)
      fail(ErrorCode::invalid_argument,
           fmt::format("sequence {}: {} tokens of context need {} blocks of {}, but its block table has {}", s, context,
                       blocks_needed, block_tokens_, seq.block_table.size()));
    for (int32_t b = 0; b < blocks_needed; ++b)
      if (seq.block_table[size_t(b)] < 0 || seq.block_table[size_t(b)] >= num_blocks)
        fail(ErrorCode::invalid_argument, fmt::format("sequence {}: block table entry {} is {}, outside the cache's {} blocks",
                                                      s, b, seq.block_table[size_t(b)], num_blocks));
    if (seq.sample && seq.sampling == nullptr)
      fail(ErrorCode::invalid_argument, fmt::format("sequence {} samples but has no sampling parameters", s));
    if (seq.previous_sample >= previous_rows_)
      fail(ErrorCode::invalid_argument, fmt::format("sequence {}: previous_sample {}, but the step submitted before "
                                                    "this one sampled {} ids",
                                                    s, seq.previous_sample, previous_rows_));
    if (seq.previous_sample >= 0 && seq.sample && seq.sampling->has_penalties())
      fail(ErrorCode::invalid_argument,
           fmt::format("sequence {}: penalties read the whole history, which lacks its previous_sample", s));
    if (seq.generated.size() > seq.history.size())
      fail(ErrorCode::invalid_argument, fmt::format("sequence {}: {} generated ids but only {} in its history", s,
                                                    seq.generated.size(), seq.history.size()));
    if (seq.sample)
      for (size_t i = 0; i < seq.history.size(); ++i)
        if (seq.history[i] < 0 || seq.history[i] >= vocab)
          fail(ErrorCode::invalid_argument, fmt::format("sequence {}: history id {} (index {}) is outside the vocabulary of {}",
                                                        s, seq.history[i], i, vocab));
    for (const EmbeddingSpan& span : seq.embeddings) {
      const TensorView& v = span.values;
      const int64_t rows = v.rank > 0 ? v.shape[0] : 0;
      if (v.rank != 2 || v.shape[1] != config_.hidden_size || v.device.kind != DeviceKind::cuda || !v.is_contiguous() ||
          v.dtype != dtype_)
        fail(ErrorCode::invalid_argument,
             fmt::format("sequence {}: an embedding span must be a contiguous GPU [tokens, {}] {} tensor", s,
                         config_.hidden_size, dtype_name(dtype_)));
      if (span.first_token < 0 || int64_t(span.first_token) + rows > seq.query_len)
        fail(ErrorCode::invalid_argument, fmt::format("sequence {}: embedding span of {} tokens at {} is outside its {} tokens of this step",
                                                      s, rows, span.first_token, seq.query_len));
    }
    expected_start = seq.query_start + seq.query_len;
  }
  if (size_t(expected_start) != num_tokens)
    fail(ErrorCode::invalid_argument, fmt::format("the sequences cover {} tokens but the step has {}", expected_start, num_tokens));
}

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
  if (!loaded_) fail(ErrorCode::invalid_argument, "the model is not loaded");
  if (!kv_cache_) fail(ErrorCode::invalid_argument, "no KV cache: call allocate_kv_cache first");
  if (queued_.size() >= 2) fail(ErrorCode::invalid_argument, "two steps are queued already; collect one first");
  check_step(input);
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

  // Passes of at most max_tokens_per_step tokens, in sequence order, so the
  // sampled ids come out in the order of the sequences; a prefill longer than
  // a pass is cut into chunks, each reading the K/V the previous one wrote.
  std::vector<Piece> pass;
  int64_t pass_tokens = 0;
  int32_t first_row = 0, pass_rows = 0;
  auto run_pass = [&] {
    forward(input, pass, first_row, queued.reported, queued.output);
    first_row += pass_rows;
    pass.clear();
    pass_tokens = 0;
    pass_rows = 0;
  };
  for (size_t s = 0; s < input.sequences.size(); ++s) {
    const StepSequence& seq = input.sequences[s];
    int32_t first = 0;
    while (first < seq.query_len) {
      if (pass_tokens == max_tokens_per_step_) run_pass();
      const int32_t count = int32_t(std::min<int64_t>(seq.query_len - first, max_tokens_per_step_ - pass_tokens));
      const bool sample = seq.sample && first + count == seq.query_len;
      pass.push_back(Piece{s, first, count, sample});
      pass_tokens += count;
      pass_rows += sample ? 1 : 0;
      first += count;
    }
  }
  if (!pass.empty()) run_pass();
  auto* results = reinterpret_cast<int32_t*>(pinned_results_[queued.parity].data());
  check_cuda(cudaMemcpyAsync(results + queued.rows, error_flag_, 4, cudaMemcpyDeviceToHost, stream_),
             "reading the error flag");
  check_cuda(cudaEventRecord(step_done_[queued.parity], stream_), "cudaEventRecord");
  queued_.push_back(std::move(queued));
  ++submitted_;
  previous_rows_ = step_rows_;
}

void LlamaCudaModel::collect_checked(StepOutput& output) {
  if (queued_.empty()) fail(ErrorCode::invalid_argument, "collect_step with no step submitted");
  QueuedStep queued = std::move(queued_.front());
  queued_.pop_front();
  check_cuda(cudaEventSynchronize(step_done_[queued.parity]), "the step");
  const auto* results = reinterpret_cast<const int32_t*>(pinned_results_[queued.parity].data());
  if (const int32_t flag = results[queued.rows]; flag != 0) {
    cudaMemsetAsync(error_flag_, 0, 4, stream_);
    fail(ErrorCode::internal, fmt::format("a kernel reported {}", ref::status_name(ref::Status(flag))));
  }
  if (queued.reported) {
    output = std::move(queued.output);
    return;
  }
  output.sampled.assign(results, results + queued.rows);
  output.logprobs.clear();
  output.logits.clear();
}

void LlamaCudaModel::forward(const StepInput& input, const std::vector<Piece>& pieces, int32_t first_row,
                             bool read_now, StepOutput& output) {
  const int64_t vocab = config_.vocab_size;
  // Whether any sampling sequence of the whole step asks for logprobs / logits
  // (then every sampled token gets an entry, as llama_cpu does).
  bool any_logprobs = false, any_logits = false;
  for (const StepSequence& seq : input.sequences)
    if (seq.sample) {
      any_logprobs |= seq.sampling->top_logprobs >= 0;
      any_logits |= seq.return_logits;
    }

  // The pass's layout on the host.
  const int32_t num_sequences = int32_t(pieces.size());
  int32_t num_tokens = 0, max_query_len = 0, max_context_len = 0, max_blocks = 0, num_rows = 0;
  size_t history_ids = 0, suppressed_pairs = 0;
  for (const Piece& p : pieces) {
    const StepSequence& seq = input.sequences[p.sequence];
    const int32_t context = seq.cached_len + p.first + p.count;
    num_tokens += p.count;
    max_query_len = std::max(max_query_len, p.count);
    max_context_len = std::max(max_context_len, context);
    max_blocks = std::max(max_blocks, (context + block_tokens_ - 1) / block_tokens_);
    if (p.sample) {
      ++num_rows;
      if (seq.sampling->has_penalties()) history_ids += seq.history.size();
      suppressed_pairs += seq.suppressed.size();
    }
  }
  bool decode_pass = true;
  for (const Piece& p : pieces) decode_pass &= p.count == 1;
  bool has_embeddings = false;
  for (const Piece& p : pieces) has_embeddings |= !input.sequences[p.sequence].embeddings.empty();
  // A graphed pass lays its arrays out for graph_max_sequences sequences of
  // graph_blocks_ blocks, so every such pass has the same device addresses.
  bool graphed = use_graphs_ && first_row == 0 && decode_pass && num_sequences <= graph_max_sequences && num_rows == num_sequences &&
                 num_rows <= max_batch_ && !any_logprobs && !any_logits && history_ids == 0 && suppressed_pairs == 0 &&
                 !has_embeddings && max_blocks <= graph_blocks_;
  const int32_t seq_slots = graphed ? graph_max_sequences : num_sequences;
  const int32_t block_stride = graphed ? graph_blocks_ : max_blocks;
  ArenaLayout layout;
  const size_t at_ids = layout.add(size_t(graphed ? seq_slots : num_tokens) * 4);
  const size_t at_positions = layout.add(size_t(graphed ? seq_slots : num_tokens) * 4);
  const size_t at_slots = layout.add(size_t(graphed ? seq_slots : num_tokens) * 4);
  const size_t at_query_start = layout.add(size_t(seq_slots + 1) * 4);
  const size_t at_context = layout.add(size_t(seq_slots) * 4);
  const size_t at_blocks = layout.add(size_t(seq_slots) * size_t(block_stride) * 4);
  const size_t at_rows = layout.add(size_t(graphed ? seq_slots : num_rows) * 4);
  const size_t at_params = layout.add(size_t(graphed ? seq_slots : num_rows) * sizeof(cuda::SamplingRow));
  const size_t at_history = layout.add(history_ids * 4);
  const size_t at_suppressed = layout.add(suppressed_pairs * 8);
  const size_t at_previous = layout.add(size_t(graphed ? seq_slots : num_tokens) * 4);
  if (graphed && layout.bytes > graph_arena_.bytes()) graphed = false;
  profile_.begin_pass(decode_pass);
  host_arena_.assign(layout.bytes, std::byte{0});
  auto ints = [&](size_t at) { return reinterpret_cast<int32_t*>(host_arena_.data() + at); };
  int32_t* ids = ints(at_ids);
  int32_t* positions = ints(at_positions);
  int32_t* slots = ints(at_slots);
  int32_t* query_start = ints(at_query_start);
  int32_t* context_lens = ints(at_context);
  int32_t* block_tables = ints(at_blocks);
  int32_t* rows = ints(at_rows);
  auto* params = reinterpret_cast<cuda::SamplingRow*>(host_arena_.data() + at_params);
  int32_t* history = ints(at_history);
  int32_t* suppressed = ints(at_suppressed);
  int32_t* previous = ints(at_previous);  // per token: which previous sample it is, or -1
  std::fill_n(previous, graphed ? seq_slots : num_tokens, -1);
  bool has_previous = false;
  // Suppressed pairs are (row within its LM-head chunk, id); chunk c's pairs
  // are [suppressed_begin[c], suppressed_begin[c + 1]).
  std::vector<int32_t> suppressed_begin{0};
  std::vector<size_t> row_sequence;  // the StepSequence of each sampled row
  int32_t token = 0, row = 0, history_at = 0, pair = 0;
  for (int32_t i = 0; i < num_sequences; ++i) {
    const Piece& p = pieces[size_t(i)];
    const StepSequence& seq = input.sequences[p.sequence];
    const int32_t cached = seq.cached_len + p.first;
    query_start[i] = token;
    context_lens[i] = cached + p.count;
    const int32_t blocks = (cached + p.count + block_tokens_ - 1) / block_tokens_;
    std::copy_n(seq.block_table.begin(), blocks, block_tables + size_t(i) * size_t(block_stride));
    if (p.first == 0 && seq.previous_sample >= 0) {
      previous[token] = seq.previous_sample;
      has_previous = true;
    }
    for (int32_t j = 0; j < p.count; ++j) {
      const int32_t position = cached + j;
      ids[token + j] = input.token_ids[size_t(seq.query_start + p.first + j)];
      positions[token + j] = position;
      slots[token + j] = seq.block_table[size_t(position / block_tokens_)] * block_tokens_ + position % block_tokens_;
    }
    token += p.count;
    if (p.sample) {
      rows[row] = token - 1;
      const SamplingParams& sp = *seq.sampling;
      cuda::SamplingRow& r = params[row];
      r.temperature = sp.temperature;
      r.top_k = sp.top_k;
      r.top_p = sp.top_p;
      r.min_p = sp.min_p;
      r.repetition_penalty = sp.repetition_penalty;
      r.presence_penalty = sp.presence_penalty;
      r.frequency_penalty = sp.frequency_penalty;
      r.seed = seq.rng_seed;
      r.step = seq.rng_offset;
      if (sp.has_penalties()) {
        const int32_t prompt = int32_t(seq.history.size() - seq.generated.size());
        std::copy(seq.history.begin(), seq.history.end(), history + history_at);
        r.prompt_offset = history_at;
        r.num_prompt_ids = prompt;
        r.generated_offset = history_at + prompt;
        r.num_generated_ids = int32_t(seq.generated.size());
        history_at += int32_t(seq.history.size());
      }
      for (TokenId id : seq.suppressed)
        if (id >= 0 && id < vocab) {
          suppressed[2 * pair] = int32_t(row % max_batch_);
          suppressed[2 * pair + 1] = id;
          ++pair;
        }
      row_sequence.push_back(p.sequence);
      ++row;
      if (row % max_batch_ == 0) suppressed_begin.push_back(pair);
    }
  }
  query_start[num_sequences] = token;
  if (row % max_batch_ != 0) suppressed_begin.push_back(pair);

  // One upload: host arena -> the step's pinned arena -> device. Uploads of
  // this step's earlier passes may still wait in the stream, so each pass
  // takes the next free part; when none is left, wait for the stream first.
  PinnedBuffer& pinned_arena = pinned_arena_[parity_];
  if (pinned_arena_used_ + layout.bytes > pinned_arena.bytes() || layout.bytes > device_arena_.bytes()) {
    check_cuda(cudaStreamSynchronize(stream_), "waiting for earlier uploads");
    pinned_arena_used_ = 0;
    const size_t grown = std::max<size_t>(layout.bytes * 2, size_t(1) << 20);
    if (layout.bytes > pinned_arena.bytes()) pinned_arena.allocate(grown, "the step's index arrays");
    if (layout.bytes > device_arena_.bytes()) device_arena_.allocate(grown, "the step's index arrays");
  }
  std::byte* const staged = pinned_arena.data() + pinned_arena_used_;
  pinned_arena_used_ += (layout.bytes + 255) / 256 * 256;
  std::memcpy(staged, host_arena_.data(), layout.bytes);
  profile_.mark(Op::upload, stream_);
  std::byte* const device_arena = graphed ? graph_arena_.data() : device_arena_.data();
  check_cuda(cudaMemcpyAsync(device_arena, staged, layout.bytes, cudaMemcpyHostToDevice, stream_),
             "uploading the step");
  auto device_ints = [&](size_t at) { return reinterpret_cast<int32_t*>(device_arena + at); };

  PagedKvBatch batch;
  batch.num_sequences = num_sequences;
  batch.num_tokens = num_tokens;
  batch.query_start = device_ints(at_query_start);
  batch.context_lens = device_ints(at_context);
  batch.block_tables = device_ints(at_blocks);
  batch.max_blocks_per_sequence = block_stride;
  batch.slot_mapping = device_ints(at_slots);
  batch.positions = device_ints(at_positions);
  batch.max_query_len = max_query_len;
  // A graph's attention plan serves contexts up to the next power of two.
  const int32_t graph_context = graphed ? int32_t(std::min<int64_t>(std::bit_ceil(uint32_t(std::max(max_context_len, 64))),
                                                                    std::max<int64_t>(config_.max_position_embeddings, max_context_len)))
                                        : max_context_len;
  batch.max_context_len = graph_context;
  batch.device = device_;

  const cuda::DType kdtype = dtype_ == DType::f16 ? cuda::DType::f16 : cuda::DType::bf16;
  const int hidden = int(config_.hidden_size);
  const size_t e = 2;
  const float eps = float(config_.rms_norm_eps);
  // Embedding and every layer, enqueued on stream_ (also under graph capture).
  auto enqueue_layers = [&] {
    profile_.mark(Op::embedding, stream_);
    // Graphs always take it (a step with none marks every slot -1).
    if (graphed || has_previous)
      check_cuda(take_previous_samples(device_ints(at_ids), device_ints(at_previous), previous_sampled_,
                                       graphed ? seq_slots : num_tokens, stream_),
                 "take_previous_samples");
    check_cuda(cuda::embedding_lookup(device_ints(at_ids), num_tokens, embed_tokens_, kdtype, vocab, hidden, residual_,
                                      error_flag_, stream_),
               "embedding_lookup");
    token = 0;
    for (const Piece& p : pieces) {
      const StepSequence& seq = input.sequences[p.sequence];
      for (const EmbeddingSpan& span : seq.embeddings) {
        const int32_t span_rows = int32_t(span.values.shape[0]);
        const int32_t lo = std::max(span.first_token, p.first), hi = std::min(span.first_token + span_rows, p.first + p.count);
        if (lo >= hi) continue;
        check_cuda(cudaMemcpyAsync(static_cast<std::byte*>(residual_) + size_t(token + lo - p.first) * hidden * e,
                                   static_cast<const std::byte*>(span.values.data) + size_t(lo - span.first_token) * hidden * e,
                                   size_t(hi - lo) * hidden * e, cudaMemcpyDeviceToDevice, stream_),
                   "copying image embeddings");
      }
      token += p.count;
    }

    const int64_t q_heads = config_.num_attention_heads, kv_heads = config_.num_key_value_heads;
    const int64_t head_dim = config_.head_dim;
    const int64_t q_size = config_.q_size(), kv_size = config_.kv_size(), qkv_width = q_size + 2 * kv_size;
    const int inter = int(config_.intermediate_size);
    const Device device = device_;
    auto strided = [&](void* data, int64_t heads, int64_t row_stride) {
      TensorView v;
      v.data = data;
      v.dtype = dtype_;
      v.device = device;
      v.rank = 3;
      v.shape = {num_tokens, heads, head_dim};
      v.strides = {row_stride, head_dim, 1};
      return v;
    };
    std::byte* qkv = static_cast<std::byte*>(qkv_);
    const TensorView queries = strided(qkv, q_heads, qkv_width);
    const TensorView keys = strided(qkv + size_t(q_size) * e, kv_heads, qkv_width);
    const TensorView values = strided(qkv + size_t(q_size + kv_size) * e, kv_heads, qkv_width);
    const TensorView attended = strided(attended_, q_heads, q_size);
    ExecContext exec;
    exec.device = device_;
    exec.stream = stream_;
    exec.workspace = TensorView::contiguous(attention_workspace_, DType::u8, {int64_t(attention_workspace_bytes_)}, device_);

    for (size_t l = 0; l < layers_.size(); ++l) {
      const LayerWeights& w = layers_[l];
      profile_.mark(Op::norm, stream_);
      if (l == 0)
        check_cuda(cuda::rmsnorm(residual_, w.input_norm, kdtype, num_tokens, hidden, eps, normed_, stream_), "rmsnorm");
      else
        check_cuda(cuda::add_rmsnorm(residual_, delta_, w.input_norm, kdtype, num_tokens, hidden, eps, normed_, stream_),
                   "add_rmsnorm");
      profile_.mark(Op::qkv_gemm, stream_);
      if (num_tokens <= small_gemm_max_rows_ && cuda::small_gemm_supported(kdtype, num_tokens, hidden, normed_, w.qkv)) {
        // RoPE in the bandwidth-bound product's epilogue: one launch fewer per layer.
        check_cuda(cuda::small_gemm_rope(normed_, w.qkv, kdtype, num_tokens, int(qkv_width), hidden,
                                         int(q_heads + kv_heads), int(head_dim), batch.positions, inv_freq_, qkv_,
                                         stream_),
                   "small_gemm_rope");
        profile_.mark(Op::kv_write, stream_);
        throw_if_error(kv_policy_->write(*kv_cache_, int32_t(l), keys, values, batch, exec));
      } else {
        gemm(normed_, w.qkv, num_tokens, int(qkv_width), hidden, qkv_);
        // RoPE fused with the KV write when the policy offers it (kv_cuda
        // does); else rotate here and store the rotated keys.
        profile_.mark(Op::kv_write, stream_);
        Status fused = rotary_write_ ? kv_policy_->write_rotary(*kv_cache_, int32_t(l), queries, keys, values, inv_freq_,
                                                                batch, exec)
                                     : Status(ErrorCode::unsupported, "");
        if (fused.code() == ErrorCode::unsupported) {
          rotary_write_ = false;
          profile_.mark(Op::rope, stream_);
          check_cuda(rope_in_place(kdtype, qkv_, qkv_width, num_tokens, int(q_heads + kv_heads), int(head_dim),
                                   batch.positions, inv_freq_, stream_),
                     "rope");
          profile_.mark(Op::kv_write, stream_);
          throw_if_error(kv_policy_->write(*kv_cache_, int32_t(l), keys, values, batch, exec));
        } else {
          throw_if_error(fused);
        }
      }
      profile_.mark(Op::attention, stream_);
      throw_if_error(kv_policy_->attend(*kv_cache_, int32_t(l), queries, batch, softmax_scale_, attended, exec));
      profile_.mark(Op::o_gemm, stream_);
      gemm(attended_, w.o_proj, num_tokens, hidden, int(q_size), delta_);
      profile_.mark(Op::norm, stream_);
      check_cuda(cuda::add_rmsnorm(residual_, delta_, w.post_norm, kdtype, num_tokens, hidden, eps, normed_, stream_),
                 "add_rmsnorm");
      profile_.mark(Op::gate_up_gemm, stream_);
      if (num_tokens <= small_gemm_max_rows_ && cuda::small_gemm_supported(kdtype, num_tokens, hidden, normed_, w.gate_up)) {
        // SiLU-and-multiply fused into the bandwidth-bound product: one launch fewer per layer.
        check_cuda(cuda::small_gemm_silu_mul(normed_, w.gate_up, kdtype, num_tokens, inter, hidden, activated_, stream_),
                   "small_gemm_silu_mul");
      } else {
        gemm(normed_, w.gate_up, num_tokens, 2 * inter, hidden, gate_up_);
        profile_.mark(Op::silu_mul, stream_);
        check_cuda(cuda::silu_and_mul(gate_up_, kdtype, num_tokens, inter, activated_, stream_), "silu_and_mul");
      }
      profile_.mark(Op::down_gemm, stream_);
      gemm(activated_, w.down_proj, num_tokens, hidden, inter, delta_);
    }
  };

  // Final norm, LM head and sampling on the sampled rows [chunk_start, +chunk_rows)
  // of this pass; the ids go to sampled_ at the step's row.
  auto* const results = reinterpret_cast<int32_t*>(pinned_results_[parity_].data());
  auto enqueue_head = [&](int32_t chunk_start, int32_t chunk_rows, int32_t chunk) {
    const int32_t* chunk_row_ids = device_ints(at_rows) + chunk_start;
    profile_.mark(Op::lm_head, stream_);
    check_cuda(gather_rows(residual_, hidden, chunk_row_ids, chunk_rows, last_residual_, stream_), "gather_rows");
    check_cuda(gather_rows(delta_, hidden, chunk_row_ids, chunk_rows, last_delta_, stream_), "gather_rows");
    check_cuda(cuda::add_rmsnorm(last_residual_, last_delta_, final_norm_, kdtype, chunk_rows, hidden, eps, last_normed_,
                                 stream_),
               "add_rmsnorm");
    gemm(last_normed_, lm_head_, chunk_rows, int(vocab), hidden, logits_, true);
    if (read_now) {
      profile_.mark(Op::read_back, stream_);
      // The raw logits (before suppression), as llama_cpu reports them.
      if (pinned_logits_.bytes() == 0)
        pinned_logits_.allocate(size_t(max_batch_) * size_t(vocab) * sizeof(float), "logits read-back");
      check_cuda(cudaMemcpyAsync(pinned_logits_.data(), logits_, size_t(chunk_rows) * size_t(vocab) * sizeof(float),
                                 cudaMemcpyDeviceToHost, stream_),
                 "copying logits");
    }
    profile_.mark(Op::sampling, stream_);
    const int32_t pair_begin = suppressed_begin[size_t(chunk)], pair_end = suppressed_begin[size_t(chunk) + 1];
    check_cuda(suppress_ids(logits_, vocab, device_ints(at_suppressed) + 2 * pair_begin, pair_end - pair_begin, stream_),
               "suppress_ids");
    cuda::SamplingBatch sampling;
    sampling.rows = chunk_rows;
    sampling.vocab_size = int(vocab);
    sampling.logits = logits_;
    sampling.logits_row_stride = vocab;
    sampling.params = reinterpret_cast<const cuda::SamplingRow*>(device_arena + at_params) + chunk_start;
    sampling.history_ids = history_ids ? device_ints(at_history) : nullptr;
    sampling.tokens_out = sampled_ + first_row + chunk_start;
    sampling.error_flag = error_flag_;
    check_cuda(cuda::sample_tokens(sampling, sampling_workspace_, sampling_workspace_bytes_, stream_), "sample_tokens");
  };
  // The pass's ids [row, row + rows) to the step's pinned results (outside
  // any graph: the pinned buffer depends on the step's parity).
  auto read_back_ids = [&](int32_t row, int32_t rows) {
    if (rows == 0) return;
    check_cuda(cudaMemcpyAsync(results + first_row + row, sampled_ + first_row + row, size_t(rows) * 4,
                               cudaMemcpyDeviceToHost, stream_),
               "reading sampled tokens");
  };
  // read_now: after the chunk's synchronize, a kernel's error, else its ids, logprobs and logits into output.
  auto report_rows = [&](int32_t chunk_start, int32_t chunk_rows) {
    if (const int32_t flag = results[step_rows_]; flag != 0) {
      cudaMemsetAsync(error_flag_, 0, 4, stream_);
      fail(ErrorCode::internal, fmt::format("a kernel reported {}", ref::status_name(ref::Status(flag))));
    }
    for (int32_t r = 0; r < chunk_rows; ++r) {
      const StepSequence& seq = input.sequences[row_sequence[size_t(chunk_start + r)]];
      const TokenId chosen = results[first_row + chunk_start + r];
      output.sampled.push_back(chosen);
      const float* logits = reinterpret_cast<const float*>(pinned_logits_.data()) + size_t(r) * size_t(vocab);
      if (any_logprobs) {
        TokenLogprob reported;
        reported.id = chosen;
        if (seq.sampling->top_logprobs >= 0) {
          const size_t num_top = std::min(size_t(seq.sampling->top_logprobs), size_t(vocab));
          std::vector<ref::TokenLogprob> top(num_top);
          ref::TokenLogprob chosen_logprob;
          size_t rank = 0;
          if (ref::token_logprobs(logits, size_t(vocab), chosen, num_top, &chosen_logprob, &rank, top.data()) !=
              ref::Status::ok)
            fail(ErrorCode::internal, fmt::format("logprobs of token {} failed", chosen));
          reported.logprob = chosen_logprob.logprob;
          for (const auto& entry : top) reported.top.emplace_back(entry.token_id, entry.logprob);
        }
        output.logprobs.push_back(std::move(reported));
      }
      if (any_logits) {
        output.logits.emplace_back();
        if (seq.return_logits) output.logits.back().assign(logits, logits + vocab);
      }
    }
  };
  // With the profile on, every pass waits for itself so its events can be read.
  auto end_profiled_pass = [&] {
    if (!profile_.enabled()) return;
    profile_.before_sync(stream_);
    check_cuda(cudaStreamSynchronize(stream_), "the step");
    profile_.after_sync(num_tokens);
  };

  if (graphed) {
    const auto key = std::make_pair(num_sequences, graph_context);
    auto found = graphs_.find(key);
    if (found == graphs_.end()) {
      if (auto made = capture_graph([&] {
            enqueue_layers();
            enqueue_head(0, num_rows, 0);
          }))
        found = graphs_.emplace(key, std::move(made)).first;
      else
        graphed = false;  // capture failed (logged): this pass runs eagerly on the same arrays
    }
    if (graphed) {
      profile_.mark(Op::graph, stream_);
      check_cuda(cudaGraphLaunch(found->second->get(), stream_), "cudaGraphLaunch");
      read_back_ids(0, num_rows);
      end_profiled_pass();
      return;
    }
  }

  enqueue_layers();
  // max_batch rows at a time (the logits and sampling workspace hold that many).
  for (int32_t chunk_start = 0, chunk = 0; chunk_start < num_rows; chunk_start += int32_t(max_batch_), ++chunk) {
    const int32_t chunk_rows = int32_t(std::min<int64_t>(max_batch_, num_rows - chunk_start));
    enqueue_head(chunk_start, chunk_rows, chunk);
    if (read_now) {
      // The logits buffer holds one chunk: read it before the next overwrites it.
      read_back_ids(chunk_start, chunk_rows);
      check_cuda(cudaMemcpyAsync(results + step_rows_, error_flag_, 4, cudaMemcpyDeviceToHost, stream_),
                 "reading the error flag");
      check_cuda(cudaStreamSynchronize(stream_), "the step");
      report_rows(chunk_start, chunk_rows);
    }
  }
  if (!read_now) read_back_ids(0, num_rows);
  end_profiled_pass();
}

std::unique_ptr<GraphExec> LlamaCudaModel::capture_graph(const std::function<void()>& enqueue) {
  // Nothing runs while capturing: the launches are recorded, and the graph is
  // replayed after the (already enqueued) upload of this pass's arrays.
  profile_.pause(true);
  std::string failure;
  cudaError_t began = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
  if (began != cudaSuccess) {
    failure = fmt::format("cudaStreamBeginCapture: {}", cudaGetErrorString(began));
  } else {
    try {
      enqueue();
    } catch (const std::exception& error) {
      failure = error.what();
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    if (failure.empty() && ended != cudaSuccess) failure = fmt::format("cudaStreamEndCapture: {}", cudaGetErrorString(ended));
    if (failure.empty()) {
      cudaGraphExec_t exec = nullptr;
      const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
      if (instantiated == cudaSuccess) {
        cudaGraphDestroy(graph);
        profile_.pause(false);
        return std::make_unique<GraphExec>(exec);
      }
      failure = fmt::format("cudaGraphInstantiate: {}", cudaGetErrorString(instantiated));
    }
    if (graph) cudaGraphDestroy(graph);
  }
  profile_.pause(false);
  cudaGetLastError();  // clear the (non-sticky) error a failed capture leaves behind
  log_.warn("CUDA graph capture failed ({}); decode passes run without graphs from now on", failure);
  use_graphs_ = false;
  graphs_.clear();
  return nullptr;
}

}  // namespace hostrun::llama_cuda
