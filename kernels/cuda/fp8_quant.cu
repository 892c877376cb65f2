#include <cuda_fp8.h>

#include <cmath>

#include "cuda/common.cuh"
#include "cuda/fp8_quant.hpp"

namespace hostrun::cuda {

namespace {

constexpr int kThreads = 256;

// max over the block of `value` (all threads get it); `shared` holds a float a warp.
__device__ float block_max(float value, float* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  value = lane < kThreads / 32 ? shared[lane] : 0.0f;
  for (int offset = 16; offset > 0; offset >>= 1) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

__device__ __forceinline__ std::uint8_t to_e4m3(float v) {
  return static_cast<std::uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

// One block a row: the row's largest magnitude (a non-finite value marks it),
// then the codes. The row is read twice; at k <= 16K its bf16 bytes stay in L1/L2.
template <typename T>
__global__ void quantize_rows_kernel(const T* __restrict__ x, std::int64_t x_stride, int k,
                                     std::uint8_t* __restrict__ codes, float* __restrict__ scales, float static_scale) {
  __shared__ float shared[kThreads / 32];
  __shared__ float row_scale;
  const T* row = x + std::int64_t(blockIdx.x) * x_stride;
  std::uint8_t* out = codes + std::int64_t(blockIdx.x) * k;
  // Launched as a programmatic dependent (common.cuh): the GEMM after this
  // kernel may start streaming its weights now; x, and the codes' buffer
  // (which the GEMM before may still read), only after the wait.
  detail::allow_next_grid_to_launch();
  detail::wait_for_previous_grid();
  if (threadIdx.x == 0) row_scale = static_scale;
  if (!(static_scale > 0.0f && isfinite(static_scale))) {
    float amax = 0.0f, bad = 0.0f;
    for (int c = threadIdx.x; c < k; c += kThreads) {
      const float v = detail::to_f32(row[c]);
      if (isfinite(v)) amax = fmaxf(amax, fabsf(v)); else bad = 1.0f;
    }
    amax = block_max(amax, shared);
    __syncthreads();
    bad = block_max(bad, shared);
    if (threadIdx.x == 0) row_scale = bad > 0.0f ? __int_as_float(0x7fc00000) : amax > 0.0f ? amax / 448.0f : 1.0f;
  }
  __syncthreads();
  const float scale = row_scale;
  if (threadIdx.x == 0) scales[blockIdx.x] = scale;
  const float inv = 1.0f / (isnan(scale) ? 1.0f : scale);
  for (int c = threadIdx.x; c < k; c += kThreads) out[c] = to_e4m3(detail::to_f32(row[c]) * inv);
}

template <typename T>
__global__ void apply_scales_kernel(const float* __restrict__ sums, int m, int n, const float* __restrict__ x_scales,
                                    const float* __restrict__ w_scales, T* __restrict__ y, std::int64_t y_stride) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= std::int64_t(m) * n) return;
  const int row = int(i / n), col = int(i % n);
  const float x_scale = x_scales[row];
  y[std::int64_t(row) * y_stride + col] =
      detail::from_f32<T>(isnan(x_scale) ? x_scale : sums[i] * (x_scale * w_scales[col]));
}

// The same products for columns [gate | up] (n = 2 half), then silu(gate) * up: one thread an output.
template <typename T>
__global__ void apply_scales_silu_mul_kernel(const float* __restrict__ sums, int m, int half,
                                             const float* __restrict__ x_scales, const float* __restrict__ w_scales,
                                             T* __restrict__ y, std::int64_t y_stride) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= std::int64_t(m) * half) return;
  const int row = int(i / half), col = int(i % half);
  const float x_scale = x_scales[row];
  const float* row_sums = sums + std::int64_t(row) * 2 * half;
  const float gate = row_sums[col] * (x_scale * w_scales[col]);
  const float up = row_sums[half + col] * (x_scale * w_scales[half + col]);
  y[std::int64_t(row) * y_stride + col] = detail::from_f32<T>(isnan(x_scale) ? x_scale : detail::silu(gate) * up);
}

template <typename T>
cudaError_t launch(const void* x, std::int64_t x_stride, int m, int k, std::uint8_t* codes, float* scales,
                   float static_scale, cudaStream_t stream) {
  return detail::launch_dependent(quantize_rows_kernel<T>, dim3(m), dim3(kThreads), 0, stream, static_cast<const T*>(x),
                                  x_stride, k, codes, scales, static_scale);
}

}  // namespace

cudaError_t quantize_rows_e4m3(const void* x, DType dtype, std::int64_t x_stride, int m, int k, std::uint8_t* codes,
                               float* scales, float static_scale, cudaStream_t stream) {
  if (m < 0 || k < 0 || k > (1 << 30) || x_stride < k) return cudaErrorInvalidValue;
  if (m == 0 || k == 0) return cudaSuccess;
  switch (dtype) {
    case DType::bf16: return launch<__nv_bfloat16>(x, x_stride, m, k, codes, scales, static_scale, stream);
    case DType::f16: return launch<__half>(x, x_stride, m, k, codes, scales, static_scale, stream);
    case DType::f32: break;
  }
  return cudaErrorInvalidValue;
}

cudaError_t apply_fp8_scales(const float* sums, int m, int n, const float* x_scales, const float* w_scales, void* y,
                             DType y_dtype, std::int64_t y_stride, cudaStream_t stream) {
  if (m < 0 || n < 0 || y_stride < n) return cudaErrorInvalidValue;
  if (m == 0 || n == 0) return cudaSuccess;
  const std::int64_t total = std::int64_t(m) * n;
  const unsigned blocks = unsigned((total + 255) / 256);
  switch (y_dtype) {
    case DType::bf16:
      apply_scales_kernel<<<blocks, 256, 0, stream>>>(sums, m, n, x_scales, w_scales, static_cast<__nv_bfloat16*>(y),
                                                      y_stride);
      return cudaGetLastError();
    case DType::f16:
      apply_scales_kernel<<<blocks, 256, 0, stream>>>(sums, m, n, x_scales, w_scales, static_cast<__half*>(y), y_stride);
      return cudaGetLastError();
    case DType::f32: break;
  }
  return cudaErrorInvalidValue;
}

cudaError_t apply_fp8_scales_silu_mul(const float* sums, int m, int n, const float* x_scales, const float* w_scales,
                                      void* y, DType y_dtype, std::int64_t y_stride, cudaStream_t stream) {
  if (m < 0 || n < 0 || n % 2 != 0 || y_stride < n / 2) return cudaErrorInvalidValue;
  if (m == 0 || n == 0) return cudaSuccess;
  const int half = n / 2;
  const unsigned blocks = unsigned((std::int64_t(m) * half + 255) / 256);
  switch (y_dtype) {
    case DType::bf16:
      apply_scales_silu_mul_kernel<<<blocks, 256, 0, stream>>>(sums, m, half, x_scales, w_scales,
                                                               static_cast<__nv_bfloat16*>(y), y_stride);
      return cudaGetLastError();
    case DType::f16:
      apply_scales_silu_mul_kernel<<<blocks, 256, 0, stream>>>(sums, m, half, x_scales, w_scales,
                                                               static_cast<__half*>(y), y_stride);
      return cudaGetLastError();
    case DType::f32: break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace hostrun::cuda
