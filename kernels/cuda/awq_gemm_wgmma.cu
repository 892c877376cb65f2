// W4A16 GEMM for many rows on Hopper: wgmma (sm_90a) with the dequantized
// weights as the A operand in registers and the activations as B in shared
// memory. awq_gemm.hpp (awq_gemm_large) says what it computes and when it is
// used; this comment says how.
//
// Roles. y^T = W x^T: the wgmma's M dimension is the output columns n (64 a
// warpgroup tile), its N dimension the rows of x (64 or 128 a CTA), its K the
// input channels. A (W) comes from registers, so each lane dequantizes the
// codes awq_repack laid out for exactly this fragment (lane l of column tile
// nt holds column nt*8 + l/4), with no shared-memory round trip for the
// weights; B (x) is read by the tensor cores from shared memory.
//
// The k permutation. awq_repack orders each 16-wide k step so that lane t's
// codes cover the consecutive channels 4t..4t+3, while the fragment's
// logical k positions are 2t, 2t+1, 2t+8, 2t+9. The product is the same if x
// is permuted alike, so x's 4-byte pairs are copied into shared memory
// permuted: physical pair 2t + j of a 16-channel chunk lands at logical pair
// t + 4j. cp.async moves 4 bytes a copy, which makes the permutation free.
//
// Dequantization: w = (q - z) * s computed in f32 from 128 + q (one shift and
// one AND-OR into bf16 halves, then exact conversions) as (128 + q) * s -
// (128 + z) * s in one FMA, exact, then rounded once to the activation dtype:
// the same W as awq_dequantize writes, so the result equals cuBLAS on
// awq_dequantize's output up to the order of f32 additions.
//
// Pipeline. 256 threads, two warpgroups side by side in n sharing the x
// tiles. x moves in k-blocks of 128 (two 64-channel panels, 128-byte rows,
// the 128B swizzle the descriptors name) through 4 shared-memory stages,
// copied two blocks ahead; codes and group parameters go from global memory
// into registers one block ahead. Within a block, each of the 8 k steps
// dequantizes into one of two A buffers while the tensor cores run the
// previous step (wgmma.wait_group 1 before a buffer is rewritten).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/awq_gemm.hpp"
#include "cuda/common.cuh"
#include "cuda/mma.cuh"

namespace hostrun::cuda {

namespace {

constexpr int kThreads = 256;  // two warpgroups
constexpr int kStages = 4;     // x tiles in shared memory (two being copied, one read, one draining)
constexpr int kSteps = awq_k_block / 16;  // k steps of 16 in a k-block

// How the dequantized weights reach the tensor cores (measured side by side,
// test_kernels_cuda --bench-awq-large):
enum Mode : int {
  kStepAhead = 0,   // A in registers, each k step dequantized while the step before runs (a wait a step)
  kBlockAhead = 1,  // A in registers, a whole k-block dequantized while the block before runs (a wait a block)
  kSharedA = 2,     // A through shared memory (stmatrix), a k-block ahead: no register operand in flight
};

template <int kRows>
constexpr int kStageBytes = kRows * awq_k_block * 2;
// kSharedA's dequantized weights: two k-blocks of 64 x 128 bf16 per tile and warpgroup.
constexpr int kWeightTileBytes = 64 * awq_k_block * 2;
template <int kRows, int kNTiles, int kMode>
constexpr int kSmemBytes = kStages * kStageBytes<kRows> + (kMode == kSharedA ? 2 * 2 * kNTiles * kWeightTileBytes : 0) +
                           1024;  // + room to align the stages to 1024

struct LargeParams {
  AwqDeviceWeights w;
  const void* x;
  std::int64_t x_stride;
  int m;
  void* y;
  std::int64_t y_stride;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

template <typename T, int kN>
__device__ __forceinline__ void wgmma_rs(float (&d)[kN / 2], const std::uint32_t (&a)[4], std::uint64_t b);

template <>
__device__ __forceinline__ void wgmma_rs<__nv_bfloat16, 64>(float (&d)[32], const std::uint32_t (&a)[4], std::uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, 1, 1, 1, 0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

template <>
__device__ __forceinline__ void wgmma_rs<__half, 64>(float (&d)[32], const std::uint32_t (&a)[4], std::uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, 1, 1, 1, 0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

template <>
__device__ __forceinline__ void wgmma_rs<__nv_bfloat16, 128>(float (&d)[64], const std::uint32_t (&a)[4], std::uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, 0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

template <>
__device__ __forceinline__ void wgmma_rs<__half, 128>(float (&d)[64], const std::uint32_t (&a)[4], std::uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, 0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}


// The same with A from shared memory too (the kSharedA variant).
template <typename T, int kN>
__device__ __forceinline__ void wgmma_ss(float (&d)[kN / 2], std::uint64_t a, std::uint64_t b);

template <>
__device__ __forceinline__ void wgmma_ss<__nv_bfloat16, 64>(float (&d)[32], std::uint64_t a, std::uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, 1, 1, 1, 0, 0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b));
}

template <>
__device__ __forceinline__ void wgmma_ss<__half, 64>(float (&d)[32], std::uint64_t a, std::uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, 1, 1, 1, 0, 0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b));
}

template <>
__device__ __forceinline__ void wgmma_ss<__nv_bfloat16, 128>(float (&d)[64], std::uint64_t a, std::uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, 1, 1, 1, 0, 0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b));
}

