// Attention without a mask or a cache (twin of ref/dense_attention.hpp): the
// vision encoders' softmax(scale q k^T) v, every query seeing every key of its
// (batch, head). q, k, v and out are f32, read and written through strides
// over (batch, head, token, dim); the products run on bf16 tensor cores
// (operands rounded to bf16 as they are loaded, f32 accumulation and softmax),
// FlashAttention-style: the scores never leave the chip.
#pragma once

#include "cuda/dtype.hpp"
#include "ref/dense_attention.hpp"

namespace hostrun::cuda {

// Head sizes the kernel runs (1 to 64: ViT-B/L and CLIP's 64, padded with
// zeros below); callers fall back to unfused products for others.
bool dense_attention_supports(int head_dim);

// cudaErrorInvalidValue for an unsupported head_dim or empty lengths.
cudaError_t dense_attention(const ref::DenseAttentionShape& shape, const float* q, const ref::AttentionStrides& q_strides,
                            const float* k, const ref::AttentionStrides& k_strides, const float* v,
                            const ref::AttentionStrides& v_strides, float* out, const ref::AttentionStrides& out_strides,
                            cudaStream_t stream);

}  // namespace hostrun::cuda
