// The FP8 linear layer for a handful of rows (twin of ref::fp8_linear, whose
// formula it computes):
//
//   y[i, j] = sum_k e4m3(x_codes[i, k]) * e4m3(w_codes[j, k]) * (x_scales[i] * w_scales[j])
//
// (the sum in f32 by the tensor cores, the two scales once per output; a NaN
// x scale, which a row holding NaN or inf gets, makes the row's outputs NaN,
// as in ref). x arrives either as codes and scales (quantize_rows_e4m3 made
// them) or as its 16-bit rows, which the kernel quantizes itself exactly as
// quantize_rows_e4m3 would, into shared memory: at batch 1 that separate
// launch was ~10% of an FP8 layer (docs/benchmarks.md). With `silu_mul` the
// weights are [gate | up] and y receives silu(gate) * up (the SDK's
// SiLU-and-multiply epilogue), saving the model its own kernel.
//
// Why: a decode step of a few sequences reads each weight once and does
// almost no arithmetic, so the layer is a copy of the weights through the SMs.
// cuBLASLt's FP8 kernels tile at least 64 rows, so at batch 1-16 they move the
// weights with machinery built for compute. Here one warp owns 16 weight
// rows and a share of k: each lane streams 16 bytes of two weight rows and
// 16 bytes of one x row per 64-column chunk, and two m16n8k32 e4m3 mma.sync
// multiply them with the weights as A and x's rows as B (rows of x past m
// are zeros). The mma sums over its 32 columns in any order, so the columns
// a lane holds need not be the fragment's: the same permutation of k on A
// and B leaves every product where it was, and each lane reads contiguous
// bytes of the plain [n, k] layout (no repacking at load). The warps of a
// block split k and add their sums in shared memory. Each block quantizes
// all of x for itself (x is a few KB in L2; at one or two rows the work
// hides under the weight stream), so no block waits on another.
//
// sm_89 or newer; k % 64 == 0; 16-byte aligned codes; 1 <= m <= 16
// (fp8_small_gemm_supported); x quantized here for one or two rows of at
// most 16384 values in all (fp8_small_gemm_quantizes: beyond that the
// repeated quantization costs more than the launch it saves). Launched as a programmatic dependent of the
// kernel before it (sm_90): the first weight loads are issued before waiting
// for x, so the weights must not be written by earlier work in the stream.
#pragma once

#include <cstdint>

#include "cuda/dtype.hpp"

namespace hostrun::cuda {

inline constexpr int fp8_small_gemm_max_rows = 16;

struct Fp8SmallGemm {
  // x as codes: [m, k] contiguous, and a scale a row
  const std::uint8_t* x_codes = nullptr;
  const float* x_scales = nullptr;
  // or, when x16 is set, x's 16-bit rows [m, k] (x16_stride elements apart,
  // 16-byte aligned, in y_dtype), quantized here; static_scale as in
  // quantize_rows_e4m3 (0: dynamic)
  const void* x16 = nullptr;
  std::int64_t x16_stride = 0;
  float static_scale = 0.0f;
  const std::uint8_t* w_codes = nullptr;  // [n, k] contiguous
  const float* w_scales = nullptr;        // [n]
  int m = 0, n = 0, k = 0;
  bool silu_mul = false;                  // W = [gate | up] (n even): y [m, n / 2] = silu(gate) * up
  void* y = nullptr;                      // [m, n] (or n / 2), rows y_stride elements apart
  std::int64_t y_stride = 0;
  DType y_dtype = DType::bf16;            // bf16, f16 or f32 (f32 with codes only)
};

// Whether fp8_small_gemm() takes this problem on the current device.
bool fp8_small_gemm_supported(int m, int k, const void* x_codes, const void* w_codes);

// Whether it also takes x as 16-bit rows (Fp8SmallGemm::x16) for this problem.
bool fp8_small_gemm_quantizes(int m, int k, const void* x16, std::int64_t x16_stride);

// cudaErrorInvalidValue when !fp8_small_gemm_supported (or, with x16,
// !fp8_small_gemm_quantizes or x16 not in y_dtype), a size is negative, or
// silu_mul has an odd n.
cudaError_t fp8_small_gemm(const Fp8SmallGemm& gemm, cudaStream_t stream);

}  // namespace hostrun::cuda
