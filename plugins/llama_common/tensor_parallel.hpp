// Tensor parallelism for Llama: which slice of every checkpoint tensor each
// rank holds, and which collective joins the ranks' results.
//
// One decoder layer split across tp ranks (Megatron-LM's scheme):
//
//   q/k/v_proj, gate/up_proj   column-parallel: output rows divided; each rank
//                              computes its own heads / MLP columns, no communication
//   o_proj, down_proj          row-parallel: input columns divided; each rank's
//                              product is a partial sum of the full one, summed
//                              across ranks (all-reduce) before the residual add
//   embed_tokens               vocab-parallel: vocabulary rows divided; a rank
//                              looks up the ids in its rows, writes zeros for the
//                              others, and an all-reduce sums the rows together
//   lm_head                    vocab-parallel: vocabulary rows divided; each rank
//                              computes the logits of its rows, all-gathered
//   norms                      replicated
//
// So the residual stream between sublayers is whole and identical on every
// rank, and a layer costs two all-reduces of [tokens, hidden].
//
// Every slice is one contiguous range along one dimension of the full tensor
// (TensorSlice). A loader reads each rank's part straight out of the
// memory-mapped safetensors file (byte_runs, copy_shard), so no device, and no
// host staging buffer, ever holds a whole tensor, let alone the whole model.
//
// This library is only the plan: sizes, ranges and the checks that make them
// valid. It depends on the Llama config and nothing else (no NCCL, no CUDA),
// so the model plugins and CPU tests share one definition of the split.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "llama_common/llama_config.hpp"
#include "hostrun/status.hpp"

namespace hostrun::llama {

// How a tensor is divided among the ranks.
enum class Sharding : uint8_t {
  replicated,     // every rank holds all of it
  split_rows,     // column-parallel linear: dim 0 (output features) divided evenly
  split_columns,  // row-parallel linear: dim 1 (input features) divided evenly
  vocab_rows,     // dim 0 (vocabulary) divided in ceil(vocab / tp) rows a rank, the last ones shorter
};

// What joins the ranks after the op that uses a tensor.
enum class Collective : uint8_t {
  none,
  all_reduce_sum,  // each rank holds a partial sum of the whole result
  all_gather,      // each rank holds its columns of the whole result
};

std::string_view sharding_name(Sharding sharding) noexcept;        // "split_rows"
std::string_view collective_name(Collective collective) noexcept;  // "all_reduce_sum"

// [start, start + length) of some index (heads, rows, columns).
struct IndexRange {
  int64_t start = 0;
  int64_t length = 0;
  int64_t end() const noexcept { return start + length; }
  bool contains(int64_t index) const noexcept { return index >= start && index < end(); }
  friend bool operator==(const IndexRange&, const IndexRange&) = default;
};

// The part of a tensor a rank holds: [start, start + length) along `dim`,
// every other dimension whole. A replicated tensor is all of dim 0.
struct TensorSlice {
  int dim = 0;
  int64_t start = 0;
  int64_t length = 0;
  friend bool operator==(const TensorSlice&, const TensorSlice&) = default;
};

// One checkpoint tensor as one rank holds it.
struct TensorShard {
  std::string name;                 // HF name ("model.layers.3.self_attn.o_proj.weight")
  std::vector<int64_t> full_shape;  // as stored in the checkpoint
  Sharding sharding = Sharding::replicated;
  TensorSlice slice;
  // What joins the ranks after the product with this tensor (none for a
  // column-parallel weight and for every tensor of a one-rank plan).
  Collective after = Collective::none;
  // o_proj.bias and down_proj.bias (attention_bias / mlp_bias checkpoints):
  // held whole by every rank and added once, to the all-reduced sum; added to
  // each partial sum it would be counted tp times.
  bool add_after_reduce = false;

