// The FP8 linear layer for a handful of rows, on codes the caller already
// quantized (twin of ref::fp8_linear, whose formula it computes):
//
//   y[i, j] = sum_k e4m3(x_codes[i, k]) * e4m3(w_codes[j, k]) * (x_scales[i] * w_scales[j])
//
// (the sum in f32 by the tensor cores, the two scales once per output; a NaN
// x scale, which quantize_rows_e4m3 gives a row holding NaN or inf, makes the
// row's outputs NaN, as in ref).
//
// Why: a decode step of a few sequences reads each weight once and does
// almost no arithmetic, so the layer is a copy of the weights through the SMs.
// cuBLASLt's FP8 kernels tile at least 64 rows, so at batch 1-16 they move the
// weights with machinery built for compute. Here one warp owns 16 output
// channels and a share of k: each lane streams 16 bytes of two weight rows and
// 16 bytes of one x row per 64-column chunk, and two m16n8k32 e4m3 mma.sync
// multiply them with the weights as A and x's rows as B (rows of x past m
// are zeros). The mma sums over its 32 columns in any order, so the columns
// a lane holds need not be the fragment's: the same permutation of k on A
// and B leaves every product where it was, and each lane reads contiguous
// bytes of the plain [n, k] layout (no repacking at load). The warps of a
// block split k and add their sums in shared memory.
//
// sm_89 or newer; k % 64 == 0; 16-byte aligned codes; 1 <= m <= 16
// (fp8_small_gemm_supported). Launched as a programmatic dependent of the
// kernel before it (sm_90): the first weight loads are issued before waiting
// for x_codes, so the weights must not be written by earlier work in the stream.
#pragma once

#include <cstdint>

#include "cuda/dtype.hpp"

namespace hostrun::cuda {

inline constexpr int fp8_small_gemm_max_rows = 16;

struct Fp8SmallGemm {
  const std::uint8_t* x_codes = nullptr;  // [m, k] contiguous
  const float* x_scales = nullptr;        // [m]
  const std::uint8_t* w_codes = nullptr;  // [n, k] contiguous
  const float* w_scales = nullptr;        // [n]
  int m = 0, n = 0, k = 0;
  void* y = nullptr;                      // [m, n], rows y_stride elements apart
  std::int64_t y_stride = 0;
  DType y_dtype = DType::bf16;            // bf16, f16 or f32
};

// Whether fp8_small_gemm() takes this problem on the current device.
bool fp8_small_gemm_supported(int m, int k, const void* x_codes, const void* w_codes);

// cudaErrorInvalidValue when !fp8_small_gemm_supported or a size is negative.
cudaError_t fp8_small_gemm(const Fp8SmallGemm& gemm, cudaStream_t stream);

}  // namespace hostrun::cuda
