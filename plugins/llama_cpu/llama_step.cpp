// step(): one engine step, as docs/architecture.md draws it. Every check on
// the caller's input happens before the first layer runs, so a bad step
// fails with a message and leaves the KV cache as it was.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "llama_model.hpp"
#include "parallel_gemm.hpp"
#include "ref/dtype.hpp"
#include "ref/embedding.hpp"
#include "ref/logprobs.hpp"
#include "ref/rmsnorm.hpp"
#include "ref/sampling.hpp"
#include "ref/silu_mul.hpp"

namespace hostrun::llama_cpu {

namespace {

[[noreturn]] void fail(ErrorCode code, std::string message) { throw Error(code, "llama_cpu: step: " + std::move(message)); }
void throw_if_error(const Status& status) {
  if (!status) throw Error(status);
}

// PagedKvBatch's arrays, owned for the length of a step.
struct PagedLayout {
  std::vector<int32_t> query_start;   // [sequences + 1]
  std::vector<int32_t> context_lens;  // [sequences]
  std::vector<int32_t> block_tables;  // [sequences * max_blocks], padded with block 0 (never read)
  std::vector<int32_t> slot_mapping;  // [tokens]
  int32_t max_blocks = 0;
  int32_t max_query_len = 0;
  int32_t max_context_len = 0;

