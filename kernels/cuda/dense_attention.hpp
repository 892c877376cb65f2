// Attention without a mask or a cache (twin of ref/dense_attention.hpp): the
// vision encoders' softmax(scale q k^T) v, every query seeing every key of its
// (batch, head). q, k and v are f32 or bf16 (all three alike) read through
// strides over (batch, head, token, dim); out is written through its strides
// as f32 or bf16. The products run on bf16 tensor cores (f32 operands rounded
// to bf16 as they are gathered, f32 accumulation and softmax),
// FlashAttention-style: the scores never leave the chip.
#pragma once

#include <cstddef>

#include "cuda/dtype.hpp"
#include "ref/dense_attention.hpp"

namespace hostrun::cuda {

// Head sizes the kernel runs (1 to 64: ViT-B/L and CLIP's 64, padded with
// zeros below); callers fall back to unfused products for others.
bool dense_attention_supports(int head_dim);

// The operands as dense_attention reads them: bf16 (all three) with the
// head dimension contiguous, exactly 32 or 64 wide, and every row 16-byte
// aligned are read where they are (the tiles copied straight from them);
// anything else is first gathered into bf16 rows of 32 or 64 (the padded
// head size) in the workspace.
struct DenseAttentionOperands {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  ref::AttentionStrides q_strides, k_strides, v_strides;
  DType dtype = DType::f32;  // f32 or bf16
};
// Whether `operands` are read in place (pointers 16-byte aligned assumed:
// the caller's are, e.g. arena offsets), so no workspace is needed.
bool dense_attention_reads_in_place(const ref::DenseAttentionShape& shape, const DenseAttentionOperands& operands);
// Device memory dense_attention needs beside its operands: 0 when it reads
// them in place, else room for the gathered rows.
std::size_t dense_attention_workspace_bytes(const ref::DenseAttentionShape& shape,
                                            const DenseAttentionOperands& operands);

// out_dtype: f32 or bf16. `workspace`: dense_attention_workspace_bytes(...)
// bytes, 256-byte aligned (may be null when that is 0). cudaErrorInvalidValue
// for an unsupported head_dim or dtype, empty lengths, a missing workspace,
// or more than 2^31 gathered elements.
cudaError_t dense_attention(const ref::DenseAttentionShape& shape, const DenseAttentionOperands& operands, void* out,
                            DType out_dtype, const ref::AttentionStrides& out_strides, void* workspace,
                            cudaStream_t stream);

}  // namespace hostrun::cuda
