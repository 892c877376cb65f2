#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/silu_mul.hpp"

namespace hostrun::cuda {

namespace {

__device__ __forceinline__ float silu_times(float g, float u) { return detail::silu(g) * u; }

// grid.x = token (2^31 of them), grid.y * blockDim.x covers the row.
template <typename T>
__global__ void silu_mul_vec_kernel(const T* __restrict__ gate_up, int intermediate_size, T* __restrict__ out) {
  constexpr int V = detail::vec_width<T>;
  const int v = blockIdx.y * blockDim.x + threadIdx.x;
  if (v * V >= intermediate_size) return;
  const std::int64_t t = blockIdx.x;
  const T* gate = gate_up + t * 2 * intermediate_size + v * V;
  float g[V], u[V], o[V];
  detail::load_vec(gate, g);
  detail::load_vec(gate + intermediate_size, u);
#pragma unroll
  for (int i = 0; i < V; ++i) o[i] = silu_times(g[i], u[i]);
  detail::store_vec(out + t * intermediate_size + v * V, o);
}

template <typename T>
__global__ void silu_mul_scalar_kernel(const T* __restrict__ gate_up, int intermediate_size, T* __restrict__ out) {
  const int i = blockIdx.y * blockDim.x + threadIdx.x;
  if (i >= intermediate_size) return;
  const std::int64_t t = blockIdx.x;
  const T* gate = gate_up + t * 2 * intermediate_size;
  out[t * intermediate_size + i] =
      detail::from_f32<T>(silu_times(detail::to_f32(gate[i]), detail::to_f32(gate[i + intermediate_size])));
}

template <typename T>
cudaError_t launch(const void* gate_up, int num_tokens, int intermediate_size, void* out, cudaStream_t stream) {
  constexpr int V = detail::vec_width<T>;
  const bool vectorized = intermediate_size % V == 0 && reinterpret_cast<std::uintptr_t>(gate_up) % 16 == 0 &&
                          reinterpret_cast<std::uintptr_t>(out) % 16 == 0;
  const int threads = 256;
  const int items = vectorized ? intermediate_size / V : intermediate_size;
  const dim3 grid(num_tokens, (items + threads - 1) / threads);
  if (vectorized) {
    silu_mul_vec_kernel<T><<<grid, threads, 0, stream>>>(static_cast<const T*>(gate_up), intermediate_size,
                                                         static_cast<T*>(out));
  } else {
    silu_mul_scalar_kernel<T><<<grid, threads, 0, stream>>>(static_cast<const T*>(gate_up), intermediate_size,
                                                            static_cast<T*>(out));
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t silu_and_mul(const void* gate_up, DType dtype, int num_tokens, int intermediate_size, void* out,
                         cudaStream_t stream) {
  if (num_tokens == 0 || intermediate_size == 0) return cudaSuccess;
  if (num_tokens < 0 || intermediate_size < 0) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::f32: return launch<float>(gate_up, num_tokens, intermediate_size, out, stream);
    case DType::bf16: return launch<__nv_bfloat16>(gate_up, num_tokens, intermediate_size, out, stream);
    case DType::f16: return launch<__half>(gate_up, num_tokens, intermediate_size, out, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace hostrun::cuda