template <>
__device__ __forceinline__ void wgmma_ss<__half, 128>(float (&d)[64], std::uint64_t a, std::uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, 1, 1, 1, 0, 0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b));
}


__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Writes by the generic proxy (cp.async) made visible to the tensor cores' async proxy.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Tells the compiler a register is read here: keeps the A buffers a wgmma
// still reads (asynchronously) from being reused before the wait that ends it.
__device__ __forceinline__ void keep_alive(std::uint32_t r) { asm volatile("" ::"r"(r)); }
__device__ __forceinline__ void keep_alive(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// Four 8x8 blocks of 16-bit values from mma fragment registers into shared
// memory, lane l giving the address of row l % 8 of block l / 8.
__device__ __forceinline__ void stmatrix_x4(std::uint32_t address, const std::uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(address), "r"(r[0]),
               "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// Descriptor of a K-major operand tile in shared memory with the 128-byte
// swizzle: rows of 128 bytes (64 channels), 8-row groups 1024 bytes apart.
__device__ __forceinline__ std::uint64_t smem_descriptor(std::uint32_t address) {
  return std::uint64_t((address & 0x3FFFF) >> 4) | (std::uint64_t(1) << 16) | (std::uint64_t(1024 >> 4) << 32) |
         (std::uint64_t(1) << 62);
}

// Two weights of the A fragment: nibbles `shift` and `shift` + 16 of a codes
// word as 128 + q, times the group's scale minus (128 + z) times it, rounded.
template <typename T>
__device__ __forceinline__ std::uint32_t dequantize_pair(std::uint32_t word, int shift, float scale, float offset) {
  const std::uint32_t v = ((word >> shift) & 0x000F000Fu) | 0x43004300u;  // bf16 128 + q in each half
  const float lo = fmaf(__uint_as_float(v << 16), scale, offset);
  const float hi = fmaf(__uint_as_float(v & 0xFFFF0000u), scale, offset);
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&pair);
  } else {
    const __half2 pair = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&pair);
  }
}


// x rows [m_first, + kRows) x the channels of one k-block into a shared-
// memory stage, permuted (see the top) and swizzled: pair (row, logical k) at
// panel k / 64, byte row * 128 + (chunk16 ^ (row % 8)) * 16 + word * 4. A warp
// copies 128 consecutive bytes of one row and writes 32 distinct banks.
// Thread tid always copies pair tid % 64 of rows tid / 64 + 4 i, so the
// offsets within a row are computed once.
template <typename T, int kRows>
struct XCopier {
  const T* x;
  const T* src;   // this thread's pair in row m_first + tid / 64, k-block 0
  int dst;        // its byte offset in a stage, row 0
  int slot;       // its 16-byte chunk in a 128-byte row, before the swizzle
  int row;        // tid / 64
  int k;          // its channel within a k-block
  int rows_left;  // m - m_first
  int in_features;
  std::int64_t stride;

