// Internal to kernels/cuda: what dense_attention.cu's attend kernel (mma.sync)
// and dense_attention_wgmma.cu's (Hopper's wgmma, sm_90a only) share -- where
// the operands' rows lie, loading rows into padded shared-memory tiles, and
// writing a warp's finished rows -- and the entry to the wgmma kernel.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "cuda/attention_common.cuh"
#include "cuda/attention_tile.cuh"
#include "cuda/dtype.hpp"
#include "ref/dense_attention.hpp"

namespace hostrun::cuda::detail::dense {

using bf16 = __nv_bfloat16;

// Query rows a CTA of either attend kernel owns (four mma.sync warps of two
// m-tiles, or two warpgroups of 64); the host sizes the grid by it.
constexpr int kRows = 128;
constexpr int kKeys = 64;  // keys per K/V tile

// Where an attend kernel reads an operand's rows: the row of token t of
// (b, h) at data + b * batch + h * head + t * token (elements).
struct Rows {
  const bf16* data = nullptr;
  std::int64_t batch = 0, head = 0, token = 0;
  __device__ __forceinline__ const bf16* of(int b, int h) const { return data + (b * batch + h * head); }
};

struct AttendParams {
  Rows q, k, v;
  void* out = nullptr;
  ref::AttentionStrides os;
  bool pair_writes = false;  // dim contiguous and every row's start even: two columns per store
  int heads = 0, q_len = 0, kv_len = 0, head_dim = 0, q_tiles = 0;
  float scale_log2 = 0.0f;
};

// kCount rows of `src` (token stride `token`) from `first` into a
// [kCount][smem_row] tile by kThreads threads, zeros from `count` on
// (uncommitted cp.async).
template <int kDim, int kCount, int kThreads>
__device__ __forceinline__ void load_rows(bf16* tile, const bf16* src, std::int64_t token, int first, int count) {
  constexpr int kChunks = kDim / 8, kRow = smem_row<kDim>;
  for (int e = threadIdx.x; e < kCount * kChunks; e += kThreads) {
    const int r = e / kChunks, c = e % kChunks, t = first + r;
    const bool valid = t < count;
    cp_async_16(tile + r * kRow + c * 8, src + (valid ? t : 0) * token + c * 8, valid);
  }
}

// out = O / l for one warp's 16-row m-tile whose first row is `row0`: this
// thread's rows row0 + lane / 4 and row0 + lane / 4 + 8, through the output
// strides as f32 or bf16.
template <int kDim, typename Out>
__device__ __forceinline__ void store_rows(const AttendParams& p, int b, int h, int row0,
                                           const float (&o)[kDim / 8][4], RowSoftmax& softmax) {
  const int lane = threadIdx.x % 32, quad_col = (lane % 4) * 2;
  float inv[2];
  softmax.finish(inv[0], inv[1]);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + lane / 4 + half * 8;
    if (row >= p.q_len) continue;
    Out* base = static_cast<Out*>(p.out) + (b * p.os.batch + h * p.os.head + std::int64_t(row) * p.os.token);
#pragma unroll
    for (int d = 0; d < kDim / 8; ++d) {
      const int col = d * 8 + quad_col;
      const float x0 = o[d][2 * half] * inv[half], x1 = o[d][2 * half + 1] * inv[half];
      if (p.pair_writes && col + 1 < p.head_dim) {
        if constexpr (std::is_same_v<Out, float>) *reinterpret_cast<float2*>(base + col) = float2{x0, x1};
        else *reinterpret_cast<std::uint32_t*>(base + col) = pack2<bf16>(x0, x1);
      } else {
        if (col < p.head_dim) base[col * p.os.dim] = from_f32<Out>(x0);
        if (col + 1 < p.head_dim) base[(col + 1) * p.os.dim] = from_f32<Out>(x1);
      }
    }
  }
}

// The attend step on wgmma (dense_attention_wgmma.cu): heads of exactly 64,
// operands as rows of bf16 (read in place or gathered), grid = batch * heads
// * q_tiles CTAs of kRows query rows. Built only with the sm_90a objects
// (HOSTRUN_KERNELS_SM90A); runs on compute capability 9.0 only.
cudaError_t launch_attend_wgmma(const AttendParams& p, unsigned grid, DType out_dtype, cudaStream_t stream);

}  // namespace hostrun::cuda::detail::dense
