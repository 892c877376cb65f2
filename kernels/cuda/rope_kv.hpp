// RoPE fused with the paged KV write (twins: ref/rope.hpp, ref/write_kv.hpp).
//
// Input: the fused QKV projection of one step, per token
//   qkv[t] = [ q heads (q_heads*head_dim) | k heads (kv_heads*head_dim) | v heads ]
// For token t at positions[t], with inv_freq from ref::make_rope_table
// (llama3 scaling included), angle_i = f32(position) * inv_freq[i] (an f32
// product, as HF forms it), cos/sin of that f32 angle evaluated in double
// and rounded to f32 (as ref does), and HF's rotate_half pairing (i, i + d/2):
//
//   q_out[t, h]            = rope(q[t, h])
//   k_pages[slot_mapping[t], g] = rope(k[t, g])    (pool dtype = activation dtype)
//   v_pages[slot_mapping[t], g] = v[t, g]
//
// Pools are [num_blocks, block_tokens, kv_heads, head_dim]; a slot is
// block * block_tokens + offset. A negative slot means "padding token, do not
// write" (vLLM's convention, so a CUDA graph can run a padded batch); a slot
// >= num_blocks * block_tokens is skipped and sets error_flag to
// Status::slot_out_of_range. q_out may equal qkv (rotated in place, same row
// stride) or be a separate [num_tokens, q_heads, head_dim] buffer.
//
// dtype f32 / bf16 / f16; head_dim a multiple of 16 (64, 128, ...).
// One block of 128 threads per token; 16-byte accesses.
#pragma once

#include "cuda/dtype.hpp"

namespace hostrun::cuda {

struct RopeKvArgs {
  DType dtype = DType::bf16;
  int num_tokens = 0;
  int q_heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  const void* qkv = nullptr;          // [num_tokens, qkv_row_stride], device
  std::int64_t qkv_row_stride = 0;    // elements; >= (q_heads + 2 * kv_heads) * head_dim
  void* q_out = nullptr;              // may equal qkv
  std::int64_t q_out_row_stride = 0;  // elements
  const std::int32_t* positions = nullptr;     // [num_tokens]
  const float* inv_freq = nullptr;             // [head_dim / 2], device copy of RopeTable::inv_freq
  const std::int32_t* slot_mapping = nullptr;  // [num_tokens]
  void* k_pages = nullptr;
  void* v_pages = nullptr;
  std::int64_t num_slots = 0;  // num_blocks * block_tokens
  std::int32_t* error_flag = nullptr;
};

cudaError_t rope_and_write_kv(const RopeKvArgs& args, cudaStream_t stream);

}  // namespace hostrun::cuda
