// Role: KvCachePolicy — the KV cache's storage format and the two operations
// that depend on it: writing new K/V into pages, and attention over pages.
//
// The host's block manager only counts blocks; what a block holds (bf16 values,
// or int8/int4 values plus per-token, per-head scales and zero points) is the
// policy's business. That is why attention lives here too: an int4 cache is
// read by a kernel that dequantizes on the fly.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "hostrun/exec.hpp"
#include "hostrun/plugin_object.hpp"
#include "hostrun/status.hpp"
#include "hostrun/tensor.hpp"

namespace hostrun {

struct KvShape {
  int32_t layers = 0;
  int32_t kv_heads = 0;   // on this device (after tensor-parallel split)
  int32_t head_dim = 0;
  int32_t block_tokens = 64;  // tokens per page (--cache-block-seq-len)
};

struct KvFormat {
  std::string name;          // "bf16", "f16", "int8", "int4"
  int32_t quant_policy = 0;  // LMDeploy's number: 0 (none), 8 (int8), 4 (int4)
  int32_t value_bits = 16;
};

// The paged KV cache of one step, as plain index arrays (all on `device`).
// Token i of the step is query token i; sequence s owns query tokens
// [query_start[s], query_start[s+1]) and, after this step's write, context
// tokens [0, context_lens[s]) stored in the pages listed in its block table.
struct PagedKvBatch {
  int32_t num_sequences = 0;
  int32_t num_tokens = 0;
  const int32_t* query_start = nullptr;   // [num_sequences + 1]
  const int32_t* context_lens = nullptr;  // [num_sequences]
  const int32_t* block_tables = nullptr;  // [num_sequences * max_blocks_per_sequence]
  int32_t max_blocks_per_sequence = 0;
  const int32_t* slot_mapping = nullptr;  // [num_tokens]: block * block_tokens + offset
  const int32_t* positions = nullptr;     // [num_tokens]: position of each query token
  int32_t max_query_len = 0;
  int32_t max_context_len = 0;
  Device device{};
};

// The cache memory of every layer, made by a policy.
class KvCache : public PluginObject {
 public:
  virtual int32_t num_blocks() const noexcept = 0;
  virtual size_t bytes() const noexcept = 0;
  virtual KvShape shape() const noexcept = 0;
};

class KvCachePolicy : public PluginObject {
 public:
  virtual KvFormat format() const noexcept = 0;
  // Bytes one block takes across all layers, K and V, scales included.
  virtual size_t bytes_per_block(const KvShape& shape) const noexcept = 0;
  virtual Result<std::unique_ptr<KvCache>> allocate(const KvShape& shape, int32_t num_blocks,
                                                    Device device) noexcept = 0;
  // Stores the step's new keys and values ([num_tokens, kv_heads, head_dim],
  // activation dtype) of one layer into their slots.
  virtual Status write(KvCache& cache, int32_t layer, const TensorView& keys, const TensorView& values,
                       const PagedKvBatch& batch, const ExecContext& exec) noexcept = 0;
  // Optional: RoPE fused with the store, so queries and keys are not read and
  // written once more just to rotate them. `queries` ([num_tokens, q_heads,
  // head_dim]) and `keys` arrive unrotated; the policy rotates the queries in
  // place and stores rotated keys and the values. RoPE as HF's rotate_half
  // pairs (i, i + head_dim/2) at angle float(batch.positions[t]) * inv_freq[i],
  // `inv_freq` [head_dim / 2] f32 on the batch's device (ref::make_rope_table,
  // llama3 scaling included). A policy that cannot (this default, or a layout
  // it does not take) answers unsupported without touching anything; the
  // model then rotates and calls write().
  virtual Status write_rotary(KvCache& cache, int32_t layer, const TensorView& queries, const TensorView& keys,
                              const TensorView& values, const float* inv_freq, const PagedKvBatch& batch,
                              const ExecContext& exec) noexcept {
    (void)cache, (void)layer, (void)queries, (void)keys, (void)values, (void)inv_freq, (void)batch, (void)exec;
    return Status(ErrorCode::unsupported, "this KV cache policy does not fuse RoPE with its write");
  }
  // Causal attention of the step's queries ([num_tokens, q_heads, head_dim])
  // over each sequence's cached context; q_heads is a multiple of kv_heads
  // (grouped-query attention). Writes [num_tokens, q_heads, head_dim] to `out`.
  virtual Status attend(const KvCache& cache, int32_t layer, const TensorView& queries,
                        const PagedKvBatch& batch, float softmax_scale, const TensorView& out,
                        const ExecContext& exec) noexcept = 0;
};

}  // namespace hostrun