  __device__ XCopier(const LargeParams& p, int m_first, int tid) {
    const int pair = tid & 63, chunk = pair >> 3;
    x = static_cast<const T*>(p.x);
    row = tid >> 6;
    slot = ((chunk & 3) << 1) | (pair & 1);
    k = chunk * 16 + 2 * (pair & 7);
    dst = (chunk >> 2) * (kRows * 128) + ((pair & 7) >> 1) * 4;
    src = x + std::int64_t(m_first + row) * p.x_stride + k;
    rows_left = p.m - m_first;
    in_features = p.w.in_features;
    stride = p.x_stride;
  }
  __device__ void operator()(unsigned char* smem, int kb, int stage) const {
    unsigned char* base = smem + stage * kStageBytes<kRows> + dst;
    const T* from = src + kb * awq_k_block;
    const bool k_valid = kb * awq_k_block + k < in_features;
#pragma unroll 4
    for (int it = 0; it < kRows / 4; ++it) {
      const int r = row + 4 * it;
      const bool valid = k_valid && r < rows_left;
      detail::cp_async_4(base + r * 128 + ((slot ^ (r & 7)) << 4), valid ? from + 4 * it * stride : x, valid);
    }
  }
};

// A warp's weights for one k-block: codes [tile][0: columns g, 1: g + 8], 16
// bytes each, and the zero-point words and raw f16 scales of the block's groups.
template <int kNTiles, int kGroup>
struct BlockWeights {
  static constexpr int kGroups = awq_k_block / kGroup;
  uint4 codes[kNTiles][2];
  std::uint32_t zeros[kGroups][kNTiles][2];
  unsigned short scales[kGroups][kNTiles][2];

  __device__ void load(const AwqDeviceWeights& w, int kb, int n_first, int lane) {
    const uint4* codes_u4 = reinterpret_cast<const uint4*>(w.codes);
    const int k_blocks = w.padded_in / awq_k_block, column_tiles = w.out_features / 8;
#pragma unroll
    for (int i = 0; i < kNTiles; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int tile = (n_first + i * 64) / 8 + h;
        codes[i][h] = __ldg(codes_u4 + (std::size_t(tile) * k_blocks + kb) * 32 + lane);
#pragma unroll
        for (int gi = 0; gi < kGroups; ++gi) {
          const int group = kb * kGroups + gi;
          zeros[gi][i][h] = __ldg(w.zeros + std::size_t(group) * column_tiles + tile);
          scales[gi][i][h] = __ldg(w.scales + std::size_t(group) * w.out_features + tile * 8 + lane / 4);
        }
      }
  }

  // The scales and offsets -(128 + z) * s of the group step s starts (rows g
  // and g + 8 of each tile), computed once a group.
  template <int s>
  __device__ void group_constants(float (&scale)[kNTiles][2], float (&offset)[kNTiles][2], int g) const {
    constexpr int gi = s * 16 / kGroup;
#pragma unroll
    for (int i = 0; i < kNTiles; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        scale[i][h] = __half2float(__ushort_as_half(scales[gi][i][h]));
        offset[i][h] = -(128.0f + float((zeros[gi][i][h] >> (4 * g)) & 0xFu)) * scale[i][h];
      }
  }

  // Step s's A fragments: registers (row g, j 0), (g + 8, j 0), (g, j 1),
  // (g + 8, j 1). Word s / 2 holds step s's codes, nibble 2 (s % 2) + j (+ 4
  // for the second of a pair).
  template <typename T, int s>
  __device__ void dequantize_step(std::uint32_t (&a)[kNTiles][4], const float (&scale)[kNTiles][2],
                                  const float (&offset)[kNTiles][2]) const {
    constexpr int shift = 8 * (s % 2);
#pragma unroll
    for (int i = 0; i < kNTiles; ++i) {
      const std::uint32_t w0 = s / 2 == 0 ? codes[i][0].x : s / 2 == 1 ? codes[i][0].y : s / 2 == 2 ? codes[i][0].z : codes[i][0].w;
      const std::uint32_t w1 = s / 2 == 0 ? codes[i][1].x : s / 2 == 1 ? codes[i][1].y : s / 2 == 2 ? codes[i][1].z : codes[i][1].w;
      a[i][0] = dequantize_pair<T>(w0, shift, scale[i][0], offset[i][0]);
      a[i][1] = dequantize_pair<T>(w1, shift, scale[i][1], offset[i][1]);
      a[i][2] = dequantize_pair<T>(w0, shift + 4, scale[i][0], offset[i][0]);
      a[i][3] = dequantize_pair<T>(w1, shift + 4, scale[i][1], offset[i][1]);
    }
  }

