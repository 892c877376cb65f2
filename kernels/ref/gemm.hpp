// GEMM in HF Linear layout:
//
//   y[m, n] = sum_k x[m, k] * weight[n, k]        (y = x @ weight^T)
//
//   x       [m, k] f32, row-major
//   weight  [n, k] f32 / bf16 / f16, row-major (as stored in safetensors)
//   y       [m, n] f32
//
// Accumulation is f32. The order of the additions is blocked (see gemm.cpp),
// so results differ from a naive left-to-right sum by normal f32 rounding.
#pragma once

#include <cstddef>

#include "ref/dtype.hpp"

namespace hostrun::ref {

// y must not alias x or weight.
void gemm(const float* x, const void* weight, DType weight_dtype, std::size_t m, std::size_t n, std::size_t k,
          float* y);

}  // namespace hostrun::ref
