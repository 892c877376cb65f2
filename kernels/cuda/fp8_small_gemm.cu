#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/fp8_small_gemm.hpp"

namespace hostrun::cuda {

namespace {

constexpr int kWarps = 8;     // warps a block: they split k
constexpr int kUnroll = 4;    // 64-column chunks a lane has in flight
constexpr int kChunk = 64;    // columns of k one warp multiplies per step (two m16n8k32)
constexpr int kTile = 16;     // output channels a block owns

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

// One block: output channels [16 blockIdx.x, +16) for every row, its warps
// taking the 64-column chunks warp, warp + kWarps, ... of k.
//
// Lane (g = lane / 4, t = lane % 4) of a chunk at c holds bytes [16 t, 16 t + 16)
// of weight rows g and g + 8 and of x row g (of the row group). The first mma
// takes each row's bytes 16 t + [0, 8), the second 16 t + [8, 16): fragment
// registers a0/a1 (rows g, g + 8; the fragment's columns 4t..4t+3) get bytes
// +[0, 4), a2/a3 (columns 16+4t..) bytes +[4, 8), and b0/b1 of x the same
// bytes, so A and B see one permutation of the 32 columns.
template <typename T, int kGroups>
__global__ void __launch_bounds__(kWarps * 32)
    fp8_small_gemm_kernel(Fp8SmallGemm p) {
  __shared__ float partial[kWarps][kGroups][4][32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int channel0 = blockIdx.x * kTile;
  const bool row_lo = channel0 + g < p.n, row_hi = channel0 + g + 8 < p.n;
  const std::uint8_t* w_lo = p.w_codes + std::int64_t(row_lo ? channel0 + g : 0) * p.k + 16 * t;
  const std::uint8_t* w_hi = p.w_codes + std::int64_t(row_hi ? channel0 + g + 8 : 0) * p.k + 16 * t;
  const std::uint8_t* x_row[kGroups];
  bool x_valid[kGroups];
#pragma unroll
  for (int r = 0; r < kGroups; ++r) {
    x_valid[r] = r * 8 + g < p.m;
    x_row[r] = p.x_codes + std::int64_t(x_valid[r] ? r * 8 + g : 0) * p.k + 16 * t;
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
      const uint4 b = x_valid[r] ? __ldg(reinterpret_cast<const uint4*>(x_row[r] + at)) : zero;
      mma_e4m3(acc[r], a_lo.x, a_hi.x, a_lo.y, a_hi.y, b.x, b.y);
      mma_e4m3(acc[r], a_lo.z, a_hi.z, a_lo.w, a_hi.w, b.z, b.w);
    }
  };
  // Rows past n read row 0 of W (in bounds) and their sums are dropped.
  detail::allow_next_grid_to_launch();
  int chunk = warp;
  {  // the first group's weights are in flight before x is waited for
    uint4 lo[kUnroll], hi[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = chunk + u * kWarps;
      lo[u] = c < chunks ? load_streaming(w_lo + std::int64_t(c) * kChunk) : zero;
      hi[u] = c < chunks ? load_streaming(w_hi + std::int64_t(c) * kChunk) : zero;
    }
    detail::wait_for_previous_grid();
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
  // Accumulator i of lane (g, t): channel g + 8 (i / 2), x row 2 t + i % 2 of the group.
  for (int slot = threadIdx.x; slot < kGroups * 4 * 32; slot += kWarps * 32) {
    const int r = slot / 128, i = (slot / 32) % 4, l = slot % 32;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += partial[w][r][i][l];
    const int row = r * 8 + 2 * (l & 3) + (i & 1), channel = channel0 + (l >> 2) + 8 * (i >> 1);
    if (row >= p.m || channel >= p.n) continue;
    const float x_scale = p.x_scales[row];
    store<T>(p.y, std::int64_t(row) * p.y_stride + channel,
             isnan(x_scale) ? x_scale : sum * (x_scale * p.w_scales[channel]));
  }
}

template <typename T, int kGroups>
cudaError_t launch(const Fp8SmallGemm& gemm, cudaStream_t stream) {
  static const bool pdl = detail::device_has_pdl();
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3((gemm.n + kTile - 1) / kTile);
  config.blockDim = dim3(kWarps * 32);
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, fp8_small_gemm_kernel<T, kGroups>, gemm);
}

template <typename T>
cudaError_t launch_rows(const Fp8SmallGemm& gemm, cudaStream_t stream) {
  return gemm.m <= 8 ? launch<T, 1>(gemm, stream) : launch<T, 2>(gemm, stream);
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

cudaError_t fp8_small_gemm(const Fp8SmallGemm& gemm, cudaStream_t stream) {
  if (gemm.n < 0 || gemm.y_stride < gemm.n || !fp8_small_gemm_supported(gemm.m, gemm.k, gemm.x_codes, gemm.w_codes))
    return cudaErrorInvalidValue;
  if (gemm.n == 0) return cudaSuccess;
  switch (gemm.y_dtype) {
    case DType::bf16: return launch_rows<__nv_bfloat16>(gemm, stream);
    case DType::f16: return launch_rows<__half>(gemm, stream);
    case DType::f32: return launch_rows<float>(gemm, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace hostrun::cuda
