// The sharding plan itself: which slice each rank holds, the byte runs a
// loader reads, and the errors for shapes that cannot be split.
#include <doctest/doctest.h>

#include <cstring>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "llama_common/llama_weights.hpp"
#include "llama_common/tensor_parallel.hpp"

using hostrun::ErrorCode;
using hostrun::llama::LlamaConfig;
using namespace hostrun::llama;

namespace {

LlamaShardPlan plan_of(const LlamaConfig& config, int tp_size, int rank) {
  auto plan = plan_llama_shards(config, tp_size, rank);
  INFO(plan.status().message());
  REQUIRE(plan.has_value());
  return *plan;
}

const TensorShard& shard_of(const LlamaShardPlan& plan, const std::string& name) {
  const TensorShard* shard = plan.find(name);
  INFO(name);
  REQUIRE(shard != nullptr);
  return *shard;
}

// Llama-3-70B's shape: 64 query heads, 8 KV heads.
LlamaConfig llama3_70b_config() {
  LlamaConfig c = hostrun::llama::llama3_8b_config();
  c.hidden_size = 8192;
  c.intermediate_size = 28672;
  c.num_hidden_layers = 80;
  c.num_attention_heads = 64;
  c.num_key_value_heads = 8;
  return c;
}

}  // namespace

TEST_CASE("Llama-3-8B at tp 4: rank 1's slices of every kind of tensor") {
  const LlamaConfig config = hostrun::llama::llama3_8b_config();
  const LlamaShardPlan plan = plan_of(config, 4, 1);
  CHECK(plan.q_heads == IndexRange{8, 8});
  CHECK(plan.kv_heads == IndexRange{2, 2});
  CHECK(plan.kv_head_replicas == 1);
  CHECK(plan.mlp_columns == IndexRange{3584, 3584});
  CHECK(plan.vocab.rows_per_rank == 32064);
  CHECK(plan.vocab_rows == IndexRange{32064, 32064});
  CHECK(plan.describe() == "rank 1 of 4: q heads [8, 16), kv heads [2, 4), mlp columns [3584, 7168), vocab rows "
                           "[32064, 64128)");

  const auto& q = shard_of(plan, "model.layers.5.self_attn.q_proj.weight");
  CHECK(q.sharding == Sharding::split_rows);
  CHECK(q.slice == TensorSlice{0, 1024, 1024});
  CHECK(q.after == Collective::none);
  CHECK(q.shard_shape() == std::vector<int64_t>{1024, 4096});
  const auto& k = shard_of(plan, "model.layers.5.self_attn.k_proj.weight");
  CHECK(k.slice == TensorSlice{0, 256, 256});
  CHECK(shard_of(plan, "model.layers.5.self_attn.v_proj.weight").slice == TensorSlice{0, 256, 256});
  const auto& o = shard_of(plan, "model.layers.5.self_attn.o_proj.weight");
  CHECK(o.sharding == Sharding::split_columns);
  CHECK(o.slice == TensorSlice{1, 1024, 1024});
  CHECK(o.after == Collective::all_reduce_sum);
  CHECK(shard_of(plan, "model.layers.5.mlp.gate_proj.weight").slice == TensorSlice{0, 3584, 3584});
  CHECK(shard_of(plan, "model.layers.5.mlp.up_proj.weight").slice == TensorSlice{0, 3584, 3584});
  const auto& down = shard_of(plan, "model.layers.5.mlp.down_proj.weight");
  CHECK(down.slice == TensorSlice{1, 3584, 3584});
  CHECK(down.after == Collective::all_reduce_sum);
  const auto& norm = shard_of(plan, "model.layers.5.input_layernorm.weight");
  CHECK(norm.sharding == Sharding::replicated);
  CHECK(norm.slice == TensorSlice{0, 0, 4096});
  CHECK(shard_of(plan, "model.norm.weight").sharding == Sharding::replicated);
  const auto& embed = shard_of(plan, "model.embed_tokens.weight");
  CHECK(embed.sharding == Sharding::vocab_rows);
  CHECK(embed.slice == TensorSlice{0, 32064, 32064});
  CHECK(embed.after == Collective::all_reduce_sum);
  const auto& lm_head = shard_of(plan, "lm_head.weight");
  CHECK(lm_head.slice == TensorSlice{0, 32064, 32064});
  CHECK(lm_head.after == Collective::all_gather);
}

