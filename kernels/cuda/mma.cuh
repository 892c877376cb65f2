// Internal to kernels/cuda: the tensor-core and async-copy instructions the
// mma.sync kernels use (attention, the W4A16 GEMM), as inline PTX wrappers.
// Fragment layouts are PTX ISA's "Matrix fragments for mma.m16n8k16".
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"

namespace hostrun::cuda::detail {

// 2^x on the SFU as it is: exp2f without --use_fast_math wraps it in a
// compare and two multiplies for results below 2^-126, which softmax
// probabilities and rescale factors (relative to a row maximum of 2^0) can
// lose to zero.
__device__ __forceinline__ float exp2_flush(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// 1/x on the SFU (within an ulp): a division is a dozen instructions and a
// slow path; for scale factors that error is far below f16 operands'.
__device__ __forceinline__ float rcp_approx(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// (x & mask) | bits in one LOP3: written as two operations, with two
// immediates, ptxas emits two.
__device__ __forceinline__ std::uint32_t mask_or(std::uint32_t x, std::uint32_t mask, std::uint32_t bits) {
  std::uint32_t y;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(y) : "r"(x), "r"(mask), "r"(bits));
  return y;
}

__device__ __forceinline__ std::uint32_t smem_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses registers: the first
// `src_bytes` (0..16) from gmem, the rest of the 16 zero-filled.
__device__ __forceinline__ void cp_async_16_prefix(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)), "l"(gmem),
               "r"(src_bytes));
}
// All 16 bytes; when !valid the destination is zero-filled and nothing is read.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  cp_async_16_prefix(smem, gmem, valid ? 16 : 0);
}
// 4-byte variant (cp.async.ca: .cg takes only 16).
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_address(smem)), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Shared-memory writes by ordinary stores and cp.async (the generic proxy)
// become visible to wgmma's reads (the async proxy) only after this fence,
// executed by the writing threads before the barrier that publishes them.
__device__ __forceinline__ void fence_shared_to_async_proxy() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem)));
}

// The transpose of an 8 x 8 matrix of 16-bit values held as an m8n8
// fragment (lane t: row t / 4, columns 2 (t % 4) and + 1): what an mma's
// accumulator block becomes when the next product wants it as B.
__device__ __forceinline__ std::uint32_t movmatrix_trans(std::uint32_t x) {
  std::uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// d += a * b, 16x8x16, f32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                          std::uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two f32 -> one register of two 16-bit values, `lo` in the low half (the
// lower column of an mma fragment).
template <typename T>
__device__ __forceinline__ std::uint32_t pack2(float lo, float hi) {
  union {
    T halves[2];
    std::uint32_t word;
  } u;
  u.halves[0] = from_f32<T>(lo);
  u.halves[1] = from_f32<T>(hi);
  return u.word;
}

}  // namespace hostrun::cuda::detail
