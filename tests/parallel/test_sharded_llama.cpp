// The sharded math equals the unsharded reference, on the CPU.
//
// A small random Llama is written as a real safetensors file. The reference
// runs it whole with the kernels/ref ops: embeddings, two decoder layers
// (RMSNorm, q/k/v, RoPE, causal GQA attention, o_proj, residual, RMSNorm,
// gate/up, SiLU-and-multiply, down_proj, residual), the final norm and the LM
// head. Then tp "ranks" each read only their byte runs of the same file
// (copy_shard on the memory map, as a loader would) and run the same step on
// their slices; a simulated all-reduce (sum of the partials, rank by rank)
// and all-gather join them where NCCL would. Every rank's residual stream
// after each layer and the gathered logits must equal the reference's within
// 1e-5 of the tensor's largest magnitude (f32), and exactly at tp 1.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "llama_common/llama_weights.hpp"
#include "checkpoint/safetensors.hpp"
#include "llama_common/tensor_parallel.hpp"
#include "ref/embedding.hpp"
#include "ref/gemm.hpp"
#include "ref/rmsnorm.hpp"
#include "ref/rope.hpp"
#include "ref/silu_mul.hpp"
#include "../support/temp_dir.hpp"

namespace fs = std::filesystem;
using hostrun::llama::LlamaConfig;
using hostrun::checkpoint::SafetensorsFile;
using namespace hostrun::llama;