TEST_CASE("byte runs: one run for a row slice, one run per row for a column slice (bf16)") {
  const LlamaShardPlan plan = plan_of(hostrun::llama::llama3_8b_config(), 4, 1);
  // q_proj rows [1024, 2048) of [4096, 4096]: one contiguous block.
  CHECK(byte_runs(shard_of(plan, "model.layers.0.self_attn.q_proj.weight"), 2) ==
        ByteRuns{1024ull * 4096 * 2, 1024ull * 4096 * 2, 1024ull * 4096 * 2, 1});
  // o_proj columns [1024, 2048) of [4096, 4096]: 4096 rows of 1024 elements.
  const ByteRuns o = byte_runs(shard_of(plan, "model.layers.0.self_attn.o_proj.weight"), 2);
  CHECK(o == ByteRuns{1024 * 2, 1024 * 2, 4096 * 2, 4096});
  CHECK(o.total_bytes() == 4096ull * 1024 * 2);
  // A replicated norm: all of it.
  CHECK(byte_runs(shard_of(plan, "model.norm.weight"), 2) == ByteRuns{0, 8192, 8192, 1});
}

TEST_CASE("copy_shard reads a column slice out of the full tensor, and checks both buffer sizes") {
  TensorShard shard;
  shard.name = "w";
  shard.full_shape = {3, 5};
  shard.sharding = Sharding::split_columns;
  shard.slice = {1, 1, 3};
  std::vector<float> full(15);
  std::iota(full.begin(), full.end(), 0.0f);
  std::vector<float> part(9);
  const auto full_bytes = std::as_bytes(std::span<const float>(full));
  REQUIRE(copy_shard(full_bytes, shard, 4, std::as_writable_bytes(std::span<float>(part))).is_ok());
  CHECK(part == std::vector<float>{1, 2, 3, 6, 7, 8, 11, 12, 13});

  std::vector<float> too_small(8);
  auto status = copy_shard(full_bytes, shard, 4, std::as_writable_bytes(std::span<float>(too_small)));
  CHECK(status.code() == ErrorCode::invalid_argument);
  CHECK(status.message() == "tensor 'w': the shard [3, 3] needs a 36-byte buffer, found 32");
  status = copy_shard(full_bytes.first(56), shard, 4, std::as_writable_bytes(std::span<float>(part)));
  CHECK(status.message() == "tensor 'w': expected 60 bytes of shape [3, 5] at 4 bytes an element, found 56");
}

TEST_CASE("the plan names exactly llama_tensor_specs(), and splits add back up to the whole model") {
  for (bool tied : {false, true})
    for (bool biases : {false, true}) {
      LlamaConfig config = hostrun::llama::tiny_llama_config();
      config.vocab_size = 250;  // not a multiple of 4: a padded last shard
      config.tie_word_embeddings = tied;
      config.attention_bias = biases;
      config.mlp_bias = biases;
      const auto specs = hostrun::llama::llama_tensor_specs(config);
      for (int tp : {1, 2, 4}) {
        CAPTURE(tied);
        CAPTURE(biases);
        CAPTURE(tp);
        // Per tensor, the elements all ranks hold together: each split
        // tensor once (KV projections once per copy of a KV head), each
        // replicated one tp times.
        std::map<std::string, int64_t> held;
        int64_t kv_head_replicas = 0;
        for (int rank = 0; rank < tp; ++rank) {
          const LlamaShardPlan plan = plan_of(config, tp, rank);
          kv_head_replicas = plan.kv_head_replicas;
          REQUIRE(plan.tensors.size() == specs.size());
          for (size_t i = 0; i < specs.size(); ++i) {
            CHECK(plan.tensors[i].name == specs[i].name);
            CHECK(plan.tensors[i].full_shape == specs[i].shape);
            held[specs[i].name] += plan.tensors[i].numel();
            if (tp == 1) CHECK(plan.tensors[i].after == Collective::none);
          }
        }
        CHECK(kv_head_replicas == (tp == 4 ? 2 : 1));  // tiny_llama_config has 2 KV heads
        const LlamaShardPlan rank0 = plan_of(config, tp, 0);
        for (const auto& spec : specs) {
          CAPTURE(spec.name);
          const int64_t numel =
              std::accumulate(spec.shape.begin(), spec.shape.end(), int64_t{1}, std::multiplies<>());
          const bool is_kv = spec.name.find("k_proj") != std::string::npos ||
                             spec.name.find("v_proj") != std::string::npos;
          const int64_t copies = rank0.find(spec.name)->sharding == Sharding::replicated ? tp
                                 : is_kv                                                  ? kv_head_replicas
                                                                                          : 1;
          CHECK(held[spec.name] == numel * copies);
        }
        if (biases) {
          const auto plan = plan_of(config, tp, 0);
          CHECK(shard_of(plan, "model.layers.1.self_attn.o_proj.bias").add_after_reduce == (tp > 1));
          CHECK(shard_of(plan, "model.layers.1.mlp.down_proj.bias").add_after_reduce == (tp > 1));
          CHECK(shard_of(plan, "model.layers.1.self_attn.k_proj.bias").sharding == Sharding::split_rows);
        }
      }
    }
}

