// step(): one engine step, as docs/architecture.md draws it. The whole input
// is checked (hostrun::check_step_input) before the first layer runs, so a
// bad step fails with a message and leaves the KV cache as it was.
// observe_linear_inputs(): the same layers over a private cache.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "llama_common/calibration_step.hpp"
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

[[noreturn]] void fail(ErrorCode code, std::string message) { throw Error(code, "llama_cpu: " + std::move(message)); }
void throw_if_error(const Status& status) {
  if (!status) throw Error(status);
}

// Pages of the private cache observe_linear_inputs runs on; attention sums
// positions in the same order whatever the page size, so any size gives the
// step's numbers.
constexpr int32_t kCalibrationBlockTokens = 16;

}  // namespace

void LlamaCpuModel::run_step(const StepInput& input, StepOutput& output) {
  if (!loaded_) fail(ErrorCode::invalid_argument, "step: the model is not loaded");
  if (!kv_cache_) fail(ErrorCode::invalid_argument, "step: no KV cache: call allocate_kv_cache first");
  output.sampled.clear();
  output.logprobs.clear();
  output.logits.clear();

  StepLimits limits;
  limits.vocab_size = config_.vocab_size;
  limits.num_blocks = kv_cache_->num_blocks();
  limits.block_tokens = block_tokens_;
  limits.hidden_size = config_.hidden_size;
  limits.embedding_device = Device{DeviceKind::cpu, 0};
  limits.embedding_dtypes = dtype_bit(DType::f32) | dtype_bit(DType::bf16) | dtype_bit(DType::f16);
  if (Status s = check_step_input(input, limits); !s) fail(s.code(), "step: " + s.message());
  if (input.sequences.empty()) return;

  PagedLayout layout;
  const std::vector<StepPiece> pieces = whole_sequences(input);
  layout.build(input, pieces, block_tokens_);
  std::vector<float> residual = embed(input, layout);
  std::vector<float> delta(residual.size());
  run_layers(*kv_cache_, layout, residual, delta, nullptr);

  // Final norm and LM head only on the last token of each sequence that samples.
  const size_t hidden = size_t(config_.hidden_size);
  const size_t vocab = size_t(config_.vocab_size);
  std::vector<size_t> sampling_sequences;
  for (size_t s = 0; s < input.sequences.size(); ++s)
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
                   float(config_.rms_norm_eps), last_normed.data());
  std::vector<float> logits(rows * vocab);
  parallel_gemm(last_normed.data(), weights_.lm_head_rows(), rows, vocab, hidden, logits.data(), threads_);

  // The engine reads logprobs (and logits) at the index of the sampled token,
  // so when any sequence asks, every sampling sequence gets an entry.
  bool any_logprobs = false;
  bool any_logits = false;
  for (size_t s : sampling_sequences) {
    any_logprobs |= input.sequences[s].sampling->top_logprobs >= 0;
    any_logits |= input.sequences[s].return_logits;
  }
  for (size_t r = 0; r < rows; ++r)
    sample_sequence(input.sequences[sampling_sequences[r]], sampling_sequences[r], logits.data() + r * vocab, output,
                    any_logprobs, any_logits);
}

void LlamaCpuModel::observe(std::span<const TokenId> tokens, CalibrationObserver& observer) {
  if (!loaded_) fail(ErrorCode::invalid_argument, "observe_linear_inputs: the model is not loaded");
  auto step = llama::CalibrationStep::make(tokens, kCalibrationBlockTokens, config_);
  if (!step) fail(step.status().code(), "observe_linear_inputs: " + step.status().message());
  const StepInput& input = step.value()->input();
  const int32_t num_tokens = step.value()->num_tokens(), num_blocks = step.value()->num_blocks();
  const KvShape shape{int32_t(config_.num_hidden_layers), int32_t(config_.num_key_value_heads),
                      int32_t(config_.head_dim), kCalibrationBlockTokens, DType::f32};
  auto cache = kv_policy_->allocate(shape, num_blocks, Device{DeviceKind::cpu, 0});
  if (!cache)
    fail(cache.status().code(), fmt::format("observe_linear_inputs: a KV cache for {} tokens: {}", num_tokens,
                                            cache.status().message()));

  PagedLayout layout;
  const std::vector<StepPiece> pieces = whole_sequences(input);
  layout.build(input, pieces, kCalibrationBlockTokens);
  std::vector<float> residual = embed(input, layout);
  std::vector<float> delta(residual.size());
  run_layers(*cache.value(), layout, residual, delta, &observer);
}

std::vector<float> LlamaCpuModel::embed(const StepInput& input, const PagedLayout& layout) const {
  const size_t num_tokens = size_t(layout.num_tokens());
  const size_t hidden = size_t(config_.hidden_size);
  std::vector<float> embedded(num_tokens * hidden);
  if (ref::embedding_lookup(layout.token_ids.data(), num_tokens, weights_.embed_tokens.data(), ref::DType::f32,
                            size_t(config_.vocab_size), hidden, embedded.data(), nullptr) != ref::Status::ok)
    fail(ErrorCode::internal, "embedding lookup refused ids that check_step_input accepted");
  for (const StepSequence& seq : input.sequences)
    for (const EmbeddingSpan& span : seq.embeddings) {
      const ref::DType stored = span.values.dtype == DType::f32    ? ref::DType::f32
                                : span.values.dtype == DType::bf16 ? ref::DType::bf16
                                                                   : ref::DType::f16;
      ref::convert_to_f32(span.values.data, stored, size_t(span.values.numel()),
                          embedded.data() + size_t(seq.query_start + span.first_token) * hidden);
    }
  return embedded;
}