  // Every step of the block into a[s].
  template <typename T>
  __device__ void dequantize_block(std::uint32_t (&a)[kSteps][kNTiles][4], int g) const;
};

template <int s, typename F>
__device__ __forceinline__ void for_steps(F&& f) {
  if constexpr (s < kSteps) {
    f(std::integral_constant<int, s>{});
    for_steps<s + 1>(f);
  }
}

template <int kNTiles, int kGroup>
template <typename T>
__device__ void BlockWeights<kNTiles, kGroup>::dequantize_block(std::uint32_t (&a)[kSteps][kNTiles][4], int g) const {
  float scale[kNTiles][2], offset[kNTiles][2];
  for_steps<0>([&](auto step) {
    constexpr int s = decltype(step)::value;
    if constexpr ((s * 16) % kGroup == 0) group_constants<s>(scale, offset, g);
    dequantize_step<T, s>(a[s], scale, offset);
  });
}

// Accumulator r of tile i: output column n_first + i * 64 + g (+ 8 when r
// % 4 >= 2), row m_first + 8 (r / 4) + 2 (lane % 4) (+ 1 when r is odd).
template <typename T, int kRows, int kNTiles>
__device__ void store_y(const LargeParams& p, const float (&acc)[kNTiles][kRows / 2], int m_first, int n_first,
                        int lane) {
  T* y = static_cast<T*>(p.y);
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int i = 0; i < kNTiles; ++i)
#pragma unroll
    for (int r = 0; r < kRows / 2; ++r) {
      const int row = m_first + 8 * (r / 4) + 2 * t + (r & 1);
      const int column = n_first + i * 64 + g + ((r & 2) ? 8 : 0);
      if (row < p.m) y[std::int64_t(row) * p.y_stride + column] = detail::from_f32<T>(acc[i][r]);
    }
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// kRows: rows of x a CTA (the wgmma's N); kNTiles: 64-column tiles a
// warpgroup (the CTA covers 2 * 64 * kNTiles output columns); kMode: Mode.
template <typename T, int kRows, int kNTiles, int kGroup, int kMode>
__global__ void __launch_bounds__(kThreads, 1) awq_gemm_wgmma_kernel(LargeParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kAcc = kRows / 2;  // f32 accumulators a thread per 64-column tile
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(smem_raw) + 1023) &
                                                         ~std::uintptr_t(1023));
  const int tid = int(threadIdx.x), warpgroup = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int g = lane / 4;
  const int n_first = (int(blockIdx.x) * 2 + warpgroup) * 64 * kNTiles + warp * 16;  // this warp's first column
  const int m_first = int(blockIdx.y) * kRows;
  const int k_blocks = p.w.padded_in / awq_k_block;
  const XCopier<T, kRows> copy_x(p, m_first, tid);

  float acc[kNTiles][kAcc];
#pragma unroll
  for (int i = 0; i < kNTiles; ++i)