TEST_CASE("fewer KV heads than ranks: each rank holds the one KV head its query heads use") {
  // Llama-3-70B (8 KV heads) on 16 ranks: every KV head on 2 ranks.
  const LlamaConfig config = llama3_70b_config();
  for (int rank = 0; rank < 16; ++rank) {
    const LlamaShardPlan plan = plan_of(config, 16, rank);
    CAPTURE(rank);
    CHECK(plan.q_heads == IndexRange{4 * rank, 4});
    CHECK(plan.kv_heads == IndexRange{rank / 2, 1});
    CHECK(plan.kv_head_replicas == 2);
    CHECK(shard_of(plan, "model.layers.0.self_attn.k_proj.weight").slice == TensorSlice{0, 128 * (rank / 2), 128});
  }
  // Multi-query (one KV head) on 4 ranks: the same head everywhere.
  LlamaConfig mqa = hostrun::llama::tiny_llama_config();
  mqa.num_key_value_heads = 1;
  for (int rank = 0; rank < 4; ++rank) {
    const LlamaShardPlan plan = plan_of(mqa, 4, rank);
    CHECK(plan.kv_heads == IndexRange{0, 1});
    CHECK(plan.kv_head_replicas == 4);
    CHECK(plan.describe().find("(each on 4 ranks)") != std::string::npos);
  }
}

TEST_CASE("every rank's query heads attend with KV heads that rank holds, the same count on every rank") {
  for (auto [q_heads, kv_heads] : {std::pair{8, 8}, {8, 4}, {8, 2}, {8, 1}, {32, 8}, {64, 8}})
    for (int tp : {1, 2, 4, 8}) {
      LlamaConfig config = hostrun::llama::tiny_llama_config();
      config.num_attention_heads = q_heads;
      config.num_key_value_heads = kv_heads;
      if (!check_tensor_parallel(config, tp)) continue;
      const int64_t group = q_heads / kv_heads;
      for (int rank = 0; rank < tp; ++rank) {
        const LlamaShardPlan plan = plan_of(config, tp, rank);
        CAPTURE(q_heads);
        CAPTURE(kv_heads);
        CAPTURE(tp);
        CHECK(plan.local_kv_heads() == std::max<int64_t>(1, kv_heads / tp));
        REQUIRE(plan.local_q_heads() % plan.local_kv_heads() == 0);
        const int64_t local_group = plan.local_q_heads() / plan.local_kv_heads();
        for (int64_t h = 0; h < plan.local_q_heads(); ++h)
          CHECK(plan.kv_heads.start + h / local_group == (plan.q_heads.start + h) / group);
      }
    }
}

TEST_CASE("vocabulary shards: equal padded pieces, the real rows shorter at the end") {
  VocabPartition vocab{103, 4, 26};
  CHECK(vocab.rows(0) == IndexRange{0, 26});
  CHECK(vocab.rows(3) == IndexRange{78, 25});
  CHECK(vocab.padded_vocab() == 104);
  CHECK(vocab.gathered_index(2, 80, 5) == (3 * 5 + 2) * 26 + 2);
  // Smaller than tp: the last rank holds nothing but padding.
  LlamaConfig config = hostrun::llama::tiny_llama_config();
  config.vocab_size = 7;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  const LlamaShardPlan last = plan_of(config, 4, 3);
  CHECK(last.vocab.rows_per_rank == 2);
  CHECK(last.vocab_rows == IndexRange{6, 1});
  config.vocab_size = 5;
  const LlamaShardPlan empty = plan_of(config, 4, 3);
  CHECK(empty.vocab_rows == IndexRange{5, 0});
  CHECK(shard_of(empty, "lm_head.weight").numel() == 0);
  CHECK(byte_runs(shard_of(empty, "lm_head.weight"), 2).total_bytes() == 0);
  CHECK(empty.describe().find("(+2 padding)") != std::string::npos);
}

