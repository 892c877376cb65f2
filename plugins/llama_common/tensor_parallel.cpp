#include "llama_common/tensor_parallel.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace hostrun::llama {

namespace {

int64_t product(std::span<const int64_t> dims) noexcept {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// Rank `rank`'s equal share of `total` items (the caller checked divisibility).
IndexRange even_share(int64_t total, int tp_size, int rank) noexcept {
  const int64_t per_rank = total / tp_size;
  return {per_rank * rank, per_rank};
}

// Collects the shards of one rank in llama_tensor_specs() order.
class ShardList {
 public:
  ShardList(int tp_size) : communicates_(tp_size > 1) {}

  void replicated(std::string name, std::vector<int64_t> shape, bool add_after_reduce = false) {
    const int64_t rows = shape.at(0);
    add(std::move(name), std::move(shape), Sharding::replicated, {0, 0, rows}, Collective::none, add_after_reduce);
  }
  void split_rows(std::string name, std::vector<int64_t> shape, IndexRange rows) {
    add(std::move(name), std::move(shape), Sharding::split_rows, {0, rows.start, rows.length}, Collective::none);
  }
  void split_columns(std::string name, std::vector<int64_t> shape, IndexRange columns) {
    add(std::move(name), std::move(shape), Sharding::split_columns, {1, columns.start, columns.length},
        Collective::all_reduce_sum);
  }
  void vocab_rows(std::string name, std::vector<int64_t> shape, IndexRange rows, Collective after) {
    add(std::move(name), std::move(shape), Sharding::vocab_rows, {0, rows.start, rows.length}, after);
  }
  std::vector<TensorShard> take() { return std::move(shards_); }

 private:
  void add(std::string name, std::vector<int64_t> shape, Sharding sharding, TensorSlice slice, Collective after,
           bool add_after_reduce = false) {
    TensorShard shard;
    shard.name = std::move(name);
    shard.full_shape = std::move(shape);
    shard.sharding = sharding;
    shard.slice = slice;
    // One rank has nothing to join: --tp 1 asks for no collective at all.
    shard.after = communicates_ ? after : Collective::none;
    shard.add_after_reduce = add_after_reduce && communicates_;
    shards_.push_back(std::move(shard));
  }

  bool communicates_;
  std::vector<TensorShard> shards_;
};

// Every tensor of the model with the slice `plan` holds of it. The names and
// shapes are those of llama_tensor_specs() (the tests check that
// they agree); listing them here keeps this library a leaf that needs only
// the config.
std::vector<TensorShard> llama_shards(const LlamaConfig& c, const LlamaShardPlan& plan) {
  const int64_t hidden = c.hidden_size;
  const int64_t head_dim = c.head_dim;
  const IndexRange q_rows{plan.q_heads.start * head_dim, plan.q_heads.length * head_dim};
  const IndexRange kv_rows{plan.kv_heads.start * head_dim, plan.kv_heads.length * head_dim};
  ShardList list(plan.tp_size);
  list.vocab_rows(c.names.embed_tokens(), {c.vocab_size, hidden}, plan.vocab_rows, Collective::all_reduce_sum);
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string p = c.names.layer(layer);
    list.replicated(p + "input_layernorm.weight", {hidden});
    list.split_rows(p + "self_attn.q_proj.weight", {c.q_size(), hidden}, q_rows);
    list.split_rows(p + "self_attn.k_proj.weight", {c.kv_size(), hidden}, kv_rows);
    list.split_rows(p + "self_attn.v_proj.weight", {c.kv_size(), hidden}, kv_rows);
    list.split_columns(p + "self_attn.o_proj.weight", {hidden, c.q_size()}, q_rows);
    if (c.attention_bias) {
      list.split_rows(p + "self_attn.q_proj.bias", {c.q_size()}, q_rows);
      list.split_rows(p + "self_attn.k_proj.bias", {c.kv_size()}, kv_rows);
      list.split_rows(p + "self_attn.v_proj.bias", {c.kv_size()}, kv_rows);
      list.replicated(p + "self_attn.o_proj.bias", {hidden}, /*add_after_reduce=*/true);
    }
    list.replicated(p + "post_attention_layernorm.weight", {hidden});
    list.split_rows(p + "mlp.gate_proj.weight", {c.intermediate_size, hidden}, plan.mlp_columns);
    list.split_rows(p + "mlp.up_proj.weight", {c.intermediate_size, hidden}, plan.mlp_columns);
    list.split_columns(p + "mlp.down_proj.weight", {hidden, c.intermediate_size}, plan.mlp_columns);
    if (c.mlp_bias) {
      list.split_rows(p + "mlp.gate_proj.bias", {c.intermediate_size}, plan.mlp_columns);
      list.split_rows(p + "mlp.up_proj.bias", {c.intermediate_size}, plan.mlp_columns);
      list.replicated(p + "mlp.down_proj.bias", {hidden}, /*add_after_reduce=*/true);
    }
  }
  list.replicated(c.names.final_norm(), {hidden});
  // Tied checkpoints have no lm_head: the embed_tokens shard, the same rows,
  // serves as the LM head too (its product then all-gathered).
  if (!c.tie_word_embeddings)
    list.vocab_rows(c.names.lm_head, {c.vocab_size, hidden}, plan.vocab_rows, Collective::all_gather);
  return list.take();
}

std::string range_text(IndexRange range) { return fmt::format("[{}, {})", range.start, range.end()); }

}  // namespace

