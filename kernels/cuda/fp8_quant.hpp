// Per-row FP8 (e4m3) quantization of activations, the CUDA twin of
// ref::quantize_rows_e4m3 (ref/fp8_linear.hpp): for each row of x [m, k]
// (bf16 or f16, rows x_stride elements apart)
//
//   scales[i] = static_scale                         when static_scale > 0
//             = max_k |x[i, k]| / 448                otherwise (1 for a row of
//                                                     zeros, NaN when the row
//                                                     holds NaN or +-inf)
//   codes[i * k + c] = e4m3(x[i, c] * (1 / scales[i]))  nearest-even, saturating
//                                                     (a NaN scale counts as 1)
//
// with the same IEEE f32 operations as the reference, so the codes and scales
// are equal to ref's for the same input, byte for byte (a NaN's sign bit
// aside). codes are contiguous [m, k], ready for an FP8 GEMM.
//
// Launched as a programmatic dependent of the kernel before it (sm_90), and
// lets the kernel after it (fp8_small_gemm) start its weight loads early.
#pragma once

#include <cstdint>

#include "cuda/dtype.hpp"

namespace hostrun::cuda {

// cudaErrorInvalidValue for f32 x, negative sizes or k > 2^30.
cudaError_t quantize_rows_e4m3(const void* x, DType dtype, std::int64_t x_stride, int m, int k, std::uint8_t* codes,
                               float* scales, float static_scale, cudaStream_t stream);

// The scales of an FP8 product applied to its raw sums (an FP8 GEMM run with
// unit scales, f32 out), as ref::fp8_linear applies them:
//   y[i, j] = sums[i, j] * (x_scales[i] * w_scales[j])      (NaN when x_scales[i] is)
// sums [m, n] contiguous f32; y [m, n] bf16 or f16, rows y_stride elements apart.
cudaError_t apply_fp8_scales(const float* sums, int m, int n, const float* x_scales, const float* w_scales, void* y,
                             DType y_dtype, std::int64_t y_stride, cudaStream_t stream);

// The same with the SDK's SiLU-and-multiply epilogue: sums' columns are
// [gate | up] (n even) and y [m, n / 2] receives silu(gate) * up of the
// scaled values (exact expf and IEEE division, as silu_mul.cu), saving the
// model a kernel and y's round trip.
cudaError_t apply_fp8_scales_silu_mul(const float* sums, int m, int n, const float* x_scales, const float* w_scales,
                                      void* y, DType y_dtype, std::int64_t y_stride, cudaStream_t stream);

}  // namespace hostrun::cuda