  PagedKvBatch batch(std::span<const int32_t> positions) const {
    PagedKvBatch out;
    out.num_sequences = int32_t(context_lens.size());
    out.num_tokens = int32_t(slot_mapping.size());
    out.query_start = query_start.data();
    out.context_lens = context_lens.data();
    out.block_tables = block_tables.data();
    out.max_blocks_per_sequence = max_blocks;
    out.slot_mapping = slot_mapping.data();
    out.positions = positions.data();
    out.max_query_len = max_query_len;
    out.max_context_len = max_context_len;
    out.device = Device{DeviceKind::cpu, 0};
    return out;
  }
};

}  // namespace

void LlamaCpuModel::run_step(const StepInput& input, StepOutput& output) {
  if (!loaded_) fail(ErrorCode::invalid_argument, "the model is not loaded");
  if (!kv_cache_) fail(ErrorCode::invalid_argument, "no KV cache: call allocate_kv_cache first");
  output.sampled.clear();
  output.logprobs.clear();
  output.logits.clear();

  const size_t num_tokens = input.token_ids.size();
  const size_t num_sequences = input.sequences.size();
  if (input.positions.size() != num_tokens)
    fail(ErrorCode::invalid_argument,
         fmt::format("{} token ids but {} positions", num_tokens, input.positions.size()));
  if (num_tokens > size_t(INT32_MAX)) fail(ErrorCode::invalid_argument, "too many tokens in one step");
  if (num_sequences == 0) {
    if (num_tokens != 0) fail(ErrorCode::invalid_argument, fmt::format("{} tokens but no sequences", num_tokens));
    return;
  }

  // The paged layout, checked sequence by sequence.
  const int64_t vocab = config_.vocab_size;
  const int32_t num_blocks = kv_cache_->num_blocks();
  PagedLayout layout;
  layout.query_start.push_back(0);
  for (size_t s = 0; s < num_sequences; ++s) {
    const StepSequence& seq = input.sequences[s];
    if (seq.query_start != layout.query_start.back())
      fail(ErrorCode::invalid_argument,
           fmt::format("sequence {}: query_start {}, expected {} (sequences own consecutive runs of token_ids, in order)",
                       s, seq.query_start, layout.query_start.back()));
    if (seq.query_len <= 0 || int64_t(seq.query_start) + seq.query_len > int64_t(num_tokens))
      fail(ErrorCode::invalid_argument,
           fmt::format("sequence {}: query_len {} from token {} does not fit the step's {} tokens", s, seq.query_len,
                       seq.query_start, num_tokens));
    if (seq.cached_len < 0 || int64_t(seq.cached_len) + seq.query_len > INT32_MAX)
      fail(ErrorCode::invalid_argument, fmt::format("sequence {}: cached_len {} is out of range", s, seq.cached_len));
    const int32_t context = seq.cached_len + seq.query_len;
    for (int32_t j = 0; j < seq.query_len; ++j)
      if (input.positions[size_t(seq.query_start + j)] != seq.cached_len + j)
        fail(ErrorCode::invalid_argument,
             fmt::format("sequence {}: token {} is at position {}, expected cached_len + {} = {}", s,
                         seq.query_start + j, input.positions[size_t(seq.query_start + j)], j, seq.cached_len + j));
    const int32_t blocks_needed = int32_t((int64_t(context) + block_tokens_ - 1) / block_tokens_);
    if (int64_t(seq.block_table.size()) < blocks_needed)
      fail(ErrorCode::invalid_argument,
           fmt::format("sequence {}: {} tokens of context need {} blocks of {}, but its block table has {}", s, context,
                       blocks_needed, block_tokens_, seq.block_table.size()));
    for (int32_t b = 0; b < blocks_needed; ++b)
      if (seq.block_table[size_t(b)] < 0 || seq.block_table[size_t(b)] >= num_blocks)
        fail(ErrorCode::invalid_argument,
             fmt::format("sequence {}: block table entry {} is {}, outside the cache's {} blocks", s, b,
                         seq.block_table[size_t(b)], num_blocks));
    if (seq.sample && seq.sampling == nullptr)
      fail(ErrorCode::invalid_argument, fmt::format("sequence {} samples but has no sampling parameters", s));
    if (seq.generated.size() > seq.history.size())
      fail(ErrorCode::invalid_argument,
           fmt::format("sequence {}: {} generated ids but only {} in its history", s, seq.generated.size(),
                       seq.history.size()));
    if (seq.sample)
      for (size_t i = 0; i < seq.history.size(); ++i)
        if (seq.history[i] < 0 || seq.history[i] >= vocab)
          fail(ErrorCode::invalid_argument,
               fmt::format("sequence {}: history id {} (index {}) is outside the vocabulary of {}", s, seq.history[i],
                           i, vocab));
    for (const EmbeddingSpan& span : seq.embeddings) {
      const TensorView& v = span.values;
      const int64_t rows = v.rank > 0 ? v.shape[0] : 0;
      if (v.rank != 2 || v.shape[1] != config_.hidden_size || v.device.kind != DeviceKind::cpu || !v.is_contiguous() ||
          (v.dtype != DType::f32 && v.dtype != DType::bf16 && v.dtype != DType::f16))
        fail(ErrorCode::invalid_argument,
             fmt::format("sequence {}: an embedding span must be a contiguous host [tokens, {}] f32/bf16/f16 tensor",
                         s, config_.hidden_size));
      if (span.first_token < 0 || int64_t(span.first_token) + rows > seq.query_len)
        fail(ErrorCode::invalid_argument,
             fmt::format("sequence {}: embedding span of {} tokens at {} is outside its {} tokens of this step", s,
                         rows, span.first_token, seq.query_len));
    }
    layout.query_start.push_back(seq.query_start + seq.query_len);
    layout.context_lens.push_back(context);
    layout.max_blocks = std::max(layout.max_blocks, blocks_needed);
    layout.max_query_len = std::max(layout.max_query_len, seq.query_len);
    layout.max_context_len = std::max(layout.max_context_len, context);
  }
  if (size_t(layout.query_start.back()) != num_tokens)
    fail(ErrorCode::invalid_argument,
         fmt::format("the sequences cover {} tokens but the step has {}", layout.query_start.back(), num_tokens));
  layout.block_tables.assign(num_sequences * size_t(layout.max_blocks), 0);
  layout.slot_mapping.resize(num_tokens);
  for (size_t s = 0; s < num_sequences; ++s) {
    const StepSequence& seq = input.sequences[s];
    const int32_t blocks_needed = (layout.context_lens[s] + block_tokens_ - 1) / block_tokens_;
    std::copy_n(seq.block_table.begin(), blocks_needed, layout.block_tables.begin() + std::ptrdiff_t(s * size_t(layout.max_blocks)));
    for (int32_t j = 0; j < seq.query_len; ++j) {
      const int32_t position = seq.cached_len + j;
      layout.slot_mapping[size_t(seq.query_start + j)] =
          seq.block_table[size_t(position / block_tokens_)] * block_tokens_ + position % block_tokens_;
    }
  }
  const PagedKvBatch batch = layout.batch(input.positions);

  // Embeddings (every id checked before anything is written), then image spans.
  const size_t hidden = size_t(config_.hidden_size);
  std::vector<float> residual(num_tokens * hidden);
  size_t first_bad = 0;
  if (ref::embedding_lookup(input.token_ids.data(), num_tokens, weights_.embed_tokens.data(), ref::DType::f32,
                            size_t(vocab), hidden, residual.data(), &first_bad) != ref::Status::ok) {
    size_t s = 0;
    while (s + 1 < num_sequences && size_t(input.sequences[s + 1].query_start) <= first_bad) ++s;
    fail(ErrorCode::invalid_argument,
         fmt::format("token id {} (token {} of the step, sequence {}) is outside the vocabulary of {}",
                     input.token_ids[first_bad], first_bad, s, vocab));
  }
  for (const StepSequence& seq : input.sequences)
    for (const EmbeddingSpan& span : seq.embeddings) {
      const ref::DType stored = span.values.dtype == DType::f32    ? ref::DType::f32
                                : span.values.dtype == DType::bf16 ? ref::DType::bf16
                                                                   : ref::DType::f16;
      ref::convert_to_f32(span.values.data, stored, size_t(span.values.numel()),
                          residual.data() + size_t(seq.query_start + span.first_token) * hidden);
    }

  // The layers. `residual` carries the stream; `delta` is the last sublayer's
  // output, added (and normalised) at the start of the next sublayer.
  const size_t q_size = size_t(config_.q_size());
  const size_t kv_size = size_t(config_.kv_size());
  const size_t qkv_width = q_size + 2 * kv_size;
  const size_t intermediate = size_t(config_.intermediate_size);
  const size_t q_heads = size_t(config_.num_attention_heads);
  const size_t kv_heads = size_t(config_.num_key_value_heads);
  const size_t head_dim = size_t(config_.head_dim);
  std::vector<float> normed(num_tokens * hidden);
  std::vector<float> delta(num_tokens * hidden);
  std::vector<float> qkv(num_tokens * qkv_width);
  std::vector<float> queries(num_tokens * q_size), keys(num_tokens * kv_size), values(num_tokens * kv_size);
  std::vector<float> attended(num_tokens * q_size);
  std::vector<float> gate_up(num_tokens * 2 * intermediate);
  std::vector<float> activated(num_tokens * intermediate);
  const int64_t t = int64_t(num_tokens);
  const TensorView queries_view = TensorView::contiguous(queries.data(), DType::f32, {t, int64_t(q_heads), int64_t(head_dim)});
  const TensorView keys_view = TensorView::contiguous(keys.data(), DType::f32, {t, int64_t(kv_heads), int64_t(head_dim)});
  const TensorView values_view = TensorView::contiguous(values.data(), DType::f32, {t, int64_t(kv_heads), int64_t(head_dim)});
  const TensorView attended_view = TensorView::contiguous(attended.data(), DType::f32, {t, int64_t(q_heads), int64_t(head_dim)});
  const ExecContext exec{Device{DeviceKind::cpu, 0}, nullptr, {}};
  const float eps = float(config_.rms_norm_eps);

  for (size_t l = 0; l < weights_.layers.size(); ++l) {
    const LayerWeights& layer = weights_.layers[l];
    if (l == 0) {
      ref::rmsnorm(residual.data(), layer.input_norm.data(), ref::DType::f32, num_tokens, hidden, eps, normed.data());
    } else {
      ref::add_rmsnorm(residual.data(), delta.data(), layer.input_norm.data(), ref::DType::f32, num_tokens, hidden, eps,
                       normed.data());
    }
    parallel_gemm(normed.data(), layer.qkv.data(), num_tokens, qkv_width, hidden, qkv.data(), threads_);
    for (size_t i = 0; i < num_tokens; ++i) {
      const float* row = qkv.data() + i * qkv_width;
      std::copy_n(row, q_size, queries.data() + i * q_size);
      std::copy_n(row + q_size, kv_size, keys.data() + i * kv_size);
      std::copy_n(row + q_size + kv_size, kv_size, values.data() + i * kv_size);
    }
    ref::apply_rope(rope_, input.positions.data(), num_tokens, queries.data(), q_heads, keys.data(), kv_heads);
    throw_if_error(kv_policy_->write(*kv_cache_, int32_t(l), keys_view, values_view, batch, exec));
    throw_if_error(kv_policy_->attend(*kv_cache_, int32_t(l), queries_view, batch, softmax_scale_, attended_view, exec));
    parallel_gemm(attended.data(), layer.o_proj.data(), num_tokens, hidden, q_size, delta.data(), threads_);
    ref::add_rmsnorm(residual.data(), delta.data(), layer.post_norm.data(), ref::DType::f32, num_tokens, hidden, eps,
                     normed.data());
    parallel_gemm(normed.data(), layer.gate_up.data(), num_tokens, 2 * intermediate, hidden, gate_up.data(), threads_);
    ref::silu_and_mul(gate_up.data(), num_tokens, intermediate, activated.data());
    parallel_gemm(activated.data(), layer.down_proj.data(), num_tokens, hidden, intermediate, delta.data(), threads_);
  }

  // Final norm and LM head only on the last token of each sequence that samples.
  std::vector<size_t> sampling_sequences;
  for (size_t s = 0; s < num_sequences; ++s)
    if (input.sequences[s].sample) sampling_sequences.push_back(s);
  if (sampling_sequences.empty()) return;
  const size_t rows = sampling_sequences.size();
  std::vector<float> last_residual(rows * hidden), last_delta(rows * hidden), last_normed(rows * hidden);
  for (size_t r = 0; r < rows; ++r) {
    const StepSequence& seq = input.sequences[sampling_sequences[r]];
    const size_t token = size_t(seq.query_start + seq.query_len - 1);
    std::copy_n(residual.data() + token * hidden, hidden, last_residual.data() + r * hidden);
    std::copy_n(delta.data() + token * hidden, hidden, last_delta.data() + r * hidden);
  }
  ref::add_rmsnorm(last_residual.data(), last_delta.data(), weights_.final_norm.data(), ref::DType::f32, rows, hidden,
                   eps, last_normed.data());
  std::vector<float> logits(rows * size_t(vocab));
  parallel_gemm(last_normed.data(), weights_.lm_head_rows(), rows, size_t(vocab), hidden, logits.data(), threads_);

  // The engine reads logprobs (and logits) at the index of the sampled token,
  // so when any sequence asks, every sampling sequence gets an entry.
  bool any_logprobs = false;
  bool any_logits = false;
  for (size_t s : sampling_sequences) {
    any_logprobs |= input.sequences[s].sampling->top_logprobs >= 0;
    any_logits |= input.sequences[s].return_logits;
  }
  for (size_t r = 0; r < rows; ++r)
    sample_sequence(input.sequences[sampling_sequences[r]], sampling_sequences[r], logits.data() + r * size_t(vocab),
                    output, any_logprobs, any_logits);
}

void LlamaCpuModel::sample_sequence(const StepSequence& seq, size_t sequence_index, const float* logits,
                                    StepOutput& output, bool any_logprobs, bool any_logits) const {
  const size_t vocab = size_t(config_.vocab_size);
  const SamplingParams& sp = *seq.sampling;
  ref::SamplingParams params;
  params.temperature = sp.temperature;
  params.top_k = sp.top_k;
  params.top_p = sp.top_p;
  params.min_p = sp.min_p;
  params.repetition_penalty = sp.repetition_penalty;
  params.presence_penalty = sp.presence_penalty;
  params.frequency_penalty = sp.frequency_penalty;
  params.seed = seq.rng_seed;
  ref::TokenHistory history;
  history.prompt_ids = seq.history.data();
  history.num_prompt_ids = seq.history.size() - seq.generated.size();
  history.generated_ids = seq.generated.data();
  history.num_generated_ids = seq.generated.size();

  // Suppressed ids (stop ids before min_tokens) can never win. Ids outside
  // the vocabulary (a tokenizer's eos the model does not have) could never be
  // sampled anyway.
  std::vector<float> constrained(logits, logits + vocab);
  for (TokenId id : seq.suppressed)
    if (id >= 0 && size_t(id) < vocab) constrained[size_t(id)] = -std::numeric_limits<float>::infinity();
  int32_t chosen = 0;
  if (ref::sample_token(constrained.data(), vocab, params, history, seq.rng_offset, &chosen) != ref::Status::ok)
    fail(ErrorCode::invalid_argument,
         fmt::format("sequence {}: its history holds a token id outside the vocabulary of {}", sequence_index, vocab));
  output.sampled.push_back(chosen);

  if (any_logprobs) {
    // Reported from the raw logits (kernels/ref/logprobs.hpp says why).
    TokenLogprob reported;
    reported.id = chosen;
    if (sp.top_logprobs >= 0) {
      const size_t num_top = std::min(size_t(sp.top_logprobs), vocab);
      std::vector<ref::TokenLogprob> top(num_top);
      ref::TokenLogprob chosen_logprob;
      size_t rank = 0;
      if (ref::token_logprobs(logits, vocab, chosen, num_top, &chosen_logprob, &rank, top.data()) != ref::Status::ok)
        fail(ErrorCode::internal, fmt::format("sequence {}: logprobs of token {} failed", sequence_index, chosen));
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

}  // namespace hostrun::llama_cpu
