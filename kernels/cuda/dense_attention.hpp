// Attention without a mask or a cache (twin of ref/dense_attention.hpp): the
// vision encoders' softmax(scale q k^T) v, every query seeing every key of its
// (batch, head). q, k and v are f32 or bf16 read through strides over (batch,
// head, token, dim); out is written through its strides as f32 or bf16. The
// products run on bf16 tensor cores (f32 operands rounded to bf16 as they are
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

// One of q, k, v: f32 or bf16 values through strides (elements).
struct DenseAttentionInput {
  const void* data = nullptr;
  DType dtype = DType::f32;
  ref::AttentionStrides strides;
};

// Whether the kernel reads `input` where it lies: bf16, each (batch, head,
// token) row of head_dim contiguous, 32 or 64 values, starting on 16 bytes.
// Other operands are first gathered into bf16 rows of the workspace.
bool dense_attention_reads_in_place(const ref::DenseAttentionShape& shape, const DenseAttentionInput& input);

// Device memory dense_attention needs beside its operands: room to gather q,
// k and v into bf16 rows of 32 or 64 (the padded head size).
std::size_t dense_attention_workspace_bytes(const ref::DenseAttentionShape& shape);

// Which tensor-core step attends: mma.sync runs everywhere; wgmma (Hopper's
// warpgroup MMA) on compute capability 9.0 with the sm_90a objects built,
// for heads of 33 to 64. `automatic` takes wgmma where it can run.
enum class DenseAttentionKernel { automatic, mma_sync, wgmma };

// Whether `kernel` can attend heads of `head_dim` on the current device.
bool dense_attention_kernel_available(DenseAttentionKernel kernel, int head_dim);

// out_dtype: f32 or bf16. `workspace`: dense_attention_workspace_bytes(shape),
// 256-byte aligned. cudaErrorInvalidValue for an unsupported head_dim or
// dtype, empty lengths, or more than 2^31 gathered elements;
// cudaErrorNotSupported for a kernel that is not available.
cudaError_t dense_attention(const ref::DenseAttentionShape& shape, const DenseAttentionInput& q,
                            const DenseAttentionInput& k, const DenseAttentionInput& v, void* out, DType out_dtype,
                            const ref::AttentionStrides& out_strides, void* workspace, cudaStream_t stream,
                            DenseAttentionKernel kernel = DenseAttentionKernel::automatic);

}  // namespace hostrun::cuda
