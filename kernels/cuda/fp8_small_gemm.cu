#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cfloat>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/fp8_small_gemm.hpp"

namespace hostrun::cuda {

namespace {

constexpr int kWarps = 8;     // warps a block: they split k
constexpr int kThreads = kWarps * 32;
constexpr int kUnroll = 4;    // 64-column chunks a lane has in flight
constexpr int kChunk = 64;    // columns of k one warp multiplies per step (two m16n8k32)
constexpr int kTile = 16;     // weight rows a block owns
constexpr int kPitchPad = 64; // bytes after each row of codes in shared memory (below)

// Shared memory for x's codes when the kernel quantizes x itself: rows of
// k + kPitchPad bytes. Lanes (g, t) of a quarter-warp read 16 bytes at 16 t
// of rows g and g + 1: with the 64-byte pad the two rows' 64-byte runs fall
// on different banks (the pitch is 64 more than a multiple of 128).
constexpr int x_pitch(int k) { return (k + 127) / 128 * 128 + kPitchPad; }
// Rows of x the kernel quantizes itself, and their values in all. Every CTA
// quantizes all of x before its main loop, so the work is repeated n / 16
// times; measured on the H100 (docs/benchmarks.md, FP8 kernels) that beats
// the separate quantize_rows_e4m3 launch by 1.5-2.9 us a product at one row
// and by up to 0.9 us at two rows of 4096, but loses at two rows of 14336
// (0.5 us) and at eight rows by 3-30 us. The limit also keeps the codes
// (at most 2 x (8192 + 64) bytes) far below the 48 KB needing no opt-in.
constexpr int kMaxQuantizedRows = 2;
constexpr int kMaxQuantizedValues = 16384;

// d += a * b, m16n8k32, e4m3 inputs, f32 sums (sm_89+).
__device__ __forceinline__ void mma_e4m3(float (&d)[4], std::uint32_t a0, std::uint32_t a1, std::uint32_t a2,
                                         std::uint32_t a3, std::uint32_t b0, std::uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();  // the host refuses devices below sm_89 (fp8_small_gemm_supported)
#endif
}

__device__ __forceinline__ uint4 load_streaming(const std::uint8_t* p) { return __ldcs(reinterpret_cast<const uint4*>(p)); }

template <typename T>
__device__ __forceinline__ void store(void* y, std::int64_t at, float v) {
  if constexpr (std::is_same_v<T, float>) static_cast<float*>(y)[at] = v;
  else static_cast<T*>(y)[at] = detail::from_f32<T>(v);
}

// Two e4m3 codes of (a, b), nearest-even and saturating, a in the low byte.
__device__ __forceinline__ std::uint32_t e4m3_pair(float a, float b) {
  return static_cast<std::uint32_t>(__nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3));
}

// The kernel's own quantization of x's m rows (16-bit, X) into shared
// memory, as quantize_rows_e4m3 does it: per row the largest magnitude
// (+inf marks a NaN or infinity), the scale, then codes = e4m3(x * (1 /
// scale)). Every thread takes every 256th 8-value run of each row.
template <typename X, int kRows>
__device__ __forceinline__ void quantize_x(const Fp8SmallGemm& p, std::uint8_t* codes, float* row_scales) {
  __shared__ float warp_max[kWarps][kRows];
  const X* x = static_cast<const X*>(p.x16);
  const int runs = p.k / 8, pitch = x_pitch(p.k);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const bool dynamic = !(p.static_scale > 0.0f && isfinite(p.static_scale));
  if (dynamic) {
    float amax[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      amax[r] = 0.0f;
      if (r < p.m)
        for (int v = threadIdx.x; v < runs; v += kThreads) {
          float f[8];
          detail::load_vec(x + r * p.x16_stride + 8 * v, f);
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const float a = fabsf(f[e]);
            amax[r] = fmaxf(amax[r], a <= FLT_MAX ? a : INFINITY);
          }
        }
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1)
        amax[r] = fmaxf(amax[r], __shfl_xor_sync(0xffffffffu, amax[r], offset));
      if (lane == 0) warp_max[warp][r] = amax[r];
    }
    __syncthreads();
    if (threadIdx.x < p.m) {
      float a = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) a = fmaxf(a, warp_max[w][threadIdx.x]);
      row_scales[threadIdx.x] = isinf(a) ? __int_as_float(0x7fc00000) : a > 0.0f ? a / 448.0f : 1.0f;
    }
  } else if (threadIdx.x < p.m) {
    row_scales[threadIdx.x] = p.static_scale;
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (r >= p.m) break;
    const float scale = row_scales[r];
    const float inv = 1.0f / (isnan(scale) ? 1.0f : scale);
    for (int v = threadIdx.x; v < runs; v += kThreads) {
      float f[8];
      detail::load_vec(x + r * p.x16_stride + 8 * v, f);
      uint2 out;
      out.x = e4m3_pair(f[0] * inv, f[1] * inv) | e4m3_pair(f[2] * inv, f[3] * inv) << 16;
      out.y = e4m3_pair(f[4] * inv, f[5] * inv) | e4m3_pair(f[6] * inv, f[7] * inv) << 16;
      *reinterpret_cast<uint2*>(codes + r * pitch + 8 * v) = out;
    }
  }
  __syncthreads();
}