#pragma unroll
    for (int r = 0; r < kAcc; ++r) acc[i][r] = 0.0f;

  // Weights never come from an earlier kernel: fetch them before waiting for x.
  BlockWeights<kNTiles, kGroup> current, next;
  current.load(p.w, 0, n_first, lane);
  detail::wait_for_previous_grid();
  copy_x(smem, 0, 0);
  detail::cp_async_commit();
  if (k_blocks > 1) copy_x(smem, 1, 1);
  detail::cp_async_commit();

  // Block kb's x tile is in its stage for every thread; block kb + 2 starts copying.
  const auto stage_ready = [&](int kb) {
    detail::cp_async_wait<1>();  // this thread's copies of block kb have landed
    fence_proxy_async();
    __syncthreads();             // everyone's have; block kb - 2's stage is no longer read
    if (kb + 2 < k_blocks) copy_x(smem, kb + 2, (kb + 2) % kStages);
    detail::cp_async_commit();
    return detail::smem_address(smem + (kb % kStages) * kStageBytes<kRows>);
  };
  const auto descriptor = [](std::uint32_t stage, int s) {
    return smem_descriptor(stage + (s / 4) * (kRows * 128) + (s % 4) * 32);
  };

  if constexpr (kMode == kStepAhead) {
    std::uint32_t a[2][kNTiles][4];
    for (int kb = 0; kb < k_blocks; ++kb) {
      if (kb + 1 < k_blocks) next.load(p.w, kb + 1, n_first, lane);
      const std::uint32_t stage = stage_ready(kb);
      float scale[kNTiles][2], offset[kNTiles][2];
      for_steps<0>([&](auto step) {
        constexpr int s = decltype(step)::value, buffer = s & 1;
        if constexpr ((s * 16) % kGroup == 0) current.template group_constants<s>(scale, offset, g);
        current.template dequantize_step<T, s>(a[buffer], scale, offset);
        wgmma_fence();
#pragma unroll
        for (int i = 0; i < kNTiles; ++i) wgmma_rs<T, kRows>(acc[i], a[buffer][i], descriptor(stage, s));
        wgmma_commit();
        wgmma_wait<1>();  // step s - 1 is done: its A buffer may be rewritten
#pragma unroll
        for (int i = 0; i < kNTiles; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) keep_alive(a[buffer ^ 1][i][r]);
      });
      current = next;
    }
  } else if constexpr (kMode == kBlockAhead) {
    // a[b][s]: block kb's step s in buffer kb % 2. The loop runs two blocks an
    // iteration so that every buffer index is a compile-time constant.
    std::uint32_t a[2][kSteps][kNTiles][4];
    current.template dequantize_block<T>(a[0], g);
    if (k_blocks > 1) next.load(p.w, 1, n_first, lane);
    const auto block = [&](int kb, auto buffer_constant) {
      constexpr int b = decltype(buffer_constant)::value;
      const std::uint32_t stage = stage_ready(kb);
      wgmma_fence();
      for_steps<0>([&](auto step) {
        constexpr int s = decltype(step)::value;
#pragma unroll
        for (int i = 0; i < kNTiles; ++i) wgmma_rs<T, kRows>(acc[i], a[b][s][i], descriptor(stage, s));
      });
      wgmma_commit();
      wgmma_wait<1>();  // block kb - 1 is done: the other buffer may be rewritten
      for_steps<0>([&](auto step) {
#pragma unroll
        for (int i = 0; i < kNTiles; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) keep_alive(a[b ^ 1][decltype(step)::value][i][r]);
      });
      if (kb + 1 < k_blocks) {
        next.template dequantize_block<T>(a[b ^ 1], g);
        if (kb + 2 < k_blocks) next.load(p.w, kb + 2, n_first, lane);
      }
    };
    for (int kb = 0; kb < k_blocks; kb += 2) {
      block(kb, std::integral_constant<int, 0>{});
      if (kb + 1 < k_blocks) block(kb + 1, std::integral_constant<int, 1>{});
    }
  } else {
    // Weights of block kb in buffer kb % 2: per warpgroup and tile 64 rows x
    // 128 channels as two 64-channel panels of 128-byte rows, swizzled like
    // x's stages. Each warp stores its 16 rows of a step with one stmatrix.
    const std::uint32_t weights_base = detail::smem_address(smem + kStages * kStageBytes<kRows>) +
                                       std::uint32_t(warpgroup * kNTiles * kWeightTileBytes);
    const int row = warp * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);  // the row lane l addresses
    const auto weights_tile = [&](int buffer, int i) {
      return weights_base + std::uint32_t((buffer * 2 * kNTiles + i) * kWeightTileBytes);
    };
    const auto store_block = [&](const BlockWeights<kNTiles, kGroup>& w, int buffer) {
      float scale[kNTiles][2], offset[kNTiles][2];
      for_steps<0>([&](auto step) {
        constexpr int s = decltype(step)::value;
        if constexpr ((s * 16) % kGroup == 0) w.template group_constants<s>(scale, offset, g);
        std::uint32_t a[kNTiles][4];
        w.template dequantize_step<T, s>(a, scale, offset);
        const int chunk = (s % 4) * 2 + (lane >> 4);
#pragma unroll
        for (int i = 0; i < kNTiles; ++i)
          stmatrix_x4(weights_tile(buffer, i) + (s / 4) * (64 * 128) + row * 128 + ((chunk ^ (row & 7)) << 4), a[i]);
      });
    };
    store_block(current, 0);
    if (k_blocks > 1) next.load(p.w, 1, n_first, lane);
    for (int kb = 0; kb < k_blocks; ++kb) {
      const int buffer = kb & 1;
      const std::uint32_t stage = stage_ready(kb);  // its fence and barrier also publish block kb's weights
      wgmma_fence();
      for_steps<0>([&](auto step) {
        constexpr int s = decltype(step)::value;
#pragma unroll
        for (int i = 0; i < kNTiles; ++i)
          wgmma_ss<T, kRows>(acc[i], smem_descriptor(weights_tile(buffer, i) + (s / 4) * (64 * 128) + (s % 4) * 32),
                             descriptor(stage, s));
      });
      wgmma_commit();
      wgmma_wait<1>();  // block kb - 1 is done: the other weight buffer may be rewritten
      if (kb + 1 < k_blocks) {
        store_block(next, buffer ^ 1);
        if (kb + 2 < k_blocks) next.load(p.w, kb + 2, n_first, lane);
      }
    }
  }
  wgmma_wait<0>();
