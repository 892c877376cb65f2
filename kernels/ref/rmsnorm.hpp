// RMSNorm, as HF Llama's LlamaRMSNorm computes it (in f32):
//
//   y[r, i] = x[r, i] / sqrt(mean_j(x[r, j]^2) + eps) * weight[i]
//
// and the fused pre-norm residual step used between Llama sublayers:
//
//   residual[r, :] += x[r, :];   y[r, :] = rmsnorm(residual[r, :])
//
//   x, y, residual  [rows, hidden_size] f32
//   weight          [hidden_size]       f32 / bf16 / f16
#pragma once

#include <cstddef>

#include "ref/dtype.hpp"

namespace hostrun::ref {

// y may alias x (in-place normalisation).
void rmsnorm(const float* x, const void* weight, DType weight_dtype, std::size_t rows, std::size_t hidden_size,
             float eps, float* y);

// residual is updated in place; y receives the normalised sum. y may alias x.
void add_rmsnorm(float* residual, const float* x, const void* weight, DType weight_dtype, std::size_t rows,
                 std::size_t hidden_size, float eps, float* y);

}  // namespace hostrun::ref
