// RoPE fused with the paged KV write (twins: ref/rope.hpp, ref/write_kv.hpp).
//
// Input: one step's queries, keys and values, each as rows with a row stride
// of its own (in elements; head_dim contiguous, heads back to back):
//   q[t] [q_heads, head_dim]   k[t] [kv_heads, head_dim]   v[t] [kv_heads, head_dim]
// They may be three buffers, or the three head groups of one fused QKV row
// (q = qkv, k = qkv + q_heads*head_dim, v = k + kv_heads*head_dim, one stride
// for all three): the kernel does not care which.
// For token t at positions[t], with inv_freq from ref::make_rope_table
// (llama3 scaling included), angle_i = f32(position) * inv_freq[i] (an f32
// product, as HF forms it), cos/sin of that f32 angle evaluated in double
// and rounded to f32 (as ref does), and HF's rotate_half pairing (i, i + d/2):
//
//   q[t, h]                     = rope(q[t, h])      (in place)
//   k_pages[slot_mapping[t], g] = rope(k[t, g])      (pool dtype = activation dtype)
//   v_pages[slot_mapping[t], g] = v[t, g]
//
// Pools are [num_blocks, block_tokens, kv_heads, head_dim]; a slot is
// block * block_tokens + offset. A negative slot means "padding token, do not
// write" (vLLM's convention, so a CUDA graph can run a padded batch); a slot
// >= num_blocks * block_tokens is skipped and sets error_flag to
// Status::slot_out_of_range.
//
// Quantized pools (kv_bits 8 or 4): k_pages / v_pages hold blocks of
// ref::KvQuantBlockLayout(block_tokens, kv_heads, head_dim, kv_bits); the
// rotated keys (f32, before any rounding to the dtype) and the values are
// quantized in this kernel, one warp per (token, head) row, to the bytes
// kv_quant.hpp's store writes; head_dim 64 or 128 (quantized_kv_supported).
//
// dtype f32 / bf16 / f16; head_dim even, up to 512. One block of 128 threads
// per token. 16-byte accesses when every pointer is 16-byte aligned and every
// row stride and head_dim / 2 are multiples of 16 bytes' worth of elements
// (a fused bf16 row of head_dim 64 or 128 always is); one element at a time
// otherwise, so any strided view works.
#pragma once

#include "cuda/dtype.hpp"

namespace hostrun::cuda {

struct RopeKvArgs {
  DType dtype = DType::bf16;
  int num_tokens = 0;
  int q_heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  void* q = nullptr;                // [num_tokens, q_row_stride], device; rotated in place
  std::int64_t q_row_stride = 0;    // elements; >= q_heads * head_dim
  const void* k = nullptr;          // [num_tokens, k_row_stride]
  std::int64_t k_row_stride = 0;    // elements; >= kv_heads * head_dim
  const void* v = nullptr;          // [num_tokens, v_row_stride]
  std::int64_t v_row_stride = 0;    // elements; >= kv_heads * head_dim
  const std::int32_t* positions = nullptr;     // [num_tokens]
  const float* inv_freq = nullptr;             // [head_dim / 2], device copy of RopeTable::inv_freq
  const std::int32_t* slot_mapping = nullptr;  // [num_tokens]
  void* k_pages = nullptr;
  void* v_pages = nullptr;
  std::int64_t num_slots = 0;  // num_blocks * block_tokens
  std::int32_t* error_flag = nullptr;
  int kv_bits = 0;       // 0: pools of `dtype`; 8 or 4: quantized blocks (above)
  int block_tokens = 0;  // quantized pools only
};

cudaError_t rope_and_write_kv(const RopeKvArgs& args, cudaStream_t stream);

}  // namespace hostrun::cuda