namespace {

constexpr double kTolerance = 1e-5;
using Floats = std::vector<float>;

using hostrun::test::TempDir;

// hidden (40) differs from q_size (64) and from intermediate (72), so a
// transposed or mis-sliced weight cannot line up by accident; the vocabulary
// (103) divides by neither 2 nor 4, so the last LM-head shard is padded.
LlamaConfig small_llama(int64_t q_heads, int64_t kv_heads) {
  LlamaConfig c;
  c.hidden_size = 40;
  c.intermediate_size = 72;
  c.num_hidden_layers = 2;
  c.num_attention_heads = q_heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = 64 / q_heads;
  c.vocab_size = 103;
  c.max_position_embeddings = 64;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-5;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.torch_dtype = "float32";
  return c;
}

// Random f32 values for every tensor (norms around 1, everything else around
// 0, biases included), written as one safetensors file.
fs::path write_random_model(const LlamaConfig& config, const fs::path& directory, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> spread(-0.5f, 0.5f);
  const auto specs = hostrun::llama::llama_tensor_specs(config);
  std::vector<Floats> values;
  std::vector<hostrun::checkpoint::TensorData> tensors;
  for (const auto& spec : specs) {
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    Floats& v = values.emplace_back(size_t(numel));
    const bool is_norm = spec.name.find("norm") != std::string::npos;
    for (float& x : v) x = is_norm ? 1.0f + spread(rng) : spread(rng);
  }
  for (size_t i = 0; i < specs.size(); ++i)
    tensors.push_back({specs[i].name, hostrun::DType::f32, specs[i].shape,
                       std::as_bytes(std::span<const float>(values[i]))});
  const fs::path path = directory / "model.safetensors";
  auto written = hostrun::checkpoint::write_safetensors(path, tensors);
  INFO(written.message());
  REQUIRE(written.is_ok());
  return path;
}

// The weights one rank holds, read shard by shard from the file.
std::map<std::string, Floats> load_rank(const SafetensorsFile& file, const LlamaShardPlan& plan) {
  std::map<std::string, Floats> weights;
  for (const auto& shard : plan.tensors) {
    auto view = file.tensor(shard.name);
    REQUIRE(view.has_value());
    const std::span<const std::byte> full(static_cast<const std::byte*>(view->data), view->nbytes());
    Floats& local = weights[shard.name];
    local.resize(size_t(shard.numel()));
    auto copied = copy_shard(full, shard, sizeof(float), std::as_writable_bytes(std::span<float>(local)));
    INFO(copied.message());
    REQUIRE(copied.is_ok());
  }
  return weights;
}

// y[tokens, out] = x[tokens, in] @ weight[out, in]^T
Floats linear(const Floats& x, const Floats& weight, size_t tokens, size_t out, size_t in) {
  REQUIRE(x.size() == tokens * in);
  REQUIRE(weight.size() == out * in);
  Floats y(tokens * out);
  if (out > 0) hostrun::ref::gemm(x.data(), weight.data(), hostrun::ref::DType::f32, tokens, out, in, y.data());
  return y;
}

void add_bias(Floats& y, const Floats& bias) {
  for (size_t i = 0; i < y.size(); ++i) y[i] += bias[i % bias.size()];
}

Floats rmsnorm(const Floats& x, const Floats& weight, size_t tokens, float eps) {
  Floats y(x.size());
  hostrun::ref::rmsnorm(x.data(), weight.data(), hostrun::ref::DType::f32, tokens, weight.size(), eps, y.data());
  return y;
}

// Dense causal attention of one sequence, GQA: query head h uses KV head
// h / (q_heads / kv_heads). q [tokens, q_heads, head_dim], k/v [tokens, kv_heads, head_dim].
Floats causal_attention(const Floats& q, const Floats& k, const Floats& v, size_t tokens, size_t q_heads,
                        size_t kv_heads, size_t head_dim) {
  Floats out(tokens * q_heads * head_dim, 0.0f);
  const size_t group = q_heads / kv_heads;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  Floats scores(tokens);
  for (size_t t = 0; t < tokens; ++t)
    for (size_t h = 0; h < q_heads; ++h) {
      const float* qh = &q[(t * q_heads + h) * head_dim];
      const size_t g = h / group;
      float max_score = -INFINITY;
      for (size_t s = 0; s <= t; ++s) {
        const float* ks = &k[(s * kv_heads + g) * head_dim];
        float dot = 0.0f;
        for (size_t d = 0; d < head_dim; ++d) dot += qh[d] * ks[d];
        scores[s] = dot * scale;
        max_score = std::max(max_score, scores[s]);
      }
      float total = 0.0f;
      for (size_t s = 0; s <= t; ++s) total += scores[s] = std::exp(scores[s] - max_score);
      float* oh = &out[(t * q_heads + h) * head_dim];
      for (size_t s = 0; s <= t; ++s) {
        const float* vs = &v[(s * kv_heads + g) * head_dim];
        for (size_t d = 0; d < head_dim; ++d) oh[d] += scores[s] / total * vs[d];
      }
    }
  return out;
}

// [tokens, gate] and [tokens, up] -> silu(gate) * up through the fused kernel's layout.
Floats silu_mul(const Floats& gate, const Floats& up, size_t tokens, size_t width) {
  Floats gate_up(tokens * 2 * width);
  for (size_t t = 0; t < tokens; ++t) {
    std::copy_n(&gate[t * width], width, &gate_up[t * 2 * width]);
    std::copy_n(&up[t * width], width, &gate_up[t * 2 * width + width]);
  }
  Floats out(tokens * width);
  if (width > 0) hostrun::ref::silu_and_mul(gate_up.data(), tokens, width, out.data());
  return out;
}

struct StepTrace {
  std::vector<Floats> residual_after_layer;  // [layers][tokens * hidden]
  Floats logits;                             // [tokens, vocab]
};

// The single-device model: full tensors, no collectives.
StepTrace reference_step(const LlamaConfig& c, const SafetensorsFile& file, const std::vector<int32_t>& ids) {
  auto full = [&](const std::string& name) {
    auto view = file.tensor(name);
    REQUIRE(view.has_value());
    const float* data = static_cast<const float*>(view->data);
    return Floats(data, data + view->nbytes() / sizeof(float));
  };
  const size_t tokens = ids.size(), hidden = size_t(c.hidden_size), head_dim = size_t(c.head_dim);
  const size_t q_heads = size_t(c.num_attention_heads), kv_heads = size_t(c.num_key_value_heads);
  const size_t inter = size_t(c.intermediate_size), vocab = size_t(c.vocab_size);
  const float eps = float(c.rms_norm_eps);
  const auto rope = hostrun::ref::make_rope_table({.head_dim = head_dim, .theta = c.rope_theta});
  std::vector<int32_t> positions(tokens);
  for (size_t t = 0; t < tokens; ++t) positions[t] = int32_t(t);

  StepTrace trace;
  const Floats embed = full("model.embed_tokens.weight");
  Floats residual(tokens * hidden);
  REQUIRE(hostrun::ref::embedding_lookup(ids.data(), tokens, embed.data(), hostrun::ref::DType::f32, vocab, hidden,
                                         residual.data()) == hostrun::ref::Status::ok);
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    Floats x = rmsnorm(residual, full(p + "input_layernorm.weight"), tokens, eps);
    Floats q = linear(x, full(p + "self_attn.q_proj.weight"), tokens, q_heads * head_dim, hidden);
    Floats k = linear(x, full(p + "self_attn.k_proj.weight"), tokens, kv_heads * head_dim, hidden);
    Floats v = linear(x, full(p + "self_attn.v_proj.weight"), tokens, kv_heads * head_dim, hidden);
    if (c.attention_bias) {
      add_bias(q, full(p + "self_attn.q_proj.bias"));
      add_bias(k, full(p + "self_attn.k_proj.bias"));
      add_bias(v, full(p + "self_attn.v_proj.bias"));
    }
    hostrun::ref::apply_rope(rope, positions.data(), tokens, q.data(), q_heads, k.data(), kv_heads);
    const Floats attn = causal_attention(q, k, v, tokens, q_heads, kv_heads, head_dim);
    Floats o = linear(attn, full(p + "self_attn.o_proj.weight"), tokens, hidden, q_heads * head_dim);
    if (c.attention_bias) add_bias(o, full(p + "self_attn.o_proj.bias"));
    for (size_t i = 0; i < residual.size(); ++i) residual[i] += o[i];

    x = rmsnorm(residual, full(p + "post_attention_layernorm.weight"), tokens, eps);
    Floats gate = linear(x, full(p + "mlp.gate_proj.weight"), tokens, inter, hidden);
    Floats up = linear(x, full(p + "mlp.up_proj.weight"), tokens, inter, hidden);
    if (c.mlp_bias) {
      add_bias(gate, full(p + "mlp.gate_proj.bias"));
      add_bias(up, full(p + "mlp.up_proj.bias"));
    }
    Floats down = linear(silu_mul(gate, up, tokens, inter), full(p + "mlp.down_proj.weight"), tokens, hidden, inter);
    if (c.mlp_bias) add_bias(down, full(p + "mlp.down_proj.bias"));
    for (size_t i = 0; i < residual.size(); ++i) residual[i] += down[i];
    trace.residual_after_layer.push_back(residual);
  }
  const Floats normed = rmsnorm(residual, full("model.norm.weight"), tokens, eps);
  trace.logits = linear(normed, full(c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"), tokens,
                        vocab, hidden);
  return trace;
}

// What NCCL's all-reduce leaves on every rank: the sum of all ranks' buffers.
void all_reduce_sum(std::vector<Floats>& per_rank) {
  Floats sum(per_rank[0].size(), 0.0f);
  for (const Floats& partial : per_rank)
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += partial[i];
  for (Floats& buffer : per_rank) buffer = sum;
}

// The same step, tp ranks each with only its shards.
StepTrace sharded_step(const LlamaConfig& c, const SafetensorsFile& file, const std::vector<int32_t>& ids, int tp) {
  std::vector<LlamaShardPlan> plans;
  std::vector<std::map<std::string, Floats>> weights;
  for (int rank = 0; rank < tp; ++rank) {
    auto plan = plan_llama_shards(c, tp, rank);
    INFO(plan.status().message());
    REQUIRE(plan.has_value());
    weights.push_back(load_rank(file, *plan));
    plans.push_back(std::move(*plan));
  }
  const size_t tokens = ids.size(), hidden = size_t(c.hidden_size), head_dim = size_t(c.head_dim);
  const float eps = float(c.rms_norm_eps);
  const auto rope = hostrun::ref::make_rope_table({.head_dim = head_dim, .theta = c.rope_theta});
  std::vector<int32_t> positions(tokens);
  for (size_t t = 0; t < tokens; ++t) positions[t] = int32_t(t);

  // Vocab-parallel embedding: a rank fills the rows of the ids it holds and
  // leaves zeros elsewhere; the all-reduce adds each row to zeros, exactly.
  std::vector<Floats> residual(size_t(tp), Floats(tokens * hidden, 0.0f));
  for (int rank = 0; rank < tp; ++rank) {
    const IndexRange rows = plans[rank].vocab_rows;
    const Floats& embed = weights[rank]["model.embed_tokens.weight"];
    for (size_t t = 0; t < tokens; ++t)
      if (rows.contains(ids[t]))
        std::copy_n(&embed[size_t(ids[t] - rows.start) * hidden], hidden, &residual[rank][t * hidden]);
  }
  all_reduce_sum(residual);

  StepTrace trace;
  std::vector<Floats> partial(static_cast<size_t>(tp));  // each rank's share of a row-parallel product
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    for (int rank = 0; rank < tp; ++rank) {
      auto& w = weights[rank];
      const size_t q_heads = size_t(plans[rank].local_q_heads()), kv_heads = size_t(plans[rank].local_kv_heads());
      const Floats x = rmsnorm(residual[rank], w[p + "input_layernorm.weight"], tokens, eps);
      Floats q = linear(x, w[p + "self_attn.q_proj.weight"], tokens, q_heads * head_dim, hidden);
      Floats k = linear(x, w[p + "self_attn.k_proj.weight"], tokens, kv_heads * head_dim, hidden);
      Floats v = linear(x, w[p + "self_attn.v_proj.weight"], tokens, kv_heads * head_dim, hidden);
      if (c.attention_bias) {
        add_bias(q, w[p + "self_attn.q_proj.bias"]);
        add_bias(k, w[p + "self_attn.k_proj.bias"]);
        add_bias(v, w[p + "self_attn.v_proj.bias"]);
      }
      hostrun::ref::apply_rope(rope, positions.data(), tokens, q.data(), q_heads, k.data(), kv_heads);
      const Floats attn = causal_attention(q, k, v, tokens, q_heads, kv_heads, head_dim);
      partial[rank] = linear(attn, w[p + "self_attn.o_proj.weight"], tokens, hidden, q_heads * head_dim);
    }
    all_reduce_sum(partial);
    for (int rank = 0; rank < tp; ++rank) {
      if (c.attention_bias) add_bias(partial[rank], weights[rank][p + "self_attn.o_proj.bias"]);
      for (size_t i = 0; i < partial[rank].size(); ++i) residual[rank][i] += partial[rank][i];
    }

    for (int rank = 0; rank < tp; ++rank) {
      auto& w = weights[rank];
      const size_t columns = size_t(plans[rank].mlp_columns.length);
      const Floats x = rmsnorm(residual[rank], w[p + "post_attention_layernorm.weight"], tokens, eps);
      Floats gate = linear(x, w[p + "mlp.gate_proj.weight"], tokens, columns, hidden);
      Floats up = linear(x, w[p + "mlp.up_proj.weight"], tokens, columns, hidden);
      if (c.mlp_bias) {
        add_bias(gate, w[p + "mlp.gate_proj.bias"]);
        add_bias(up, w[p + "mlp.up_proj.bias"]);
      }
      partial[rank] = linear(silu_mul(gate, up, tokens, columns), w[p + "mlp.down_proj.weight"], tokens, hidden,
                             columns);
    }
    all_reduce_sum(partial);
    for (int rank = 0; rank < tp; ++rank) {
      if (c.mlp_bias) add_bias(partial[rank], weights[rank][p + "mlp.down_proj.bias"]);
      for (size_t i = 0; i < partial[rank].size(); ++i) residual[rank][i] += partial[rank][i];
    }
    // Every rank's copy of the residual stream is compared, not just rank 0's.
    for (int rank = 0; rank < tp; ++rank) CHECK(residual[rank] == residual[0]);
    trace.residual_after_layer.push_back(residual[0]);
  }