#pragma unroll
  for (int i = 0; i < kNTiles; ++i)
#pragma unroll
    for (int r = 0; r < kAcc; ++r) keep_alive(acc[i][r]);
  detail::allow_next_grid_to_launch();
  store_y<T, kRows, kNTiles>(p, acc, m_first, n_first, lane);
#endif
}

}  // namespace

// ---- host --------------------------------------------------------------

namespace {

struct Shape {
  int rows = 0;     // rows of x a CTA
  int n_tiles = 0;  // 64-column tiles a warpgroup
  int mode = kStepAhead;
};

int device_sms() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return sms;
}

bool device_is_sm90() {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return major == 9 && minor == 0;
}

bool shape_fits(const AwqDeviceWeights& w, const Shape& shape) {
  return (shape.rows == 64 || shape.rows == 128) &&
         (shape.mode == kStepAhead || shape.mode == kBlockAhead || shape.mode == kSharedA) &&
         (shape.n_tiles == 1 || (shape.n_tiles == 2 && w.group_size >= 64 && shape.mode == kStepAhead)) &&
         w.out_features % (128 * shape.n_tiles) == 0;
}

// The widest tiles that still give every SM a CTA: wider tiles read x and the
// codes fewer times, but a grid smaller than the GPU leaves SMs idle.
Shape shape_for(const AwqDeviceWeights& w, int m) {
  static const int sms = device_sms();
  const Shape candidates[] = {{128, 2, kStepAhead}, {64, 2, kStepAhead}, {128, 1, kStepAhead}, {64, 1, kStepAhead}};
  for (const Shape& shape : candidates) {
    if (!shape_fits(w, shape)) continue;
    const long ctas = long(w.out_features / (128 * shape.n_tiles)) * ((m + shape.rows - 1) / shape.rows);
    if (ctas >= sms) return shape;
  }
  return {64, 1, kStepAhead};
}

template <typename T, int kRows, int kNTiles, int kGroup, int kMode>
cudaError_t launch(const LargeParams& p, cudaStream_t stream) {
  constexpr auto kernel = awq_gemm_wgmma_kernel<T, kRows, kNTiles, kGroup, kMode>;
  constexpr int smem = kSmemBytes<kRows, kNTiles, kMode>;
  if (const cudaError_t e = detail::allow_dynamic_smem<kernel>(smem); e != cudaSuccess) return e;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(unsigned(p.w.out_features / (128 * kNTiles)), unsigned((p.m + kRows - 1) / kRows));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, p);
}

