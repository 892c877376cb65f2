#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/rmsnorm.hpp"

namespace hostrun::cuda {

namespace {

// Vectors each thread keeps in registers between the two passes. With up to
// 1024 threads that covers rows of 32768 16-bit values; longer rows re-read
// the excess in the second pass (correct, just not single-pass).
constexpr int cached_vectors = 4;

template <typename T, bool kAddResidual>
__global__ void __launch_bounds__(1024) rmsnorm_vec_kernel(T* __restrict__ residual, const T* x,
                                                           const T* __restrict__ weight, int hidden_size, float eps,
                                                           T* y) {
  constexpr int V = detail::vec_width<T>;
  __shared__ float scratch[32];
  detail::wait_for_previous_grid();  // a programmatic dependent (launch_dependent)
  detail::allow_next_grid_to_launch();  // the next linear layer may start streaming its weights
  const std::int64_t row_offset = static_cast<std::int64_t>(blockIdx.x) * hidden_size;
  const int vectors = hidden_size / V;
  const T* x_row = x + row_offset;
  T* res_row = kAddResidual ? residual + row_offset : nullptr;

  float cache[cached_vectors][V];
  float sum_sq = 0.0f;
  // Issue every cached load before using any, so several 16-byte requests per
  // thread are in flight.
#pragma unroll
  for (int k = 0; k < cached_vectors; ++k) {
    const int v = threadIdx.x + k * blockDim.x;
    if (v < vectors) {
      detail::load_vec(x_row + v * V, cache[k]);
      if constexpr (kAddResidual) {
        float r[V];
        detail::load_vec(res_row + v * V, r);
#pragma unroll
        for (int i = 0; i < V; ++i) cache[k][i] = detail::to_f32(detail::from_f32<T>(cache[k][i] + r[i]));
        detail::store_vec(res_row + v * V, cache[k]);
      }
    }
  }
#pragma unroll
  for (int k = 0; k < cached_vectors; ++k) {
    if (threadIdx.x + k * blockDim.x < vectors) {
#pragma unroll
      for (int i = 0; i < V; ++i) sum_sq += cache[k][i] * cache[k][i];
    }
  }
  for (int v = threadIdx.x + cached_vectors * blockDim.x; v < vectors; v += blockDim.x) {
    float values[V];
    detail::load_vec(x_row + v * V, values);
    if constexpr (kAddResidual) {
      float r[V];
      detail::load_vec(res_row + v * V, r);
#pragma unroll
      for (int i = 0; i < V; ++i) values[i] = detail::to_f32(detail::from_f32<T>(values[i] + r[i]));
      detail::store_vec(res_row + v * V, values);
    }
#pragma unroll
    for (int i = 0; i < V; ++i) sum_sq += values[i] * values[i];
  }
  const float inv_rms = rsqrtf(detail::block_sum(sum_sq, scratch) / static_cast<float>(hidden_size) + eps);

  T* y_row = y + row_offset;
#pragma unroll
  for (int k = 0; k < cached_vectors; ++k) {
    const int v = threadIdx.x + k * blockDim.x;
    if (v < vectors) {
      float w[V];
      detail::load_vec(weight + v * V, w);
#pragma unroll
      for (int i = 0; i < V; ++i) cache[k][i] = w[i] * (cache[k][i] * inv_rms);
      detail::store_vec(y_row + v * V, cache[k]);
    }
  }
  for (int v = threadIdx.x + cached_vectors * blockDim.x; v < vectors; v += blockDim.x) {
    float values[V];
    float w[V];
    // The residual row already holds the rounded sum (written above by this
    // same thread), which is what the first pass normalised.
    detail::load_vec((kAddResidual ? static_cast<const T*>(res_row) : x_row) + v * V, values);
    detail::load_vec(weight + v * V, w);
#pragma unroll
    for (int i = 0; i < V; ++i) values[i] = w[i] * (values[i] * inv_rms);
    detail::store_vec(y_row + v * V, values);
  }
}

// Any hidden size or alignment: element-wise, two passes over the row (the
// second mostly from L1/L2).
template <typename T, bool kAddResidual>
__global__ void __launch_bounds__(1024) rmsnorm_scalar_kernel(T* __restrict__ residual, const T* x,
                                                              const T* __restrict__ weight, int hidden_size,
                                                              float eps, T* y) {
  __shared__ float scratch[32];
  detail::wait_for_previous_grid();  // a programmatic dependent (launch_dependent)
  detail::allow_next_grid_to_launch();
  const std::int64_t row_offset = static_cast<std::int64_t>(blockIdx.x) * hidden_size;
  const T* x_row = x + row_offset;
  T* res_row = kAddResidual ? residual + row_offset : nullptr;
  float sum_sq = 0.0f;
  for (int i = threadIdx.x; i < hidden_size; i += blockDim.x) {
    float value = detail::to_f32(x_row[i]);
    if constexpr (kAddResidual) {
      const T rounded = detail::from_f32<T>(value + detail::to_f32(res_row[i]));
      res_row[i] = rounded;
      value = detail::to_f32(rounded);
    }
    sum_sq += value * value;
  }
  const float inv_rms = rsqrtf(detail::block_sum(sum_sq, scratch) / static_cast<float>(hidden_size) + eps);
  T* y_row = y + row_offset;
  for (int i = threadIdx.x; i < hidden_size; i += blockDim.x) {
    const float value = detail::to_f32(kAddResidual ? res_row[i] : x_row[i]);
    y_row[i] = detail::from_f32<T>(detail::to_f32(weight[i]) * (value * inv_rms));
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

template <typename T, bool kAddResidual>
cudaError_t launch(void* residual, const void* x, const void* weight, int rows, int hidden_size, float eps, void* y,
                   cudaStream_t stream) {
  constexpr int V = detail::vec_width<T>;
  const bool vectorized = hidden_size % V == 0 && aligned16(x) && aligned16(weight) && aligned16(y) &&
                          (!kAddResidual || aligned16(residual));
  auto* res = static_cast<T*>(residual);
  const auto* in = static_cast<const T*>(x);
  const auto* w = static_cast<const T*>(weight);
  auto* out = static_cast<T*>(y);
  if (vectorized) {
    // Enough threads that each holds at most cached_vectors vectors: 4096
    // bf16 values -> 128 threads x 4 x 16 B, four loads in flight per thread.
    const int vectors = hidden_size / V;
    const int needed = (vectors + cached_vectors - 1) / cached_vectors;
    const int threads = std::clamp((needed + 31) / 32 * 32, 32, 1024);
    return detail::launch_dependent(rmsnorm_vec_kernel<T, kAddResidual>, dim3(rows), dim3(threads), 0, stream, res, in,
                                    w, hidden_size, eps, out);
  } else {
    const int threads = std::clamp((hidden_size + 31) / 32 * 32, 32, 512);
    return detail::launch_dependent(rmsnorm_scalar_kernel<T, kAddResidual>, dim3(rows), dim3(threads), 0, stream, res,
                                    in, w, hidden_size, eps, out);
  }
}

template <bool kAddResidual>
cudaError_t dispatch(void* residual, const void* x, const void* weight, DType dtype, int rows, int hidden_size,
                     float eps, void* y, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (rows < 0 || hidden_size <= 0) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::f32: return launch<float, kAddResidual>(residual, x, weight, rows, hidden_size, eps, y, stream);
    case DType::bf16:
      return launch<__nv_bfloat16, kAddResidual>(residual, x, weight, rows, hidden_size, eps, y, stream);
    case DType::f16: return launch<__half, kAddResidual>(residual, x, weight, rows, hidden_size, eps, y, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t rmsnorm(const void* x, const void* weight, DType dtype, int rows, int hidden_size, float eps, void* y,
                    cudaStream_t stream) {
  return dispatch<false>(nullptr, x, weight, dtype, rows, hidden_size, eps, y, stream);
}

cudaError_t add_rmsnorm(void* residual, const void* x, const void* weight, DType dtype, int rows, int hidden_size,
                        float eps, void* y, cudaStream_t stream) {
  return dispatch<true>(residual, x, weight, dtype, rows, hidden_size, eps, y, stream);
}

}  // namespace hostrun::cuda
