// awq_search.hpp. One warp holds one (row, group) of up to 128 weights, V a
// lane (lane l has channels l, l + 32, ...), so every rounding statistic is
// a warp reduction and the loads and stores are coalesced. No --use_fast_math
// (CMakeLists): IEEE division and no contraction keep ref's numbers.
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/awq_search.hpp"

namespace hostrun::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float warp_min(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The group's values rounded to nearest 4-bit and dequantized, as
// ref::awq_quantize_rtn + awq_dequantize: scale = f16(max(hi - lo, 1e-5) / 15),
// zero = clamp(rint(-lo / scale), 0, 15), q = clamp(rint(v / scale) + zero, 0, 15),
// (q - zero) * scale.
template <int V>
__device__ __forceinline__ void round_group(const float (&v)[V], float (&out)[V]) {
  float lo = v[0], hi = v[0];
#pragma unroll
  for (int j = 1; j < V; ++j) {
    lo = fminf(lo, v[j]);
    hi = fmaxf(hi, v[j]);
  }
  lo = warp_min(lo);
  hi = warp_max(hi);
  const float scale = __half2float(__float2half_rn(fmaxf(__fsub_rn(hi, lo), 1e-5f) / 15.0f));
  const float zero = fminf(fmaxf(rintf(-lo / scale), 0.0f), 15.0f);
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const float q = fminf(fmaxf(__fadd_rn(rintf(v[j] / scale), zero), 0.0f), 15.0f);
    out[j] = __fmul_rn(__fsub_rn(q, zero), scale);
  }
}

// A group narrower than the warp (32 lanes, V = 1 covers 32 channels) is
// never launched: group_size / 32 = V exactly.
template <int V>
__global__ void scaled_rounding_error_kernel(const float* rounded_from, const float* reference, int out_features,
                                             int in_features, const float* scales, float* error) {
  const int lane = threadIdx.x % 32;
  const int groups = in_features / (32 * V);
  const long long unit = (long long)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;  // (row, group)
  if (unit >= (long long)out_features * groups) return;
  const int o = int(unit / groups), g = int(unit % groups);
  const std::size_t base = std::size_t(o) * in_features + std::size_t(g) * 32 * V + lane;
  float v[V], r[V];
#pragma unroll
  for (int j = 0; j < V; ++j) v[j] = __fmul_rn(rounded_from[base + 32 * j], scales[g * 32 * V + lane + 32 * j]);
  round_group<V>(v, r);
#pragma unroll
  for (int j = 0; j < V; ++j)
    error[base + 32 * j] = __fsub_rn(r[j] / scales[g * 32 * V + lane + 32 * j], reference[base + 32 * j]);
}

template <int V>
__global__ void clip_candidate_errors_kernel(const float* weight, int out_features, int in_features, int group,
                                             int steps, int grid, float* error) {
  const int lane = threadIdx.x % 32;
  const long long unit = (long long)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;  // (row, candidate)
  if (unit >= (long long)out_features * steps) return;
  const int o = int(unit / steps), k = int(unit % steps);
  const float* w = weight + std::size_t(o) * in_features + std::size_t(group) * 32 * V + lane;
  float v[V], clamped[V], r[V];
  float m = 0.0f;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    v[j] = w[32 * j];
    m = fmaxf(m, fabsf(v[j]));
  }
  m = warp_max(m);
  const float c = __fmul_rn(m, float(1.0 - double(k) / grid));
#pragma unroll
  for (int j = 0; j < V; ++j) clamped[j] = fminf(fmaxf(v[j], -c), c);
  round_group<V>(clamped, r);
  float* e = error + std::size_t(unit) * (32 * V) + lane;
#pragma unroll
  for (int j = 0; j < V; ++j) e[32 * j] = __fsub_rn(r[j], v[j]);
}

__global__ void column_sum_squares_kernel(const float* y, std::int64_t rows, std::int64_t columns, double* sums) {
  const std::int64_t j = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= columns) return;
  double sum = 0.0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const double v = y[r * columns + j];
    sum = __dadd_rn(sum, __dmul_rn(v, v));  // unfused, as the host sums
  }
  sums[j] = sum;
}

int blocks_for(long long warps) { return int((warps + kWarpsPerBlock - 1) / kWarpsPerBlock); }

}  // namespace

cudaError_t awq_scaled_rounding_error(const float* rounded_from, const float* reference, int out_features,
                                      int in_features, int group_size, const float* scales, float* error,
                                      cudaStream_t stream) {
  if ((group_size != 32 && group_size != 64 && group_size != 128) || out_features <= 0 || in_features <= 0 ||
      in_features % group_size != 0)
    return cudaErrorInvalidValue;
  const long long warps = (long long)out_features * (in_features / group_size);
  const int blocks = blocks_for(warps), threads = kWarpsPerBlock * 32;
  if (group_size == 32)
    scaled_rounding_error_kernel<1><<<blocks, threads, 0, stream>>>(rounded_from, reference, out_features,
                                                                    in_features, scales, error);
  else if (group_size == 64)
    scaled_rounding_error_kernel<2><<<blocks, threads, 0, stream>>>(rounded_from, reference, out_features,
                                                                    in_features, scales, error);
  else
    scaled_rounding_error_kernel<4><<<blocks, threads, 0, stream>>>(rounded_from, reference, out_features,
                                                                    in_features, scales, error);
  return cudaGetLastError();
}

cudaError_t awq_clip_candidate_errors(const float* weight, int out_features, int in_features, int group_size,
                                      int group, int steps, int grid, float* error, cudaStream_t stream) {
  if ((group_size != 32 && group_size != 64 && group_size != 128) || out_features <= 0 || in_features <= 0 ||
      in_features % group_size != 0 || group < 0 || group >= in_features / group_size || steps <= 0 || grid <= 0)
    return cudaErrorInvalidValue;
  const long long warps = (long long)out_features * steps;
  const int blocks = blocks_for(warps), threads = kWarpsPerBlock * 32;
  if (group_size == 32)
    clip_candidate_errors_kernel<1><<<blocks, threads, 0, stream>>>(weight, out_features, in_features, group, steps,
                                                                    grid, error);
  else if (group_size == 64)
    clip_candidate_errors_kernel<2><<<blocks, threads, 0, stream>>>(weight, out_features, in_features, group, steps,
                                                                    grid, error);
  else
    clip_candidate_errors_kernel<4><<<blocks, threads, 0, stream>>>(weight, out_features, in_features, group, steps,
                                                                    grid, error);
  return cudaGetLastError();
}

cudaError_t column_sum_squares(const float* y, std::int64_t rows, std::int64_t columns, double* sums,
                               cudaStream_t stream) {
  if (rows < 0 || columns < 0) return cudaErrorInvalidValue;
  if (columns == 0) return cudaSuccess;
  column_sum_squares_kernel<<<int((columns + 255) / 256), 256, 0, stream>>>(y, rows, columns, sums);
  return cudaGetLastError();
}

}  // namespace hostrun::cuda
