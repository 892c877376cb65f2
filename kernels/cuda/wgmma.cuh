// Internal to kernels/cuda: the warpgroup MMA (wgmma, sm_90a) instructions
// the Hopper attention kernels use, as inline PTX wrappers. Only files built
// for sm_90a include it (CMakeLists.txt's hostrun_kernels_cuda_sm90a).
//
// A warpgroup is four consecutive warps. With A in registers, warp w of the
// group holds rows 16w .. 16w + 15 of the 64-row A in the register layout of
// mma.m16n8k16's A, and the f32 accumulators of m64nNk16 are, per warp, N/8
// m16n8 accumulator fragments side by side (PTX ISA, "Register Fragments" of
// wgmma): the mma.sync code's softmax and its S -> P register reuse carry
// over as they are. B lives in shared memory, described by a 64-bit
// descriptor (smem_swizzled_descriptor).
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/mma.cuh"

namespace hostrun::cuda::detail {

// A B operand in shared memory with the 128-byte swizzle: 8-row atoms of
// 128-byte rows (1024 bytes), row r's 16-byte piece j stored at piece
// j ^ (r % 8), the XOR taken on address bits 4-6 by bits 7-9, so atoms must
// start 1024-byte aligned. The descriptor names where the operand starts and
// two byte strides (PTX ISA, "Matrix Descriptor Format", "Canonical
// Layouts"): `stride` from one 8-row atom to the next along the 128-byte
// rows' other dimension; `leading` from one 64-element column block to the
// next along the rows, which only an MN-major operand wider than 64 (V in
// O += P V) steps over (a K-major operand's k16 step stays inside a row).
// A K-major operand steps k by moving the start inside the row: the
// hardware swizzles the address it computes.
__device__ __forceinline__ std::uint64_t smem_swizzled_descriptor(const void* start, std::uint32_t leading_bytes,
                                                                  std::uint32_t stride_bytes) {
  const auto encode = [](std::uint32_t x) { return static_cast<std::uint64_t>((x & 0x3FFFF) >> 4); };
  constexpr std::uint64_t kSwizzle128 = 1;  // layout type, bits 62-63
  return encode(smem_address(start)) | encode(leading_bytes) << 16 | encode(stride_bytes) << 32 | kSwizzle128 << 62;
}

// Orders this thread's register writes before the wgmmas that read them
// (accumulators rescaled, A fragments packed) and is required before the
// first wgmma of a group.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Pins accumulators in place around asynchronous wgmmas: the compiler sees
// each register read and written here, so it neither moves their uses above
// the wait that completes the product nor copies them while one is in
// flight.
template <int kTiles>
__device__ __forceinline__ void wgmma_fence_operands(float (&d)[kTiles][4]) {
#pragma unroll
  for (int i = 0; i < kTiles; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(d[i][j])::"memory");
}

// The two wrappers below differ between bf16 and f16 only in the type
// suffix of the instruction, so one macro a shape writes the asm and
// `kTypes` names the suffix ("bf16.bf16" or "f16.f16"). The accumulator
// operands: d[i][j] in order, 32 or 64 of them.
#define HOSTRUN_WGMMA_D32(d) \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), \
  "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
  "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
  "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), \
  "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), \
  "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
  "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), \
  "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define HOSTRUN_WGMMA_D64(d) \
  HOSTRUN_WGMMA_D32(d), \
  "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), \
  "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), \
  "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), \
  "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), \
  "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), \
  "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), \
  "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), \
  "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])

// d (+)= a * B: 64 x 64 x 16, A from registers, B K-major in shared memory.
// accumulate == 0 overwrites d.
#define HOSTRUN_WGMMA_M64N64K16_RS(kTypes)                                                       \
  asm volatile(                                                                                  \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                               \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." kTypes " {"                                  \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                  \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"          \
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                                          \
      : HOSTRUN_WGMMA_D32(d)                                                                     \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(accumulate))

template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[8][4], const std::uint32_t (&a)[4],
                                                   std::uint64_t b_desc, int accumulate) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    HOSTRUN_WGMMA_M64N64K16_RS("bf16.bf16");
  else
    HOSTRUN_WGMMA_M64N64K16_RS("f16.f16");
}

// d (+)= a * B: 64 x 16 x 16, A from registers, B K-major in shared memory
// (a last tile of up to 16 keys).
#define HOSTRUN_WGMMA_M64N16K16_RS(kTypes)                                                       \
  asm volatile(                                                                                  \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"                                               \
      "wgmma.mma_async.sync.aligned.m64n16k16.f32." kTypes " {"                                  \
      "%0, %1, %2, %3, %4, %5, %6, %7"                                                          \
      "}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"                                             \
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]),                              \
        "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3])                               \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(accumulate))

template <typename T>
__device__ __forceinline__ void wgmma_m64n16k16_rs(float (&d)[2][4], const std::uint32_t (&a)[4],
                                                   std::uint64_t b_desc, int accumulate) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    HOSTRUN_WGMMA_M64N16K16_RS("bf16.bf16");
  else
    HOSTRUN_WGMMA_M64N16K16_RS("f16.f16");
}

// d (+)= a * B: 64 x 64 x 16, A from registers, B MN-major in shared memory
// (O += P V for heads of 64).
#define HOSTRUN_WGMMA_M64N64K16_RS_TRANS_B(kTypes)                                               \
  asm volatile(                                                                                  \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                               \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." kTypes " {"                                  \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                  \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"          \
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                                          \
      : HOSTRUN_WGMMA_D32(d)                                                                     \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(accumulate))

template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16_rs_trans_b(float (&d)[8][4], const std::uint32_t (&a)[4],
                                                           std::uint64_t b_desc, int accumulate) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    HOSTRUN_WGMMA_M64N64K16_RS_TRANS_B("bf16.bf16");
  else
    HOSTRUN_WGMMA_M64N64K16_RS_TRANS_B("f16.f16");
}

// d (+)= a * B: 64 x 128 x 16, A from registers, B MN-major in shared memory
// ("transposed": each k row's 128 n values contiguous).
#define HOSTRUN_WGMMA_M64N128K16_RS_TRANS_B(kTypes)                                              \
  asm volatile(                                                                                  \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                               \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." kTypes " {"                                 \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                  \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "        \
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "        \
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"          \
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                          \
      : HOSTRUN_WGMMA_D64(d)                                                                     \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(accumulate))

template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16_rs_trans_b(float (&d)[16][4], const std::uint32_t (&a)[4],
                                                            std::uint64_t b_desc, int accumulate) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    HOSTRUN_WGMMA_M64N128K16_RS_TRANS_B("bf16.bf16");
  else
    HOSTRUN_WGMMA_M64N128K16_RS_TRANS_B("f16.f16");
}

#undef HOSTRUN_WGMMA_M64N128K16_RS_TRANS_B
#undef HOSTRUN_WGMMA_M64N64K16_RS_TRANS_B
#undef HOSTRUN_WGMMA_M64N16K16_RS
#undef HOSTRUN_WGMMA_M64N64K16_RS
#undef HOSTRUN_WGMMA_D64
#undef HOSTRUN_WGMMA_D32

}  // namespace hostrun::cuda::detail