// One block: weight rows [16 blockIdx.x, +16) for every row of x, its warps
// taking the 64-column chunks warp, warp + kWarps, ... of k. With SiLU-and-
// multiply, rows [8 blockIdx.x, +8) of the gate half and the same rows of
// the up half, so each output's two sums meet in the block.
//
// Lane (g = lane / 4, t = lane % 4) of a chunk at c holds bytes [16 t, 16 t + 16)
// of weight rows g and g + 8 and of x row g (of the row group). The first mma
// takes each row's bytes 16 t + [0, 8), the second 16 t + [8, 16): fragment
// registers a0/a1 (rows g, g + 8; the fragment's columns 4t..4t+3) get bytes
// +[0, 4), a2/a3 (columns 16+4t..) bytes +[4, 8), and b0/b1 of x the same
// bytes, so A and B see one permutation of the 32 columns.
//
// X: std::uint8_t when x arrives as codes, else its 16-bit type (quantized
// here into dynamic shared memory).
template <typename T, int kGroups, typename X, bool kSiluMul>
__global__ void __launch_bounds__(kThreads)
    fp8_small_gemm_kernel(Fp8SmallGemm p) {
  constexpr bool kQuantizes = !std::is_same_v<X, std::uint8_t>;
  __shared__ float partial[kWarps][kGroups][4][32];
  __shared__ float row_scales[kQuantizes ? kGroups * 8 : 1];
  extern __shared__ __align__(16) std::uint8_t x_smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int outputs = kSiluMul ? p.n / 2 : p.n;  // columns of y
  const int channel0 = blockIdx.x * (kSiluMul ? kTile / 2 : kTile);
  const int lo_row = channel0 + g, hi_row = kSiluMul ? outputs + channel0 + g : channel0 + g + 8;
  const bool row_lo = kSiluMul ? channel0 + g < outputs : lo_row < p.n;
  const bool row_hi = kSiluMul ? row_lo : hi_row < p.n;
  const std::uint8_t* w_lo = p.w_codes + std::int64_t(row_lo ? lo_row : 0) * p.k + 16 * t;
  const std::uint8_t* w_hi = p.w_codes + std::int64_t(row_hi ? hi_row : 0) * p.k + 16 * t;
  // Where lane's x row of group r starts: in x_codes, or in shared memory.
  std::int64_t x_at[kGroups];
  bool x_valid[kGroups];
#pragma unroll
  for (int r = 0; r < kGroups; ++r) {
    x_valid[r] = r * 8 + g < p.m;
    const int row = x_valid[r] ? r * 8 + g : 0;
    x_at[r] = (kQuantizes ? std::int64_t(row) * x_pitch(p.k) : std::int64_t(row) * p.k) + 16 * t;
  }
  float acc[kGroups][4];
#pragma unroll
  for (int r = 0; r < kGroups; ++r)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[r][i] = 0.0f;

  const int chunks = p.k / kChunk;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  auto multiply = [&](const uint4& a_lo, const uint4& a_hi, int at) {
#pragma unroll
    for (int r = 0; r < kGroups; ++r) {
      uint4 b = zero;
      if (x_valid[r]) {
        if constexpr (kQuantizes) b = *reinterpret_cast<const uint4*>(x_smem + int(x_at[r]) + at);
        else b = __ldg(reinterpret_cast<const uint4*>(p.x_codes + x_at[r] + at));
      }
      mma_e4m3(acc[r], a_lo.x, a_hi.x, a_lo.y, a_hi.y, b.x, b.y);
      mma_e4m3(acc[r], a_lo.z, a_hi.z, a_lo.w, a_hi.w, b.z, b.w);
    }
  };
  // Rows past n read row 0 of W (in bounds) and their sums are dropped.
  detail::allow_next_grid_to_launch();
  int chunk = warp;
  {  // the first group's weights are in flight before x is waited for (and quantized)
    uint4 lo[kUnroll], hi[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = chunk + u * kWarps;
      lo[u] = c < chunks ? load_streaming(w_lo + std::int64_t(c) * kChunk) : zero;
      hi[u] = c < chunks ? load_streaming(w_hi + std::int64_t(c) * kChunk) : zero;
    }
    detail::wait_for_previous_grid();
    if constexpr (kQuantizes) quantize_x<X, kMaxQuantizedRows>(p, x_smem, row_scales);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = chunk + u * kWarps;
      if (c < chunks) multiply(lo[u], hi[u], c * kChunk);
    }
    chunk += kUnroll * kWarps;
  }
  for (; chunk + (kUnroll - 1) * kWarps < chunks; chunk += kUnroll * kWarps) {
    uint4 lo[kUnroll], hi[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      lo[u] = load_streaming(w_lo + std::int64_t(chunk + u * kWarps) * kChunk);
      hi[u] = load_streaming(w_hi + std::int64_t(chunk + u * kWarps) * kChunk);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) multiply(lo[u], hi[u], (chunk + u * kWarps) * kChunk);
  }
  for (; chunk < chunks; chunk += kWarps)
    multiply(load_streaming(w_lo + std::int64_t(chunk) * kChunk), load_streaming(w_hi + std::int64_t(chunk) * kChunk),
             chunk * kChunk);

