#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "llama_kernels.hpp"

namespace hostrun::llama_cuda {

namespace {

constexpr int kMaxHalfDim = 128;  // head_dim up to 256

__device__ __forceinline__ float load_f32(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float load_f32(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void store_f32(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store_f32(__half* p, float v) { *p = __float2half_rn(v); }

// grid (token, group of kHeadsPerBlock heads), one thread per rotation
// frequency i: cos/sin once (double, as kernels/ref does, on the f32-rounded
// angle), then pair (i, i + half_dim) of each head of the group (heads =
// q_heads + kv_heads, contiguous in the row), loads issued before use. One
// block per token walked ~20 dependent load/store rounds per thread at batch
// 1; one block per head recomputed cos/sin 40 times per token at prefill.
constexpr int kHeadsPerBlock = 8;

template <typename T>
__global__ void rope_kernel(T* qkv, std::int64_t row_stride, int heads, int head_dim, const std::int32_t* positions,
                            const float* inv_freq) {
  const int t = blockIdx.x;
  const int first_head = blockIdx.y * kHeadsPerBlock;
  const int half_dim = head_dim / 2;
  const float position = static_cast<float>(positions[t]);
  T* row = qkv + static_cast<std::int64_t>(t) * row_stride;
  for (int i = threadIdx.x; i < half_dim; i += blockDim.x) {
    const float angle = __fmul_rn(position, inv_freq[i]);
    double sd, cd;
    sincos(static_cast<double>(angle), &sd, &cd);
    const float c = static_cast<float>(cd), s = static_cast<float>(sd);
    float first[kHeadsPerBlock], second[kHeadsPerBlock];
#pragma unroll
    for (int h = 0; h < kHeadsPerBlock; ++h) {
      if (first_head + h < heads) {
        const T* x = row + static_cast<std::int64_t>(first_head + h) * head_dim;
        first[h] = load_f32(x + i);
        second[h] = load_f32(x + i + half_dim);
      }
    }
#pragma unroll
    for (int h = 0; h < kHeadsPerBlock; ++h) {
      if (first_head + h < heads) {
        T* x = row + static_cast<std::int64_t>(first_head + h) * head_dim;
        store_f32(x + i, __fsub_rn(__fmul_rn(first[h], c), __fmul_rn(second[h], s)));
        store_f32(x + i + half_dim, __fadd_rn(__fmul_rn(second[h], c), __fmul_rn(first[h], s)));
      }
    }
  }
}

__global__ void gather_kernel(const uint4* src, int row_words, const std::int32_t* rows, uint4* dst) {
  const int r = blockIdx.x;
  const uint4* from = src + static_cast<std::int64_t>(rows[r]) * row_words;
  uint4* to = dst + static_cast<std::int64_t>(r) * row_words;
  for (int i = threadIdx.x; i < row_words; i += blockDim.x) to[i] = from[i];
}

__global__ void gather_kernel_u16(const unsigned short* src, int row_elements, const std::int32_t* rows,
                                  unsigned short* dst) {
  const int r = blockIdx.x;
  const unsigned short* from = src + static_cast<std::int64_t>(rows[r]) * row_elements;
  unsigned short* to = dst + static_cast<std::int64_t>(r) * row_elements;
  for (int i = threadIdx.x; i < row_elements; i += blockDim.x) to[i] = from[i];
}

__global__ void suppress_kernel(float* logits, std::int64_t row_stride, const std::int32_t* pairs, int count) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) logits[static_cast<std::int64_t>(pairs[2 * i]) * row_stride + pairs[2 * i + 1]] = -INFINITY;
}

__global__ void take_previous_kernel(std::int32_t* ids, const std::int32_t* previous_index,
                                     const std::int32_t* previous_sampled, int count) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t < count && previous_index[t] >= 0) ids[t] = previous_sampled[previous_index[t]];
}

}  // namespace

cudaError_t rope_in_place(cuda::DType dtype, void* qkv, std::int64_t row_stride, int num_tokens, int heads,
                          int head_dim, const std::int32_t* positions, const float* inv_freq, cudaStream_t stream) {
  if (num_tokens == 0) return cudaSuccess;
  if (head_dim % 2 != 0 || head_dim / 2 > kMaxHalfDim) return cudaErrorInvalidValue;
  if (heads <= 0) return cudaErrorInvalidValue;
  const dim3 grid(num_tokens, (heads + kHeadsPerBlock - 1) / kHeadsPerBlock);
  const int threads = (head_dim / 2 + 31) / 32 * 32;
  if (dtype == cuda::DType::bf16)
    rope_kernel<<<grid, threads, 0, stream>>>(static_cast<__nv_bfloat16*>(qkv), row_stride, heads, head_dim, positions,
                                              inv_freq);
  else if (dtype == cuda::DType::f16)
    rope_kernel<<<grid, threads, 0, stream>>>(static_cast<__half*>(qkv), row_stride, heads, head_dim, positions,
                                              inv_freq);
  else
    return cudaErrorInvalidValue;
  return cudaGetLastError();
}

cudaError_t gather_rows(const void* src, int row_elements, const std::int32_t* rows, int count, void* dst,
                        cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (row_elements % 8 == 0 && reinterpret_cast<std::uintptr_t>(src) % 16 == 0 &&
      reinterpret_cast<std::uintptr_t>(dst) % 16 == 0)
    gather_kernel<<<count, 128, 0, stream>>>(static_cast<const uint4*>(src), row_elements / 8, rows,
                                             static_cast<uint4*>(dst));
  else
    gather_kernel_u16<<<count, 128, 0, stream>>>(static_cast<const unsigned short*>(src), row_elements, rows,
                                                 static_cast<unsigned short*>(dst));
  return cudaGetLastError();
}

cudaError_t suppress_ids(float* logits, std::int64_t row_stride, const std::int32_t* pairs, int count,
                         cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  suppress_kernel<<<(count + 255) / 256, 256, 0, stream>>>(logits, row_stride, pairs, count);
  return cudaGetLastError();
}

cudaError_t take_previous_samples(std::int32_t* ids, const std::int32_t* previous_index,
                                  const std::int32_t* previous_sampled, int count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  take_previous_kernel<<<(count + 255) / 256, 256, 0, stream>>>(ids, previous_index, previous_sampled, count);
  return cudaGetLastError();
}

namespace {

template <typename T>
__global__ void widen_kernel(const T* src, std::int64_t count, float* dst) {
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += std::int64_t(gridDim.x) * blockDim.x)
    dst[i] = float(src[i]);
}

}  // namespace

cudaError_t widen_to_f32(cuda::DType dtype, const void* src, std::int64_t count, float* dst, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const int blocks = int(std::min<std::int64_t>((count + 255) / 256, 4096));
  if (dtype == cuda::DType::bf16)
    widen_kernel<<<blocks, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(src), count, dst);
  else if (dtype == cuda::DType::f16)
    widen_kernel<<<blocks, 256, 0, stream>>>(static_cast<const __half*>(src), count, dst);
  else
    return cudaErrorInvalidValue;
  return cudaGetLastError();
}

}  // namespace hostrun::llama_cuda
