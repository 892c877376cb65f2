// Attention without a mask or a cache (twin of ref/dense_attention.hpp): the
// vision encoders' softmax(scale q k^T) v, every query seeing every key of its
// (batch, head). q, k and v are f32 read through strides over (batch, head,
// token, dim); out is written through its strides as f32 or bf16. The
// products run on bf16 tensor cores (operands rounded to bf16 as they are
// gathered, f32 accumulation and softmax), FlashAttention-style: the scores
// never leave the chip.
#pragma once

#include <cstddef>

#include "cuda/dtype.hpp"
#include "ref/dense_attention.hpp"

namespace hostrun::cuda {

// Head sizes the kernel runs (1 to 64: ViT-B/L and CLIP's 64, padded with
// zeros below); callers fall back to unfused products for others.
bool dense_attention_supports(int head_dim);

// Device memory dense_attention needs beside its operands: q, k and v
// gathered into bf16 rows of 32 or 64 (the padded head size).
std::size_t dense_attention_workspace_bytes(const ref::DenseAttentionShape& shape);

// out_dtype: f32 or bf16. `workspace`: dense_attention_workspace_bytes(shape),
// 256-byte aligned. cudaErrorInvalidValue for an unsupported head_dim or
// dtype, empty lengths, or more than 2^31 gathered elements.
cudaError_t dense_attention(const ref::DenseAttentionShape& shape, const float* q, const ref::AttentionStrides& q_strides,
                            const float* k, const ref::AttentionStrides& k_strides, const float* v,
                            const ref::AttentionStrides& v_strides, void* out, DType out_dtype,
                            const ref::AttentionStrides& out_strides, void* workspace, cudaStream_t stream);

}  // namespace hostrun::cuda