#pragma unroll
  for (int r = 0; r < kGroups; ++r)
#pragma unroll
    for (int i = 0; i < 4; ++i) partial[warp][r][i][lane] = acc[r][i];
  __syncthreads();
  const auto x_scale_of = [&](int row) { return kQuantizes ? row_scales[row] : p.x_scales[row]; };
  // Accumulator i of lane (g, t): weight row g + 8 (i / 2) of the block, x row 2 t + i % 2 of the group.
  if constexpr (kSiluMul) {
    for (int slot = threadIdx.x; slot < kGroups * 2 * 32; slot += kThreads) {
      const int r = slot / 64, i = (slot / 32) % 2, l = slot % 32;
      float gate = 0.0f, up = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        gate += partial[w][r][i][l];
        up += partial[w][r][i + 2][l];
      }
      const int row = r * 8 + 2 * (l & 3) + i, channel = channel0 + (l >> 2);
      if (row >= p.m || channel >= outputs) continue;
      const float x_scale = x_scale_of(row);
      const float value = isnan(x_scale) ? x_scale
                                         : detail::silu(gate * (x_scale * p.w_scales[channel])) *
                                               (up * (x_scale * p.w_scales[outputs + channel]));
      store<T>(p.y, std::int64_t(row) * p.y_stride + channel, value);
    }
  } else {
    for (int slot = threadIdx.x; slot < kGroups * 4 * 32; slot += kThreads) {
      const int r = slot / 128, i = (slot / 32) % 4, l = slot % 32;
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += partial[w][r][i][l];
      const int row = r * 8 + 2 * (l & 3) + (i & 1), channel = channel0 + (l >> 2) + 8 * (i >> 1);
      if (row >= p.m || channel >= p.n) continue;
      const float x_scale = x_scale_of(row);
      store<T>(p.y, std::int64_t(row) * p.y_stride + channel,
               isnan(x_scale) ? x_scale : sum * (x_scale * p.w_scales[channel]));
    }
  }
}