  // Vocab-parallel LM head: each rank's logits padded to rows_per_rank
  // columns, all-gathered rank-major, the padding dropped.
  const VocabPartition& vocab = plans[0].vocab;
  Floats gathered(size_t(vocab.padded_vocab()) * tokens, NAN);
  for (int rank = 0; rank < tp; ++rank) {
    auto& w = weights[rank];
    const Floats normed = rmsnorm(residual[rank], w["model.norm.weight"], tokens, eps);
    const size_t rows = size_t(plans[rank].vocab_rows.length);
    const Floats local = linear(normed, w[c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"],
                                tokens, rows, hidden);
    const size_t padded = size_t(vocab.rows_per_rank);
    for (size_t t = 0; t < tokens; ++t)
      std::copy_n(&local[t * rows], rows, &gathered[(size_t(rank) * tokens + t) * padded]);
  }
  trace.logits.resize(tokens * size_t(c.vocab_size));
  for (size_t t = 0; t < tokens; ++t)
    for (int64_t id = 0; id < c.vocab_size; ++id)
      trace.logits[t * size_t(c.vocab_size) + size_t(id)] = gathered[size_t(vocab.gathered_index(int64_t(t), id,
                                                                                                   int64_t(tokens)))];
  return trace;
}

// max |got - want| relative to max |want|.
double relative_error(const Floats& got, const Floats& want) {
  REQUIRE(got.size() == want.size());
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(double(got[i]) - double(want[i])));  // NaN fails below
    if (std::isnan(got[i])) max_diff = INFINITY;
    max_ref = std::max(max_ref, std::abs(double(want[i])));
  }
  return max_diff / max_ref;
}

