// The few element-wise ops llama_cuda needs beyond kernels/cuda.
//
// rope_in_place: HF rotate_half RoPE on the q and k heads of the fused QKV
//   rows, in place (twin of ref::apply_rope: f32 angle = f32(position) *
//   inv_freq[i], cos/sin of it in double rounded to f32, unfused f32 rotate).
//   Only for a KV policy without write_rotary (KvFormat::rotary_write; kv_cuda's
//   runs kernels/cuda's rope_kv instead): the model rotates first and the
//   policy's write copies (docs/cuda.md, "RoPE with the KV write").
// gather_rows: dst[r] = src[rows[r]] (rows of `row_elements` 16-bit values).
// suppress_ids: logits[row * stride + id] = -inf for each (row, id) pair.
// take_previous_samples: ids[t] = previous_sampled[previous_index[t]] where
//   previous_index[t] >= 0 (overlapped steps: decode tokens still on the GPU).
// widen_to_f32: dst[i] = f32(src[i]) for `count` bf16 / f16 values (exact);
//   calibration reads activations back in f32 (CalibrationObserver).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/dtype.hpp"

namespace hostrun::llama_cuda {

cudaError_t rope_in_place(cuda::DType dtype, void* qkv, std::int64_t row_stride, int num_tokens, int heads,
                          int head_dim, const std::int32_t* positions, const float* inv_freq, cudaStream_t stream);

cudaError_t gather_rows(const void* src, int row_elements, const std::int32_t* rows, int count, void* dst,
                        cudaStream_t stream);

cudaError_t suppress_ids(float* logits, std::int64_t row_stride, const std::int32_t* pairs, int count,
                         cudaStream_t stream);

cudaError_t take_previous_samples(std::int32_t* ids, const std::int32_t* previous_index,
                                  const std::int32_t* previous_sampled, int count, cudaStream_t stream);

cudaError_t widen_to_f32(cuda::DType dtype, const void* src, std::int64_t count, float* dst, cudaStream_t stream);

}  // namespace hostrun::llama_cuda