void LlamaCpuModel::linear(LinearLayer& layer, float* x, size_t in_features, float* y, size_t out_features,
                           size_t rows) {
  ExecContext exec{Device{DeviceKind::cpu, 0}, nullptr, {}};
  if (linear_workspace_.bytes > 0)
    exec.workspace = TensorView::contiguous(linear_workspace_.memory.get(), DType::u8,
                                            {int64_t(linear_workspace_.bytes)}, Device{DeviceKind::cpu, 0});
  for (size_t first = 0; first < rows; first += size_t(kLinearRows)) {
    const int64_t count = int64_t(std::min(rows - first, size_t(kLinearRows)));
    LinearCall call;
    call.x = TensorView::contiguous(x + first * in_features, DType::f32, {count, int64_t(in_features)});
    call.y = TensorView::contiguous(y + first * out_features, DType::f32, {count, int64_t(out_features)});
    throw_if_error(layer.forward(call, exec));
  }
}

void LlamaCpuModel::run_layers(KvCache& cache, const PagedLayout& layout, std::vector<float>& residual,
                               std::vector<float>& delta, CalibrationObserver* observer) {
  const size_t num_tokens = size_t(layout.num_tokens());
  const PagedKvBatch batch = layout.host_batch();
  const size_t hidden = size_t(config_.hidden_size);
  const size_t q_size = size_t(config_.q_size());
  const size_t kv_size = size_t(config_.kv_size());
  const size_t qkv_width = q_size + 2 * kv_size;
  const size_t intermediate = size_t(config_.intermediate_size);
  const int64_t q_heads = config_.num_attention_heads;
  const int64_t kv_heads = config_.num_key_value_heads;
  const int64_t head_dim = config_.head_dim;
  std::vector<float> normed(num_tokens * hidden);
  std::vector<float> qkv(num_tokens * qkv_width);
  std::vector<float> attended(num_tokens * q_size);
  std::vector<float> gate_up(num_tokens * 2 * intermediate);
  std::vector<float> activated(num_tokens * intermediate);
  // q, k and v are views into the fused QKV rows; the policy takes row strides.
  const int64_t t = int64_t(num_tokens);
  auto heads_view = [&](float* first, int64_t heads, int64_t row_stride) {
    TensorView view = TensorView::contiguous(first, DType::f32, {t, heads, head_dim});
    view.strides[0] = row_stride;
    return view;
  };
  const TensorView queries_view = heads_view(qkv.data(), q_heads, int64_t(qkv_width));
  const TensorView keys_view = heads_view(qkv.data() + q_size, kv_heads, int64_t(qkv_width));
  const TensorView values_view = heads_view(qkv.data() + q_size + kv_size, kv_heads, int64_t(qkv_width));
  const TensorView attended_view = TensorView::contiguous(attended.data(), DType::f32, {t, q_heads, head_dim});
  const ExecContext exec{Device{DeviceKind::cpu, 0}, nullptr, {}};
  const float eps = float(config_.rms_norm_eps);
  auto report = [&](size_t layer, const char* linear_name, std::vector<float>& x, size_t in_features) {
    observer->on_linear_input(config_.names.layer(int64_t(layer)) + linear_name,
                              TensorView::contiguous(x.data(), DType::f32, {t, int64_t(in_features)}));
  };

  for (size_t l = 0; l < weights_.layers.size(); ++l) {
    const LayerWeights& layer = weights_.layers[l];
    if (l == 0) {
      ref::rmsnorm(residual.data(), layer.input_norm.data(), ref::DType::f32, num_tokens, hidden, eps, normed.data());
    } else {
      ref::add_rmsnorm(residual.data(), delta.data(), layer.input_norm.data(), ref::DType::f32, num_tokens, hidden, eps,
                       normed.data());
    }
    if (observer)
      for (const char* name : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}) report(l, name, normed, hidden);
    linear(*layer.qkv, normed.data(), hidden, qkv.data(), qkv_width, num_tokens);
    // RoPE in place on the q and k heads of each fused row (ref::apply_rope
    // takes packed heads, and in a fused row q's heads are followed by k's).
    for (size_t i = 0; i < num_tokens; ++i)
      ref::apply_rope(rope_, layout.positions.data() + i, 1, qkv.data() + i * qkv_width, size_t(q_heads + kv_heads),
                      nullptr, 0);
    throw_if_error(kv_policy_->write(cache, int32_t(l), keys_view, values_view, batch, exec));
    throw_if_error(kv_policy_->attend(cache, int32_t(l), queries_view, batch, softmax_scale_, attended_view, exec));
    if (observer) report(l, "self_attn.o_proj", attended, q_size);
    linear(*layer.o_proj, attended.data(), q_size, delta.data(), hidden, num_tokens);
    ref::add_rmsnorm(residual.data(), delta.data(), layer.post_norm.data(), ref::DType::f32, num_tokens, hidden, eps,
                     normed.data());
    if (observer)
      for (const char* name : {"mlp.gate_proj", "mlp.up_proj"}) report(l, name, normed, hidden);
    linear(*layer.gate_up, normed.data(), hidden, gate_up.data(), 2 * intermediate, num_tokens);
    ref::silu_and_mul(gate_up.data(), num_tokens, intermediate, activated.data());
    if (observer) report(l, "mlp.down_proj", activated, intermediate);
    linear(*layer.down_proj, activated.data(), intermediate, delta.data(), hidden, num_tokens);
  }
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
         fmt::format("step: sequence {}: its history holds a token id outside the vocabulary of {}", sequence_index, vocab));
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
        fail(ErrorCode::internal, fmt::format("step: sequence {}: logprobs of token {} failed", sequence_index, chosen));
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
