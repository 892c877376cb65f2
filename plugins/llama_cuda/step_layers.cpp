// The layers of a pass, enqueued on the model's stream (also under graph
// capture): the token embeddings (with image embeddings copied over theirs),
// then per layer the attention block (norm, QKV product, RoPE + KV write,
// attention, o_proj) and the MLP block (norm, gate/up product,
// SiLU-and-multiply, down product). Residual adds ride on the norms
// (add_rmsnorm), so each block leaves its output in `delta`.
//
// Epilogues: where a linear layer fuses RoPE or SiLU-and-multiply for the
// pass's row count (the dense layers do at small_gemm's few rows), it runs
// them; otherwise the model runs its own kernel after the product.
#include "cuda/embedding.hpp"
#include "cuda/rmsnorm.hpp"
#include "cuda/silu_mul.hpp"
#include "errors.hpp"
#include "llama_cuda_model.hpp"
#include "llama_kernels.hpp"

namespace hostrun::llama_cuda {

namespace {

cuda::DType kernel_dtype(DType dtype) { return dtype == DType::f16 ? cuda::DType::f16 : cuda::DType::bf16; }

}  // namespace

// The workspace as the views a pass's layers pass around (the same for every layer).
struct LlamaCudaModel::LayerViews {
  TensorView normed;          // [tokens, hidden]
  TensorView qkv;             // [tokens, q_size + 2 kv_size]
  TensorView queries;         // [tokens, q_heads, head_dim] in qkv's rows
  TensorView keys;            // [tokens, kv_heads, head_dim] in qkv's rows
  TensorView values;          // [tokens, kv_heads, head_dim] in qkv's rows
  TensorView attended_heads;  // [tokens, q_heads, head_dim]
  TensorView attended;        // the same, [tokens, q_size]
  TensorView delta;           // [tokens, hidden]
  TensorView gate_up;         // [tokens, 2 intermediate]
  TensorView activated;       // [tokens, intermediate]
  LinearRope rope;            // the QKV product's RoPE: q and k heads
  ExecContext kv;             // with the attention workspace
  ExecContext linear;         // with the linear layers' workspace