std::string_view sharding_name(Sharding sharding) noexcept {
  switch (sharding) {
    case Sharding::replicated: return "replicated";
    case Sharding::split_rows: return "split_rows";
    case Sharding::split_columns: return "split_columns";
    case Sharding::vocab_rows: return "vocab_rows";
  }
  return "?";
}

std::string_view collective_name(Collective collective) noexcept {
  switch (collective) {
    case Collective::none: return "none";
    case Collective::all_reduce_sum: return "all_reduce_sum";
    case Collective::all_gather: return "all_gather";
  }
  return "?";
}

std::vector<int64_t> TensorShard::shard_shape() const {
  std::vector<int64_t> shape = full_shape;
  shape.at(size_t(slice.dim)) = slice.length;
  return shape;
}

int64_t TensorShard::numel() const noexcept {
  if (full_shape.empty()) return 0;
  return product(full_shape) / full_shape[size_t(slice.dim)] * slice.length;
}

ByteRuns byte_runs(const TensorShard& shard, uint64_t element_bytes) noexcept {
  const std::span<const int64_t> shape(shard.full_shape);
  const size_t dim = size_t(shard.slice.dim);
  if (dim >= shape.size()) return {};
  // Row-major: the dimensions before `dim` repeat the run, those after it are
  // inside each index of it.
  const uint64_t outer = uint64_t(product(shape.first(dim)));
  const uint64_t inner_bytes = uint64_t(product(shape.subspan(dim + 1))) * element_bytes;
  ByteRuns runs;
  runs.first_byte = uint64_t(shard.slice.start) * inner_bytes;
  runs.run_bytes = uint64_t(shard.slice.length) * inner_bytes;
  runs.stride_bytes = uint64_t(shape[dim]) * inner_bytes;
  runs.runs = outer;
  // Back-to-back runs (a whole dim-1 slice) are one; a single run's stride
  // is its own size, so equal shards compare equal however they were cut.
  if (runs.run_bytes == runs.stride_bytes) {
    runs.run_bytes *= runs.runs;
    runs.runs = 1;
  }
  if (runs.runs == 1) runs.stride_bytes = runs.run_bytes;
  return runs;
}

Status copy_shard(std::span<const std::byte> full_tensor, const TensorShard& shard, uint64_t element_bytes,
                  std::span<std::byte> shard_bytes) noexcept {
  return guard([&]() -> Status {
    if (size_t(shard.slice.dim) >= shard.full_shape.size())
      return error(ErrorCode::invalid_argument,
                   fmt::format("tensor '{}': slice of dim {} of a tensor of rank {}", shard.name, shard.slice.dim,
                               shard.full_shape.size()));
    if (shard.slice.start < 0 || shard.slice.length < 0 ||
        shard.slice.start + shard.slice.length > shard.full_shape[size_t(shard.slice.dim)])
      return error(ErrorCode::invalid_argument,
                   fmt::format("tensor '{}': slice [{}, {}) of dim {} is outside its size {}", shard.name,
                               shard.slice.start, shard.slice.start + shard.slice.length, shard.slice.dim,
                               shard.full_shape[size_t(shard.slice.dim)]));
    const uint64_t full_bytes = uint64_t(product(shard.full_shape)) * element_bytes;
    const ByteRuns runs = byte_runs(shard, element_bytes);
    if (full_tensor.size() != full_bytes)
      return error(ErrorCode::invalid_argument,
                   fmt::format("tensor '{}': expected {} bytes of shape [{}] at {} bytes an element, found {}",
                               shard.name, full_bytes, fmt::join(shard.full_shape, ", "), element_bytes,
                               full_tensor.size()));
    if (shard_bytes.size() != runs.total_bytes())
      return error(ErrorCode::invalid_argument,
                   fmt::format("tensor '{}': the shard [{}] needs a {}-byte buffer, found {}", shard.name,
                               fmt::join(shard.shard_shape(), ", "), runs.total_bytes(), shard_bytes.size()));
    for (uint64_t run = 0; run < runs.runs; ++run)
      std::memcpy(shard_bytes.data() + run * runs.run_bytes,
                  full_tensor.data() + runs.first_byte + run * runs.stride_bytes, runs.run_bytes);
    return Status();
  });
}

IndexRange VocabPartition::rows(int rank) const noexcept {
  const int64_t start = std::min(vocab_size, rows_per_rank * rank);
  const int64_t end = std::min(vocab_size, start + rows_per_rank);
  return {start, end - start};
}

