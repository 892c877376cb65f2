// Quantized KV pages on the GPU (twins: ref/kv_quant.hpp, ref/write_kv.hpp,
// ref/paged_kv.hpp's load_kv_head): the quantizing plain store and a
// dequantizing gather.
//
//   quantize_and_write_kv: k_pages[slot_mapping[t], g] = quantize(keys[t, g]),
//                          and the same for values; one (scale, zero) per
//                          token and KV head, in the block (ref::KvQuantBlockLayout).
//   dequantize_kv_slots:   out[i, g, :] = dequantize(pages[slots[i], g]) as
//                          f32, through the same device function the
//                          attention kernels read tiles with (so tests and
//                          tools see exactly what attention sees).
//
// The stored bytes equal ref::store_kv_head's for the same input values, and
// the dequantized floats equal ref::load_kv_head's. keys/values are rows of
// kv_heads * head_dim elements (f32, bf16 or f16) with row strides in
// elements; head_dim 64 or 128; bits 8 or 4. A slot < 0 is padding and
// skipped; a slot >= num_slots is skipped and sets error_flag to
// Status::slot_out_of_range. RoPE'd keys go through rope_kv.hpp, which
// quantizes in the same kernel. int4 keys are rotated before they are
// quantized, as ref's write_kv does (ref/kv_quant.hpp, kv_keys_rotated), and
// rotate_kv_rows gives attention over them the queries rotated alike.
#pragma once

#include <cstdint>

#include "cuda/dtype.hpp"

namespace hostrun::cuda {

struct QuantizedKvPages {
  void* k_pages = nullptr;  // [num_blocks] blocks of ref::KvQuantBlockLayout
  void* v_pages = nullptr;
  int bits = 8;             // 8 or 4
  int block_tokens = 0;
  int kv_heads = 0;
  int head_dim = 0;         // 64 or 128
  std::int64_t num_slots = 0;  // num_blocks * block_tokens
};

struct KvQuantWriteArgs {
  QuantizedKvPages pages;
  DType dtype = DType::bf16;  // of keys and values
  int num_tokens = 0;
  const void* keys = nullptr;
  std::int64_t keys_row_stride = 0;    // elements, >= kv_heads * head_dim
  const void* values = nullptr;
  std::int64_t values_row_stride = 0;  // elements
  const std::int32_t* slot_mapping = nullptr;  // [num_tokens]
  std::int32_t* error_flag = nullptr;          // may be null
};

cudaError_t quantize_and_write_kv(const KvQuantWriteArgs& args, cudaStream_t stream);

// out: [num_slots_to_read, kv_heads, head_dim] f32; `pool` is pages.k_pages
// or pages.v_pages. Slots must be in range (this is a test and inspection
// path; nothing is checked on the device).
cudaError_t dequantize_kv_slots(const QuantizedKvPages& pages, const void* pool, const std::int32_t* slots,
                                int num_slots_to_read, float* out, cudaStream_t stream);

// out[t, h, :] = ref::rotate_kv_row(x[t, h, :]) for tokens x heads rows of
// head_dim (64 or 128) values, x's rows x_row_stride elements apart, out
// packed [tokens, heads, head_dim]; read and written in `dtype`, rotated in
// f32 with ref's operations (so f32 rows equal ref's bit for bit).
cudaError_t rotate_kv_rows(const void* x, DType dtype, std::int64_t x_row_stride, int tokens, int heads, int head_dim,
                           void* out, cudaStream_t stream);

// Whether the quantized kernels (store, rope store, attention) take this shape.
bool quantized_kv_supported(int bits, int head_dim, int block_tokens, int kv_heads);

}  // namespace hostrun::cuda