  std::vector<int64_t> shard_shape() const;  // full_shape with slice.length at slice.dim
  int64_t numel() const noexcept;            // elements this rank holds
};

// Where a shard's bytes lie inside the bytes of its full tensor (row-major,
// offsets relative to the tensor's first byte): `runs` pieces of `run_bytes`
// each, the first at `first_byte`, each `stride_bytes` after the one before.
// A dim-0 slice is a single run; a dim-1 slice of a [rows, cols] matrix is one
// run per row. That is cudaMemcpy2D's shape (source pitch = stride_bytes,
// width = run_bytes, height = runs), so a loader can copy a rank's shard from
// the memory-mapped file to its device in one call.
struct ByteRuns {
  uint64_t first_byte = 0;
  uint64_t run_bytes = 0;
  uint64_t stride_bytes = 0;
  uint64_t runs = 0;
  uint64_t total_bytes() const noexcept { return run_bytes * runs; }
  friend bool operator==(const ByteRuns&, const ByteRuns&) = default;
};

// `element_bytes`: 4 for f32, 2 for bf16/f16.
ByteRuns byte_runs(const TensorShard& shard, uint64_t element_bytes) noexcept;

// Copies a rank's shard out of the full tensor's bytes (e.g. a memory-mapped
// safetensors view) into `shard_bytes`, contiguous and row-major in the
// shard's shape. invalid_argument, naming the tensor, when either buffer's
// size disagrees with the shard's shape; nothing is written then.
Status copy_shard(std::span<const std::byte> full_tensor, const TensorShard& shard, uint64_t element_bytes,
                  std::span<std::byte> shard_bytes) noexcept;

// The vocabulary split of embed_tokens and lm_head. Every rank's logits
// buffer has rows_per_rank columns, so the all-gather moves equal pieces; the
// last ranks' pieces end in padding (columns past vocab_size) that the
// gathered logits drop.
struct VocabPartition {
  int64_t vocab_size = 0;
  int tp_size = 1;
  int64_t rows_per_rank = 0;  // ceil(vocab_size / tp_size)

  IndexRange rows(int rank) const noexcept;  // the real rows of `rank`, possibly fewer than rows_per_rank
  int64_t padded_vocab() const noexcept { return rows_per_rank * tp_size; }
  // Gathered logits are rank-major, [tp_size][tokens][rows_per_rank] (what an
  // all-gather of each rank's [tokens][rows_per_rank] gives): token t's logit
  // of token id v is at gathered_index(t, v, tokens).
  int64_t gathered_index(int64_t token, int64_t vocab_id, int64_t tokens) const noexcept;
};

// Everything one rank holds of a Llama model.
struct LlamaShardPlan {
  int tp_size = 1;
  int rank = 0;
  IndexRange q_heads;           // query heads this rank computes
  IndexRange kv_heads;          // KV heads it projects and keeps in its KV cache
  int64_t kv_head_replicas = 1; // ranks holding each KV head: tp / kv_heads when kv_heads < tp, else 1
  IndexRange mlp_columns;       // columns of the intermediate (gate/up rows, down_proj columns)
  VocabPartition vocab;         // embed_tokens / lm_head rows
  IndexRange vocab_rows;        // vocab.rows(rank)
  std::vector<TensorShard> tensors;  // every tensor of llama_tensor_specs(), in its order

  const TensorShard* find(std::string_view name) const noexcept;
  int64_t local_q_heads() const noexcept { return q_heads.length; }
  int64_t local_kv_heads() const noexcept { return kv_heads.length; }
  // Elements of the weights this rank holds (times the element size: bytes).
  int64_t numel() const noexcept;
  // "rank 1 of 4: q heads [8, 16), kv heads [2, 4), mlp columns [3584, 7168), vocab rows [32064, 64128)"
  std::string describe() const;
};

// Whether `tp_size` ranks can split this model: tp_size >= 1, tp divides
// num_attention_heads and intermediate_size, and num_key_value_heads and tp
// divide one another. invalid_argument otherwise, naming every size that does
// not divide and the numbers involved.
Status check_tensor_parallel(const LlamaConfig& config, int tp_size) noexcept;

// The plan of `rank` (0 <= rank < tp_size). Also runs validate_llama_config.
Result<LlamaShardPlan> plan_llama_shards(const LlamaConfig& config, int tp_size, int rank) noexcept;

}  // namespace hostrun::llama