  LayerViews(const LlamaCudaModel& model, const Pass& pass) {
    const llama::LlamaConfig& c = model.config_;
    const StepWorkspace& w = model.workspace_;
    const int64_t tokens = pass.num_tokens, head_dim = c.head_dim;
    const int64_t qkv_width = c.q_size() + 2 * c.kv_size();
    const size_t element = dtype_bits(model.dtype_) / 8;
    auto rows = [&](void* data, int64_t columns) {
      return TensorView::contiguous(data, model.dtype_, {tokens, columns}, model.device_);
    };
    auto heads = [&](void* data, int64_t count, int64_t row_stride) {
      TensorView v = TensorView::contiguous(data, model.dtype_, {tokens, count, head_dim}, model.device_);
      v.strides[0] = row_stride;
      return v;
    };
    normed = rows(w.normed, c.hidden_size);
    qkv = rows(w.qkv, qkv_width);
    queries = heads(w.qkv, c.num_attention_heads, qkv_width);
    keys = heads(w.qkv + size_t(c.q_size()) * element, c.num_key_value_heads, qkv_width);
    values = heads(w.qkv + size_t(c.q_size() + c.kv_size()) * element, c.num_key_value_heads, qkv_width);
    attended_heads = heads(w.attended, c.num_attention_heads, c.q_size());
    attended = rows(w.attended, c.q_size());
    delta = rows(w.delta, c.hidden_size);
    gate_up = rows(w.gate_up, 2 * c.intermediate_size);
    activated = rows(w.activated, c.intermediate_size);
    rope.positions = pass.batch.positions;
    rope.inv_freq = w.inv_freq;
    rope.rotated_heads = int32_t(c.num_attention_heads + c.num_key_value_heads);
    rope.head_dim = int32_t(head_dim);
    kv.device = linear.device = model.device_;
    kv.stream = linear.stream = model.stream_;
    kv.workspace = TensorView::contiguous(model.attention_workspace_.data(), DType::u8,
                                          {int64_t(model.attention_workspace_.bytes())}, model.device_);
    linear.workspace =
        TensorView::contiguous(w.linear, DType::u8, {int64_t(w.sizes.linear_bytes)}, model.device_);
  }
};

void LlamaCudaModel::enqueue_layers(const StepInput& input, const Pass& pass) {
  enqueue_embeddings(input, pass);
  const LayerViews views(*this, pass);
  for (int32_t l = 0; l < int32_t(layers_.size()); ++l) {
    enqueue_attention(l, pass, views);
    enqueue_mlp(l, pass, views);
  }
}

void LlamaCudaModel::enqueue_embeddings(const StepInput& input, const Pass& pass) {
  profile_.mark(Op::embedding, stream_);
  // Graphs always take it (a step with none marks every slot -1).
  if (pass.graphed || pass.has_previous)
    check_cuda(take_previous_samples(pass.token_ids, pass.previous_index, previous_sampled_, pass.token_slots, stream_),
               "take_previous_samples");
  check_cuda(cuda::embedding_lookup(pass.token_ids, pass.num_tokens, embed_tokens_, kernel_dtype(dtype_),
                                    config_.vocab_size, int(config_.hidden_size), workspace_.residual,
                                    workspace_.error_flag, stream_),
             "embedding_lookup");
  if (!pass.has_embeddings) return;
  const size_t row_bytes = size_t(config_.hidden_size) * (dtype_bits(dtype_) / 8);
  int32_t token = 0;  // the pass's first token of the piece
  for (const StepPiece& p : pass.pieces) {
    for (const EmbeddingSpan& span : input.sequences[size_t(p.sequence)].embeddings) {
      const int32_t span_rows = int32_t(span.values.shape[0]);
      const int32_t lo = std::max(span.first_token, p.first);
      const int32_t hi = std::min(span.first_token + span_rows, p.first + p.count);
      if (lo >= hi) continue;
      check_cuda(cudaMemcpyAsync(workspace_.residual + size_t(token + lo - p.first) * row_bytes,
                                 static_cast<const std::byte*>(span.values.data) + size_t(lo - span.first_token) * row_bytes,
                                 size_t(hi - lo) * row_bytes, cudaMemcpyDeviceToDevice, stream_),
                 "copying image embeddings");
    }
    token += p.count;
  }
}

void LlamaCudaModel::enqueue_attention(int32_t layer, const Pass& pass, const LayerViews& views) {
  const LayerWeights& w = layers_[size_t(layer)];
  const cuda::DType kdtype = kernel_dtype(dtype_);
  const int tokens = pass.num_tokens, hidden = int(config_.hidden_size);
  const float eps = float(config_.rms_norm_eps);
  profile_.mark(Op::norm, stream_);
  if (layer == 0)
    check_cuda(cuda::rmsnorm(workspace_.residual, w.input_norm, kdtype, tokens, hidden, eps, workspace_.normed, stream_),
               "rmsnorm");
  else
    check_cuda(cuda::add_rmsnorm(workspace_.residual, workspace_.delta, w.input_norm, kdtype, tokens, hidden, eps,
                                 workspace_.normed, stream_),
               "add_rmsnorm");
  if (observer_) report_input(layer, {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}, workspace_.normed,
                              tokens, hidden);

  profile_.mark(Op::qkv_gemm, stream_);
  LinearCall qkv;
  qkv.x = views.normed;
  qkv.y = views.qkv;
  // RoPE in the product's epilogue saves a launch and a pass over q and k;
  // the keys then arrive rotated and the plain write stores them.
  const bool rope_fused = (w.qkv->fused_epilogues(tokens) & kEpilogueRope) != 0;
  if (rope_fused) {
    qkv.epilogue = kEpilogueRope;
    qkv.rope = views.rope;
  }
  throw_if_error(w.qkv->forward(qkv, views.linear));
  profile_.mark(Op::kv_write, stream_);
  if (rope_fused) {
    throw_if_error(kv_policy_->write(*kv_cache_, layer, views.keys, views.values, pass.batch, views.kv));
  } else if (kv_format_.rotary_write) {
    throw_if_error(kv_policy_->write_rotary(*kv_cache_, layer, views.queries, views.keys, views.values,
                                            workspace_.inv_freq, pass.batch, views.kv));
  } else {
    profile_.mark(Op::rope, stream_);
    check_cuda(rope_in_place(kdtype, workspace_.qkv, views.qkv.strides[0], tokens, views.rope.rotated_heads,
                             views.rope.head_dim, pass.batch.positions, workspace_.inv_freq, stream_),
               "rope");
    profile_.mark(Op::kv_write, stream_);
    throw_if_error(kv_policy_->write(*kv_cache_, layer, views.keys, views.values, pass.batch, views.kv));
  }

  profile_.mark(Op::attention, stream_);
  throw_if_error(
      kv_policy_->attend(*kv_cache_, layer, views.queries, pass.batch, softmax_scale_, views.attended_heads, views.kv));
  if (observer_) report_input(layer, {"self_attn.o_proj"}, workspace_.attended, tokens, config_.q_size());
  profile_.mark(Op::o_gemm, stream_);
  LinearCall o_proj;
  o_proj.x = views.attended;
  o_proj.y = views.delta;
  throw_if_error(w.o_proj->forward(o_proj, views.linear));
}

void LlamaCudaModel::enqueue_mlp(int32_t layer, const Pass& pass, const LayerViews& views) {
  const LayerWeights& w = layers_[size_t(layer)];
  const cuda::DType kdtype = kernel_dtype(dtype_);
  const int tokens = pass.num_tokens;
  profile_.mark(Op::norm, stream_);
  check_cuda(cuda::add_rmsnorm(workspace_.residual, workspace_.delta, w.post_norm, kdtype, tokens,
                               int(config_.hidden_size), float(config_.rms_norm_eps), workspace_.normed, stream_),
             "add_rmsnorm");
  if (observer_)
    report_input(layer, {"mlp.gate_proj", "mlp.up_proj"}, workspace_.normed, tokens, config_.hidden_size);

  profile_.mark(Op::gate_up_gemm, stream_);
  LinearCall gate_up;
  gate_up.x = views.normed;
  if (w.gate_up->fused_epilogues(tokens) & kEpilogueSiluMul) {
    // No [tokens, 2 intermediate] product is written or launched for.
    gate_up.y = views.activated;
    gate_up.epilogue = kEpilogueSiluMul;
    throw_if_error(w.gate_up->forward(gate_up, views.linear));
  } else {
    gate_up.y = views.gate_up;
    throw_if_error(w.gate_up->forward(gate_up, views.linear));
    profile_.mark(Op::silu_mul, stream_);
    check_cuda(cuda::silu_and_mul(workspace_.gate_up, kdtype, tokens, int(config_.intermediate_size),
                                  workspace_.activated, stream_),
               "silu_and_mul");
  }
  if (observer_) report_input(layer, {"mlp.down_proj"}, workspace_.activated, tokens, config_.intermediate_size);
  profile_.mark(Op::down_gemm, stream_);
  LinearCall down;
  down.x = views.activated;
  down.y = views.delta;
  throw_if_error(w.down_proj->forward(down, views.linear));
}

}  // namespace hostrun::llama_cuda
