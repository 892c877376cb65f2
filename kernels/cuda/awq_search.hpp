// Device twins of the element-wise parts of ref/awq_search.hpp, for an AWQ
// search that runs on the GPU (plugins/awq's CUDA search multiplies with
// cuBLAS in f32 and walks the same grids as ref). All f32, row-major,
// device pointers; each returns the launch's error.
//
// awq_scaled_rounding_error: error[o, i] = RTN(rounded_from[o, :] * s)[i] / s[i]
//   - reference[o, i], RTN per group of group_size input channels as
//   ref::awq_quantize_rtn rounds (f16 scale, zero point, codes 0..15): with
//   reference = rounded_from it is ref::awq_fake_quantize_scaled(W, s) - W
//   bit for bit; with s = 1 and rounded_from a clipped copy of W, the
//   clipped layer's rounding error against W.
// awq_clip_candidate_errors: for input-channel group `group` of every row o
//   and each k < steps, error[(o * steps + k) * group_size + i] is
//   ref::awq_clip_candidate's error for that row's group and k, bit for bit.
// column_sum_squares: sums[j] = sum over r = 0.. of double(y[r, j])^2, rows in
//   order.
//
// group_size is 32, 64 or 128 and divides in_features; anything else is
// cudaErrorInvalidValue.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace hostrun::cuda {

cudaError_t awq_scaled_rounding_error(const float* rounded_from, const float* reference, int out_features,
                                      int in_features, int group_size, const float* scales, float* error,
                                      cudaStream_t stream);

cudaError_t awq_clip_candidate_errors(const float* weight, int out_features, int in_features, int group_size,
                                      int group, int steps, int grid, float* error, cudaStream_t stream);

cudaError_t column_sum_squares(const float* y, std::int64_t rows, std::int64_t columns, double* sums,
                               cudaStream_t stream);

}  // namespace hostrun::cuda