void check_tp_matches_reference(const LlamaConfig& config, std::initializer_list<int> tp_sizes) {
  TempDir dir;
  const fs::path path = write_random_model(config, dir.path(), 7);
  auto file = SafetensorsFile::open(path);
  REQUIRE(file.has_value());
  // Ids across the whole vocabulary, so every rank's embedding rows are used.
  const std::vector<int32_t> ids{3, 101, 50, 0, 77, 26, 102, 51, 25};
  const StepTrace reference = reference_step(config, *file, ids);
  for (int tp : tp_sizes) {
    CAPTURE(tp);
    const StepTrace sharded = sharded_step(config, *file, ids, tp);
    REQUIRE(sharded.residual_after_layer.size() == reference.residual_after_layer.size());
    for (size_t layer = 0; layer < reference.residual_after_layer.size(); ++layer) {
      CAPTURE(layer);
      const double error = relative_error(sharded.residual_after_layer[layer], reference.residual_after_layer[layer]);
      CHECK(error <= kTolerance);
      // One rank sums each partial onto zeros: the same bits as the reference.
      if (tp == 1) CHECK(error == 0.0);
    }
    const double logits_error = relative_error(sharded.logits, reference.logits);
    MESSAGE("q_heads ", config.num_attention_heads, ", kv_heads ", config.num_key_value_heads, ", tp ", tp,
            ": logits relative error ", logits_error);
    CHECK(logits_error <= kTolerance);
    if (tp == 1) CHECK(logits_error == 0.0);
  }
}

}  // namespace

TEST_CASE("multi-head attention (8 query, 8 KV heads): tp 1, 2, 4 equal the unsharded model") {
  check_tp_matches_reference(small_llama(8, 8), {1, 2, 4});
}

TEST_CASE("grouped-query attention (8 query, 4 KV heads): tp 1, 2, 4 equal the unsharded model") {
  check_tp_matches_reference(small_llama(8, 4), {1, 2, 4});
}

TEST_CASE("fewer KV heads than ranks (8 query, 2 KV heads; and 1): replicated KV heads at tp 4") {
  check_tp_matches_reference(small_llama(8, 2), {1, 2, 4});
  check_tp_matches_reference(small_llama(8, 1), {2, 4});
}

TEST_CASE("tied embeddings and biases: the embed_tokens shard is the LM head, row-parallel biases added once") {
  LlamaConfig config = small_llama(8, 2);
  config.tie_word_embeddings = true;
  config.attention_bias = true;
  config.mlp_bias = true;
  check_tp_matches_reference(config, {1, 2, 4});
}