int64_t VocabPartition::gathered_index(int64_t token, int64_t vocab_id, int64_t tokens) const noexcept {
  const int64_t rank = vocab_id / rows_per_rank;
  return (rank * tokens + token) * rows_per_rank + vocab_id % rows_per_rank;
}

const TensorShard* LlamaShardPlan::find(std::string_view name) const noexcept {
  for (const auto& shard : tensors)
    if (shard.name == name) return &shard;
  return nullptr;
}

int64_t LlamaShardPlan::numel() const noexcept {
  int64_t total = 0;
  for (const auto& shard : tensors) total += shard.numel();
  return total;
}

std::string LlamaShardPlan::describe() const {
  std::string text = fmt::format("rank {} of {}: q heads {}, kv heads {}", rank, tp_size, range_text(q_heads),
                                 range_text(kv_heads));
  if (kv_head_replicas > 1) text += fmt::format(" (each on {} ranks)", kv_head_replicas);
  text += fmt::format(", mlp columns {}, vocab rows {}", range_text(mlp_columns), range_text(vocab_rows));
  if (vocab_rows.length < vocab.rows_per_rank)
    text += fmt::format(" (+{} padding)", vocab.rows_per_rank - vocab_rows.length);
  return text;
}

Status check_tensor_parallel(const LlamaConfig& config, int tp_size) noexcept {
  return guard([&]() -> Status {
    if (tp_size < 1)
      return error(ErrorCode::invalid_argument,
                   fmt::format("--tp {}: expected a positive number of ranks (1 = one GPU, no tensor parallelism)",
                               tp_size));
    // Every problem at once: whoever picks --tp for a model wants to see all
    // the sizes it must divide, not one per attempt.
    std::vector<std::string> problems;
    const int64_t tp = tp_size;
    if (config.num_attention_heads % tp != 0)
      problems.push_back(fmt::format(
          "num_attention_heads ({}) is not divisible by {} (each rank computes an equal share of the query heads)",
          config.num_attention_heads, tp));
    const int64_t kv = config.num_key_value_heads;
    if (kv > 0 && kv % tp != 0 && tp % kv != 0)
      problems.push_back(fmt::format(
          "num_key_value_heads ({}) and {} must divide one another (each rank holds {} / tp KV heads, or, with "
          "fewer KV heads than ranks, one KV head shared by tp / {} ranks)",
          kv, tp, kv, kv));
    if (config.intermediate_size % tp != 0)
      problems.push_back(fmt::format(
          "intermediate_size ({}) is not divisible by {} (each rank computes an equal share of the MLP columns)",
          config.intermediate_size, tp));
    if (problems.empty()) return Status();
    return error(ErrorCode::invalid_argument,
                 fmt::format("--tp {} cannot split this model: {}", tp_size, fmt::join(problems, "; ")));
  });
}

Result<LlamaShardPlan> plan_llama_shards(const LlamaConfig& config, int tp_size, int rank) noexcept {
  if (Status s = validate_llama_config(config); !s) return s;
  if (Status s = check_tensor_parallel(config, tp_size); !s) return s;
  if (rank < 0 || rank >= tp_size)
    return error(ErrorCode::invalid_argument,
                 fmt::format("tensor parallelism: rank {} is outside [0, {}) (--tp {})", rank, tp_size, tp_size));
  try {
    LlamaShardPlan plan;
    plan.tp_size = tp_size;
    plan.rank = rank;
    plan.q_heads = even_share(config.num_attention_heads, tp_size, rank);
    // A rank's KV heads are those its query heads attend with (query head h
    // uses KV head h / group). check_tensor_parallel makes that either
    // kv_heads / tp heads of its own or, when kv_heads < tp, exactly one head
    // that tp / kv_heads ranks each hold a copy of. Either way every rank has
    // the same number of KV heads and its query heads divide evenly among
    // them, so local query head h uses local KV head
    // h / (local_q_heads / local_kv_heads), the same GQA rule as on one GPU.
    const int64_t group = config.num_attention_heads / config.num_key_value_heads;
    const int64_t first_kv = plan.q_heads.start / group;
    const int64_t last_kv = (plan.q_heads.end() - 1) / group;
    plan.kv_heads = {first_kv, last_kv - first_kv + 1};
    plan.kv_head_replicas =
        config.num_key_value_heads < tp_size ? tp_size / config.num_key_value_heads : int64_t{1};
    plan.mlp_columns = even_share(config.intermediate_size, tp_size, rank);
    plan.vocab.vocab_size = config.vocab_size;
    plan.vocab.tp_size = tp_size;
    plan.vocab.rows_per_rank = (config.vocab_size + tp_size - 1) / tp_size;
    plan.vocab_rows = plan.vocab.rows(rank);
    plan.tensors = llama_shards(config, plan);
    return plan;
  } catch (const std::bad_alloc&) {
    return error(ErrorCode::out_of_memory, "out of host memory");
  } catch (const std::exception& e) {
    return error(ErrorCode::internal, e.what());
  }
}

}  // namespace hostrun::llama