template <typename T, int kRows, int kNTiles, int kMode>
cudaError_t launch_group(const LargeParams& p, cudaStream_t stream) {
  switch (p.w.group_size) {
    case 128: return launch<T, kRows, kNTiles, 128, kMode>(p, stream);
    case 64: return launch<T, kRows, kNTiles, 64, kMode>(p, stream);
    default:
      if constexpr (kNTiles == 1) return launch<T, kRows, 1, 32, kMode>(p, stream);
      return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch_shape(const LargeParams& p, const Shape& shape, cudaStream_t stream) {
  if (shape.mode == kBlockAhead)
    return shape.rows == 128 ? launch_group<T, 128, 1, kBlockAhead>(p, stream)
                             : launch_group<T, 64, 1, kBlockAhead>(p, stream);
  if (shape.mode == kSharedA)
    return shape.rows == 128 ? launch_group<T, 128, 1, kSharedA>(p, stream) : launch_group<T, 64, 1, kSharedA>(p, stream);
  if (shape.rows == 128)
    return shape.n_tiles == 2 ? launch_group<T, 128, 2, kStepAhead>(p, stream)
                              : launch_group<T, 128, 1, kStepAhead>(p, stream);
  return shape.n_tiles == 2 ? launch_group<T, 64, 2, kStepAhead>(p, stream)
                            : launch_group<T, 64, 1, kStepAhead>(p, stream);
}

cudaError_t run(const AwqDeviceWeights& weights, const void* x, std::int64_t x_stride, DType dtype, int m, void* y,
                std::int64_t y_stride, const Shape& shape, cudaStream_t stream) {
  if (!awq_gemm_large_supported(weights, dtype) || !shape_fits(weights, shape) || m < 0 || x == nullptr ||
      y == nullptr || reinterpret_cast<std::uintptr_t>(x) % 4 != 0 || x_stride % 2 != 0 ||
      x_stride < weights.in_features || reinterpret_cast<std::uintptr_t>(y) % 2 != 0 ||
      y_stride < weights.out_features)
    return cudaErrorInvalidValue;
  if (m == 0) return cudaSuccess;
  const LargeParams p{weights, x, x_stride, m, y, y_stride};
  return dtype == DType::bf16 ? launch_shape<__nv_bfloat16>(p, shape, stream) : launch_shape<__half>(p, shape, stream);
}

}  // namespace

bool awq_gemm_large_supported(const AwqDeviceWeights& weights, DType dtype) {
#if defined(HOSTRUN_AWQ_WGMMA)
  static const bool sm90 = device_is_sm90();
  return sm90 && (dtype == DType::bf16 || dtype == DType::f16) && weights.codes != nullptr &&
         weights.zeros != nullptr && weights.scales != nullptr && weights.in_features > 0 &&
         weights.in_features % 8 == 0 && weights.out_features % 128 == 0 &&
         (weights.group_size == 32 || weights.group_size == 64 || weights.group_size == 128) &&
         weights.in_features % weights.group_size == 0 &&
         weights.padded_in == (weights.in_features + awq_k_block - 1) / awq_k_block * awq_k_block;
#else
  (void)weights;
  (void)dtype;
  return false;
#endif
}

cudaError_t awq_gemm_large(const AwqDeviceWeights& weights, const void* x, std::int64_t x_stride, DType dtype, int m,
                           void* y, std::int64_t y_stride, cudaStream_t stream) {
  return run(weights, x, x_stride, dtype, m, y, y_stride, shape_for(weights, std::max(m, 1)), stream);
}

cudaError_t awq_gemm_large_shaped(const AwqDeviceWeights& weights, const void* x, std::int64_t x_stride, DType dtype,
                                  int m, void* y, std::int64_t y_stride, int rows_per_cta,
                                  int column_tiles_per_warpgroup, int variant, cudaStream_t stream) {
  return run(weights, x, x_stride, dtype, m, y, y_stride, Shape{rows_per_cta, column_tiles_per_warpgroup, variant},
             stream);
}

}  // namespace hostrun::cuda