template <typename T, int kGroups, typename X, bool kSiluMul>
cudaError_t launch(const Fp8SmallGemm& gemm, cudaStream_t stream) {
  const int rows_a_block = kSiluMul ? kTile / 2 : kTile;
  const int outputs = kSiluMul ? gemm.n / 2 : gemm.n;
  const std::size_t smem = std::is_same_v<X, std::uint8_t> ? 0 : std::size_t(gemm.m) * x_pitch(gemm.k);
  const dim3 grid((outputs + rows_a_block - 1) / rows_a_block);
  return detail::launch_dependent(fp8_small_gemm_kernel<T, kGroups, X, kSiluMul>, grid, dim3(kThreads), smem, stream,
                                  gemm);
}

template <typename T, typename X, bool kSiluMul>
cudaError_t launch_rows(const Fp8SmallGemm& gemm, cudaStream_t stream) {
  if constexpr (!std::is_same_v<X, std::uint8_t>) return launch<T, 1, X, kSiluMul>(gemm, stream);  // m <= 2
  else return gemm.m <= 8 ? launch<T, 1, X, kSiluMul>(gemm, stream) : launch<T, 2, X, kSiluMul>(gemm, stream);
}

template <typename T, typename X>
cudaError_t launch_epilogue(const Fp8SmallGemm& gemm, cudaStream_t stream) {
  return gemm.silu_mul ? launch_rows<T, X, true>(gemm, stream) : launch_rows<T, X, false>(gemm, stream);
}

template <typename T>
cudaError_t launch_x(const Fp8SmallGemm& gemm, cudaStream_t stream) {
  if (gemm.x16 == nullptr) return launch_epilogue<T, std::uint8_t>(gemm, stream);
  // x in its 16-bit type is quantized here; y in the same type (f32 y takes codes)
  if constexpr (std::is_same_v<T, float>) return cudaErrorInvalidValue;
  else return launch_epilogue<T, T>(gemm, stream);
}

bool device_has_fp8_mma() {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return major * 10 + minor >= 89;
}

}  // namespace

bool fp8_small_gemm_supported(int m, int k, const void* x_codes, const void* w_codes) {
  static const bool fp8_mma = device_has_fp8_mma();
  return fp8_mma && m >= 1 && m <= fp8_small_gemm_max_rows && k > 0 && k % kChunk == 0 &&
         reinterpret_cast<std::uintptr_t>(x_codes) % 16 == 0 && reinterpret_cast<std::uintptr_t>(w_codes) % 16 == 0;
}

bool fp8_small_gemm_quantizes(int m, int k, const void* x16, std::int64_t x16_stride) {
  return fp8_small_gemm_supported(m, k, x16, nullptr) && x16_stride >= k && x16_stride % 8 == 0 &&
         m <= kMaxQuantizedRows && std::int64_t(m) * k <= kMaxQuantizedValues;
}

cudaError_t fp8_small_gemm(const Fp8SmallGemm& gemm, cudaStream_t stream) {
  const bool quantizes = gemm.x16 != nullptr;
  const int outputs = gemm.silu_mul ? gemm.n / 2 : gemm.n;
  if (gemm.n < 0 || (gemm.silu_mul && gemm.n % 2 != 0) || gemm.y_stride < outputs ||
      !fp8_small_gemm_supported(gemm.m, gemm.k, quantizes ? gemm.x16 : gemm.x_codes, gemm.w_codes) ||
      (quantizes && !fp8_small_gemm_quantizes(gemm.m, gemm.k, gemm.x16, gemm.x16_stride)))
    return cudaErrorInvalidValue;
  if (gemm.n == 0) return cudaSuccess;
  switch (gemm.y_dtype) {
    case DType::bf16: return launch_x<__nv_bfloat16>(gemm, stream);
    case DType::f16: return launch_x<__half>(gemm, stream);
    case DType::f32: return quantizes ? cudaErrorInvalidValue : launch_x<float>(gemm, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace hostrun::cuda
