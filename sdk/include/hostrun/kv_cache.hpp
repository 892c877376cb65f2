// Role: KvCachePolicy — the KV cache's storage format and the two operations
// that depend on it: writing new K/V into pages, and attention over pages.
//
// The host's block manager only counts blocks; what a block holds (16-bit
// values, or int8/int4 values plus per-token, per-head scales and zero points)
// is the policy's business. That is why attention lives here too: an int4
// cache is read by a kernel that dequantizes on the fly.
//
// Rules every policy keeps, so a model can run its step as it likes (one
// launch after another, overlapped with the host, or captured into a CUDA
// graph and replayed):
//  - write(), write_rotary() and attend() never allocate device memory, never
//    synchronize, and never create streams or events; whatever they need is
//    made in allocate() (per cache) or passed in (ExecContext::workspace,
//    sized by workspace_bytes()). On a GPU they only enqueue work on
//    exec.stream (and on streams of the cache's own that fork from and join
//    back into it), so they are legal inside stream capture.
//  - they read the step's PagedKvBatch arrays only on the device (the host
//    copy may be gone by the time the work runs), and read or write no memory
//    outside the views and the cache given.
//  - attend() plans from host-known sizes only (PagedKvBatch's num_sequences,
//    num_tokens, max_query_len, max_context_len), so a plan made for upper
//    bounds serves any smaller step: a captured graph stays valid.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <fmt/format.h>

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
  // The dtype of the keys, values and queries the model hands write() and
  // attend() (its activation dtype); a policy that stores "what it is given"
  // stores this.
  DType activation_dtype = DType::bf16;
};

// What a policy is, as fields a model and the host check (never its name).
struct KvFormat {
  std::string name;                // for logs and reports: "bf16", "int8", "int4"
  int32_t quant_policy = 0;        // LMDeploy's --quant-policy number: 0 (none), 8 (int8), 4 (int4)
  int32_t value_bits = 16;         // bits one stored K or V element takes (scales and zero points aside)
  uint32_t activation_dtypes = 0;  // dtype_bit() of every dtype write() and attend() take
  DeviceKind device = DeviceKind::cpu;  // where its caches live and its kernels run
  bool rotary_write = false;       // write_rotary() is implemented (else the model rotates, then calls write())
};

// Whether a model running `activation_dtype` on `device` can use a policy of
// `format`; the error says which field disagrees.
inline Status check_kv_format(const KvFormat& format, Device device, DType activation_dtype) {
  if (format.device != device.kind)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("the KV cache policy '{}' keeps its cache on {} but the model runs on {}", format.name,
                              device_kind_name(format.device), device_kind_name(device.kind)));
  if ((format.activation_dtypes & dtype_bit(activation_dtype)) == 0)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("the KV cache policy '{}' does not take {} keys and values (the model's activation dtype)",
                              format.name, dtype_name(activation_dtype)));
  return Status();
}

// The paged KV cache of one step, as plain index arrays (all on `device`).
// Token i of the step is query token i; sequence s owns query tokens
// [query_start[s], query_start[s+1]) and, after this step's write, context
// tokens [0, context_lens[s]) stored in the pages listed in its block table.
// sdk/include/hostrun/step.hpp builds one from a StepInput.
struct PagedKvBatch {
  int32_t num_sequences = 0;
  int32_t num_tokens = 0;
  const int32_t* query_start = nullptr;   // [num_sequences + 1]
  const int32_t* context_lens = nullptr;  // [num_sequences]
  const int32_t* block_tables = nullptr;  // [num_sequences * max_blocks_per_sequence]
  int32_t max_blocks_per_sequence = 0;
  const int32_t* slot_mapping = nullptr;  // [num_tokens]: block * block_tokens + offset; < 0: padding, not written
  const int32_t* positions = nullptr;     // [num_tokens]: position of each query token
  int32_t max_query_len = 0;              // an upper bound is fine
  int32_t max_context_len = 0;            // an upper bound is fine
  Device device{};
};

// The largest step a model will run, for sizing attend()'s workspace once.
struct KvWorkspaceQuery {
  KvShape shape;
  int32_t q_heads = 0;
  int32_t max_tokens = 0;     // query tokens in one call
  int32_t max_sequences = 0;  // sequences in one call
  int32_t max_context = 0;    // longest context (cached + new) of any sequence
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
  // The cache, and every per-cache resource the operations below use.
  virtual Result<PluginPtr<KvCache>> allocate(const KvShape& shape, int32_t num_blocks, Device device) noexcept = 0;
  // Device workspace attend() needs for any step within `query` (bytes, 256-byte
  // aligned start); the model allocates it once and passes it in ExecContext.
  virtual Result<size_t> workspace_bytes(const KvWorkspaceQuery& query) const noexcept = 0;
  // Stores the step's new keys and values ([num_tokens, kv_heads, head_dim]
  // views, any row stride, head_dim contiguous) of one layer into their slots.
  virtual Status write(KvCache& cache, int32_t layer, const TensorView& keys, const TensorView& values,
                       const PagedKvBatch& batch, const ExecContext& exec) noexcept = 0;
  // RoPE fused with the store, when format().rotary_write: `queries`
  // ([num_tokens, q_heads, head_dim]) and `keys` arrive unrotated, each a view
  // with its own row stride (they may or may not be parts of one fused row);
  // the policy rotates the queries in place and stores rotated keys and the
  // values. RoPE as HF's rotate_half pairs (i, i + head_dim/2) at angle
  // float(batch.positions[t]) * inv_freq[i], `inv_freq` [head_dim / 2] f32 on
  // the batch's device (ref::make_rope_table, llama3 scaling included). A
  // policy without it answers unsupported without touching anything.
  virtual Status write_rotary(KvCache& cache, int32_t layer, const TensorView& queries, const TensorView& keys,
                              const TensorView& values, const float* inv_freq, const PagedKvBatch& batch,
                              const ExecContext& exec) noexcept {
    (void)cache, (void)layer, (void)queries, (void)keys, (void)values, (void)inv_freq, (void)batch, (void)exec;
    return Status(ErrorCode::unsupported, "this KV cache policy does not fuse RoPE with its write");
  }
  // Causal attention of the step's queries ([num_tokens, q_heads, head_dim],
  // any row stride) over each sequence's cached context; q_heads is a multiple
  // of kv_heads (grouped-query attention). Writes [num_tokens, q_heads,
  // head_dim] to `out` (any row stride).
  virtual Status attend(const KvCache& cache, int32_t layer, const TensorView& queries,
                        const PagedKvBatch& batch, float softmax_scale, const TensorView& out,
                        const ExecContext& exec) noexcept = 0;
};

}  // namespace hostrun