TEST_CASE("shapes that cannot be split: the error names every size and the numbers") {
  const LlamaConfig llama8b = hostrun::llama::llama3_8b_config();
  CHECK(check_tensor_parallel(llama8b, 1).is_ok());
  CHECK(check_tensor_parallel(llama8b, 8).is_ok());
  CHECK(check_tensor_parallel(llama8b, 16).is_ok());  // 8 KV heads, each on 2 ranks

  auto status = check_tensor_parallel(llama8b, 3);
  CHECK(status.code() == ErrorCode::invalid_argument);
  CHECK(status.message() ==
        "--tp 3 cannot split this model: num_attention_heads (32) is not divisible by 3 (each rank computes an "
        "equal share of the query heads); num_key_value_heads (8) and 3 must divide one another (each rank holds "
        "8 / tp KV heads, or, with fewer KV heads than ranks, one KV head shared by tp / 8 ranks); "
        "intermediate_size (14336) is not divisible by 3 (each rank computes an equal share of the MLP columns)");

  LlamaConfig odd_mlp = llama8b;
  odd_mlp.intermediate_size = 11008 + 2;  // divisible by 2, not by 4
  CHECK(check_tensor_parallel(odd_mlp, 2).is_ok());
  status = check_tensor_parallel(odd_mlp, 4);
  CHECK(status.message() ==
        "--tp 4 cannot split this model: intermediate_size (11010) is not divisible by 4 (each rank computes an "
        "equal share of the MLP columns)");

  LlamaConfig six_kv = llama8b;
  six_kv.num_attention_heads = 24;
  six_kv.num_key_value_heads = 6;
  six_kv.head_dim = 128;
  status = check_tensor_parallel(six_kv, 4);
  CHECK(status.message().find("num_key_value_heads (6) and 4 must divide one another") != std::string::npos);
  CHECK(status.message().find("num_attention_heads") == std::string::npos);

  status = check_tensor_parallel(llama8b, 64);
  CHECK(status.message().find("num_attention_heads (32) is not divisible by 64") != std::string::npos);

  status = check_tensor_parallel(llama8b, 0);
  CHECK(status.code() == ErrorCode::invalid_argument);
  CHECK(status.message() == "--tp 0: expected a positive number of ranks (1 = one GPU, no tensor parallelism)");

  // plan_llama_shards applies the same check, and checks the rank.
  auto plan = plan_llama_shards(llama8b, 3, 0);
  REQUIRE_FALSE(plan.has_value());
  CHECK(plan.status().message().rfind("--tp 3 cannot split this model: ", 0) == 0);
  plan = plan_llama_shards(llama8b, 4, 4);
  REQUIRE_FALSE(plan.has_value());
  CHECK(plan.status().message() == "tensor parallelism: rank 4 is outside [0, 4) (--tp 4)");
  LlamaConfig broken = llama8b;
  broken.num_key_value_heads = 0;
  CHECK_FALSE(plan_llama_shards(broken, 2, 0).has_value());
}

TEST_CASE("a rank's share of Llama-3-70B's weights at tp 8") {
  const LlamaConfig config = llama3_70b_config();
  int64_t total = 0;
  int64_t largest = 0;
  for (int rank = 0; rank < 8; ++rank) {
    const LlamaShardPlan plan = plan_of(config, 8, rank);
    total += plan.numel();
    largest = std::max(largest, plan.numel());
  }
  // Only the norms are held by every rank: 161 vectors of 8192.
  int64_t model_numel = 0;
  for (const auto& spec : hostrun::llama::llama_tensor_specs(config))
    model_numel += std::accumulate(spec.shape.begin(), spec.shape.end(), int64_t{1}, std::multiplies<>());
  CHECK(total == model_numel + 7 * 161 * 8192);
  CHECK(largest * 8 == total);
  // About 8.8 billion parameters (17.6 GB in bf16) a GPU.
  CHECK(largest > 8'800'000'000);
  CHECK(largest < 8'830'000'000);
}
