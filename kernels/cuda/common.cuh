// Device helpers shared by the CUDA ops: dtype conversion, 128-bit vector
// loads/stores, block reductions, the error flag, programmatic dependent
// launch, and two host-side launch helpers. Internal to kernels/cuda.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "cuda/dtype.hpp"

namespace hostrun::cuda::detail {

// silu(g) = g / (1 + e^-g) with the exact expf and IEEE division, not
// __expf/__fdividef: for g < -88 exp(-g) is inf and g / inf = -0 (the right
// limit), where __fdividef would give NaN. Every SiLU-and-multiply (silu_mul,
// small_gemm's, awq_gemm's and the FP8 kernels' epilogues) uses this one.
__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// f32 <-> storage type. The _rn conversions round to nearest even like
// ref::f32_to_bf16 / f32_to_f16, so a kernel that computes the same f32 value
// stores the same bits.
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}

// Elements per 16-byte access.
template <typename T>
inline constexpr int vec_width = 16 / static_cast<int>(sizeof(T));

// One 16-byte load, unpacked to f32. p must be 16-byte aligned.
template <typename T>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[vec_width<T>]) {
  union {
    uint4 raw;
    T elements[vec_width<T>];
  } u;
  u.raw = *reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int i = 0; i < vec_width<T>; ++i) out[i] = to_f32(u.elements[i]);
}

template <typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[vec_width<T>]) {
  union {
    uint4 raw;
    T elements[vec_width<T>];
  } u;
#pragma unroll
  for (int i = 0; i < vec_width<T>; ++i) u.elements[i] = from_f32<T>(in[i]);
  *reinterpret_cast<uint4*>(p) = u.raw;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds >= 32
// floats. Callable repeatedly (the leading barrier protects scratch reuse).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(total);
}

// Programmatic dependent launch (sm_90+). A kernel launched with the
// programmatic-serialization attribute may start while the kernel before it
// in the stream still runs; it must call wait_for_previous_grid() before it
// reads anything that kernel (or earlier work) writes: the wait returns once
// the previous grid has finished and its writes are visible. A kernel calls
// allow_next_grid_to_launch() to let such a dependent start early (it only
// lets it be scheduled: the dependent's wait still sees all of this grid's
// writes). Both are no-ops below sm_90 and for ordinary launches.
__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_next_grid_to_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Records the first problem of a launch sequence; later ones keep it.
__device__ __forceinline__ void raise_error(int32_t* error_flag, Status status) {
  if (error_flag != nullptr) atomicCAS(error_flag, 0, static_cast<int32_t>(status));
}

// ---- launch helpers (host) ----------------------------------------------

// Whether this device takes programmatic dependent launches (sm_90+).
inline bool device_has_pdl() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return major >= 9;
}

// kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent
// of the kernel before it in the stream (an ordinary launch below sm_90). The
// kernel must call wait_for_previous_grid() in every CTA before it reads or
// writes memory that earlier work in the stream touches, and before any early
// return: its grid's completion then implies its predecessors', which the
// next dependent's wait relies on.
template <typename... Params, typename... Args>
cudaError_t launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream,
                             Args&&... args) {
  static const bool pdl = device_has_pdl();
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// Raises a kernel's dynamic shared-memory limit once per device (the call
// costs microseconds of host time, too much for every decode launch).
template <auto kKernel>
cudaError_t allow_dynamic_smem(int bytes) {
  static std::atomic<std::uint64_t> done_devices{0};
  int device = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const std::uint64_t bit = device < 64 ? (1ull << device) : 0;
  if (bit != 0 && (done_devices.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess) done_devices.fetch_or(bit, std::memory_order_acq_rel);
  return e;
}

}  // namespace hostrun::cuda::detail
