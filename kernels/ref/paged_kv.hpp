// The paged KV cache as the reference kernels see it: one layer's page pools,
// and the plain description of one engine step's sequences (FlashInfer/vLLM
// style). write_kv.hpp stores a step's new K/V; paged_attention.hpp attends
// over them.
//
// Pool layout, per layer, for K and for V:
//
//   pages[num_blocks, block_tokens, kv_heads, head_dim]      (f32 / bf16 / f16)
//
// so token slot s = block * block_tokens + offset starts at element
// s * kv_heads * head_dim. A quantized pool (quant_bits 8 or 4, kv_quant.hpp)
// keeps each token's scales inside its block, so a block stays one opaque
// span of bytes that copying, sharing and preemption move as it is:
//
//   block b = codes  [block_tokens, kv_heads, kv_code_bytes(head_dim)]
//             params [block_tokens, kv_heads] (scale, zero) as two f16
//
// Token position p of sequence i lives in block
// block_tables[i * max_blocks_per_sequence + p / block_tokens], offset
// p % block_tokens.
//
// One step (sequences 0 .. num_sequences-1, each with a chunk of new tokens;
// a decode is a chunk of 1, a prefill chunk may follow a cached prefix):
//
//   new tokens of sequence i:  rows query_start[i] .. query_start[i+1]-1 of q/k/v/out
//   context_lens[i]:           tokens in its cache AFTER this step's write
//                              (cached + new), so cached = context_lens[i] - new
//   new token j of sequence i: position cached + j, attends to 0 .. cached + j
//   slot_mapping[t]:           the slot new token t is written to
#pragma once

#include <cstddef>
#include <cstdint>

#include "ref/dtype.hpp"
#include "ref/status.hpp"

namespace hostrun::ref {

struct KvCacheLayer {
  void* k_pages = nullptr;  // [num_blocks, block_tokens, kv_heads, head_dim], or quantized blocks
  void* v_pages = nullptr;  // same shape
  DType dtype = DType::f32;  // of float pages; unused when quant_bits != 0
  std::size_t num_blocks = 0;
  std::size_t block_tokens = 0;
  std::size_t kv_heads = 0;
  std::size_t head_dim = 0;
  int quant_bits = 0;  // 0: float pages; 8 or 4: quantized blocks (above)
};

struct PagedKvStep {
  std::size_t num_sequences = 0;
  const std::int32_t* query_start = nullptr;   // [num_sequences + 1], query_start[0] == 0, non-decreasing
  const std::int32_t* context_lens = nullptr;  // [num_sequences]
  const std::int32_t* block_tables = nullptr;  // [num_sequences * max_blocks_per_sequence]
  std::size_t max_blocks_per_sequence = 0;
  std::size_t block_tokens = 0;                 // page size; must equal KvCacheLayer::block_tokens
  const std::int64_t* slot_mapping = nullptr;  // [num_tokens()], block * block_tokens + offset

  std::size_t num_tokens() const { return num_sequences == 0 ? 0 : static_cast<std::size_t>(query_start[num_sequences]); }
};

// Bytes one block of one pool (K or V) takes.
std::size_t kv_pool_block_bytes(const KvCacheLayer& cache);

// One token's one head of a pool as f32 (dequantized, or converted from the
// float dtype), and the inverse (quantized, or rounded to the dtype).
void load_kv_head(const KvCacheLayer& cache, const void* pool, std::size_t slot, std::size_t head, float* out);
void store_kv_head(const KvCacheLayer& cache, void* pool, std::size_t slot, std::size_t head, const float* in);

// Checks everything paged_attention relies on: query_start starts at 0 and
// never decreases, each sequence's new tokens fit in its context, its context
// fits in max_blocks_per_sequence blocks, every block it uses is inside the
// pool, and every new token's slot is the one its block table gives its
// position. Returns the first problem found (bad_step_layout,
// block_out_of_range, slot_out_of_range) or ok. Cheap; the CPU model may call
// it every step, tests always do.
Status validate_paged_kv_step(const KvCacheLayer& cache, const PagedKvStep& step);

}  // namespace hostrun::ref
