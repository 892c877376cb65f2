// RMSNorm on the GPU (twin of ref/rmsnorm.hpp), HF LlamaRMSNorm in f32:
//
//   y[r, i] = x[r, i] * rsqrt(mean_j(x[r, j]^2) + eps) * weight[i]
//
// and the fused pre-norm residual step between Llama sublayers:
//
//   residual[r, :] = residual[r, :] + x[r, :]      (rounded to the dtype, as a
//   y[r, :] = rmsnorm(residual[r, :])               bf16 model stores it)
//
//   x, y, residual  [rows, hidden_size]  f32 / bf16 / f16 (one dtype for all)
//   weight          [hidden_size]        same dtype
//
// One block per row; 16-byte loads whenever hidden_size is a multiple of 8
// (16-bit) / 4 (f32) and the pointers are 16-byte aligned, the row kept in
// registers between the sum of squares and the scaling, so each input is read
// once. f32 math throughout. y may alias x.
#pragma once

#include "cuda/dtype.hpp"

namespace hostrun::cuda {

cudaError_t rmsnorm(const void* x, const void* weight, DType dtype, int rows, int hidden_size, float eps, void* y,
                    cudaStream_t stream);

cudaError_t add_rmsnorm(void* residual, const void* x, const void* weight, DType dtype, int rows, int hidden_size,
                        float eps, void* y, cudaStream_t stream);

}  // namespace hostrun::cuda
