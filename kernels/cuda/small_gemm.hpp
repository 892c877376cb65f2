// The linear layer for a handful of rows (twin of ref/gemm.hpp):
//
//   y[m, n] = sum_k x[m, k] * weight[n, k]      (y = x @ weight^T, HF layout)
//
//   x       [m, k] bf16 / f16, row-major, 1 <= m <= small_gemm_max_rows
//   weight  [n, k] the same dtype, row-major
//   y       [m, n] the same dtype, or f32 (y_f32), f32 accumulation
//
// Why: at batch 1..8 a decode step reads every weight once and does almost
// no arithmetic, so the layer is a copy of the weights through the SMs at
// memory bandwidth. One warp per output column streams its weight row with
// 16-byte loads (four in flight per lane) that bypass L1, and keeps the m
// rows of x (a few KB, L1/L2-resident) in registers' reach; no shared
// memory, no tensor cores. Needs k % 8 == 0 and 16-byte aligned x, weight;
// small_gemm() returns cudaErrorInvalidValue otherwise (callers fall back
// to cuBLAS).
//
// Every kernel here is launched as a programmatic dependent of the kernel
// before it in the stream (sm_90): it starts while that kernel finishes and
// issues its first weight loads before waiting for x (common.cuh), which
// hides the few microseconds of ramp that otherwise cost a 50 MB projection
// a quarter of its time. So the weights must not be written by earlier work
// in the same stream; x may be.
#pragma once

#include <cstdint>

#include "cuda/dtype.hpp"

namespace hostrun::cuda {

inline constexpr int small_gemm_max_rows = 8;

// Whether small_gemm() takes this problem.
bool small_gemm_supported(DType dtype, int m, int k, const void* x, const void* weight);

cudaError_t small_gemm(const void* x, const void* weight, DType dtype, int m, int n, int k, void* y, bool y_f32,
                       cudaStream_t stream);

// The MLP's first half for a few rows (twin of ref::gemm then ref::silu_and_mul):
//   gate_up_weight [2 intermediate, k] = [gate | up] (llama_cuda's fused layout)
//   out[r, j] = silu(x[r] . gate_j) * (x[r] . up_j), out [m, intermediate] in dtype
// Each product is rounded to dtype before the SiLU, as the unfused path
// stores it; no [m, 2 intermediate] intermediate is written or launched for.
cudaError_t small_gemm_silu_mul(const void* x, const void* gate_up_weight, DType dtype, int m, int intermediate_size,
                                int k, void* out, cudaStream_t stream);

// The attention input projection for a few rows with RoPE in its epilogue
// (twin of ref::gemm, rounding to dtype, then ref::apply_rope on the rounded
// values): y = x @ weight^T [m, n] in dtype, then the first rope_heads heads
// of each row (head_dim columns each, HF's rotate_half pairing i with
// i + head_dim/2) rotated by position positions[r] (f32 angle
// float(position) * inv_freq[i], cos/sin in double). Columns past those heads
// (V) are stored as computed. n and head_dim even. One warp computes both
// columns of a rotated pair, so the separate RoPE launch (and its read and
// write of q and k) goes away.
cudaError_t small_gemm_rope(const void* x, const void* weight, DType dtype, int m, int n, int k, int rope_heads,
                            int head_dim, const std::int32_t* positions, const float* inv_freq, void* y,
                            cudaStream_t stream);

// For test_kernels_cuda --bench only: small_gemm (or, gated, small_gemm_silu_mul)
// at m = 1 in bf16 with another launch shape (unroll x warps per block:
// 2x4, 4x4, 8x4, 4x8, 8x8, 8x2), to measure the choice made above.
cudaError_t small_gemm_sweep(int unroll, int warps_per_block, bool gated, const void* x, const void* weight, int n,
                             int k, void* y, cudaStream_t stream);

}  // namespace hostrun::cuda
