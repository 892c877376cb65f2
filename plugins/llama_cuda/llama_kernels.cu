#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "llama_kernels.hpp"

namespace hostrun::llama_cuda {

namespace {

constexpr int kMaxHalfDim = 128;  // head_dim up to 256

__device__ __forceinline__ float load_f32(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float load_f32(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void store_f32(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store_f32(__half* p, float v) { *p = __float2half_rn(v); }

// One block per token: cos/sin once into shared memory, then every (head, i)
// pair of the q and k heads (heads = q_heads + kv_heads, contiguous in the row).
template <typename T>
__global__ void rope_kernel(T* qkv, std::int64_t row_stride, int heads, int head_dim, const std::int32_t* positions,
                            const float* inv_freq) {
  __shared__ float cos_table[kMaxHalfDim];
  __shared__ float sin_table[kMaxHalfDim];
  const int t = blockIdx.x;
  const int half_dim = head_dim / 2;
  const float position = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half_dim; i += blockDim.x) {
    const float angle = __fmul_rn(position, inv_freq[i]);
    double s, c;
    sincos(static_cast<double>(angle), &s, &c);
    cos_table[i] = static_cast<float>(c);
    sin_table[i] = static_cast<float>(s);
  }
  __syncthreads();
  T* row = qkv + static_cast<std::int64_t>(t) * row_stride;
  for (int item = threadIdx.x; item < heads * half_dim; item += blockDim.x) {
    const int head = item / half_dim;
    const int i = item % half_dim;
    T* x = row + head * head_dim;
    const float first = load_f32(x + i);
    const float second = load_f32(x + i + half_dim);
    const float c = cos_table[i], s = sin_table[i];
    store_f32(x + i, __fsub_rn(__fmul_rn(first, c), __fmul_rn(second, s)));
    store_f32(x + i + half_dim, __fadd_rn(__fmul_rn(second, c), __fmul_rn(first, s)));
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

}  // namespace

cudaError_t rope_in_place(cuda::DType dtype, void* qkv, std::int64_t row_stride, int num_tokens, int heads,
                          int head_dim, const std::int32_t* positions, const float* inv_freq, cudaStream_t stream) {
  if (num_tokens == 0) return cudaSuccess;
  if (head_dim % 2 != 0 || head_dim / 2 > kMaxHalfDim) return cudaErrorInvalidValue;
  if (dtype == cuda::DType::bf16)
    rope_kernel<<<num_tokens, 128, 0, stream>>>(static_cast<__nv_bfloat16*>(qkv), row_stride, heads, head_dim,
                                                positions, inv_freq);
  else if (dtype == cuda::DType::f16)
    rope_kernel<<<num_tokens, 128, 0, stream>>>(static_cast<__half*>(qkv), row_stride, heads, head_dim, positions,
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

}  // namespace hostrun::llama_cuda
