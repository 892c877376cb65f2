// Dense attention on mma.sync (m16n8k16, bf16). CTA = 4 warps, 64 query rows
// of one (batch, head); each warp owns 16 rows:
//
//   Q tile -> shared (f32 loaded through strides, rounded to bf16), kept in
//   registers as A fragments;
//   for each 64-key tile: K and V -> shared the same way;
//     S = Q K^T, scaled into log2 units, keys past kv_len -inf;
//     online softmax (running max m and sum l per row), O rescaled;
//     O += P V, P taken from S's accumulators as the A operand;
//   out = O / l, written as f32 through out's strides.
//
// Loads go through registers (not cp.async) because they convert f32 to
// bf16; with dim the fastest axis they are coalesced. The head size is
// padded with zeros to the instance's kPad (16, 32 or 64 columns; Q and K to
// at least 32, so the S product always takes k-steps in pairs): any head
// size up to 64 runs, and only its real columns are written.
#include <cuda_bf16.h>

#include "cuda/common.cuh"
#include "cuda/dense_attention.hpp"
#include "cuda/mma.cuh"

namespace hostrun::cuda {

namespace {

using detail::ldmatrix_x4;
using detail::ldmatrix_x4_trans;
using detail::mma_16816;
using detail::pack2;
using bf16 = __nv_bfloat16;

constexpr int kRows = 64;     // queries per CTA
constexpr int kKeys = 64;     // keys per tile
constexpr int kThreads = 128;

__device__ __forceinline__ std::int64_t at(const ref::AttentionStrides& s, int b, int h, int t, int d) {
  return b * s.batch + h * s.head + t * s.token + d * s.dim;
}

struct Params {
  ref::DenseAttentionShape shape;
  const float *q, *k, *v;
  float* out;
  ref::AttentionStrides qs, ks, vs, os;
  float scale_log2;
};

// rows x kDim of `src` (rows from `first`, zero past `count` and past `dim`) into shared bf16 [rows][kRow].
template <int kDim, int kRow>
__device__ __forceinline__ void load_tile(bf16* tile, const float* src, const ref::AttentionStrides& s, int b, int h,
                                          int first, int count, int dim) {
  for (int e = threadIdx.x; e < kRows * kDim; e += kThreads) {
    const int r = e / kDim, d = e % kDim;
    const int t = first + r;
    const float x = (t < count && d < dim) ? src[at(s, b, h, t, d)] : 0.0f;
    tile[r * kRow + d] = __float2bfloat16_rn(x);
  }
}

// kPad: the head size rounded up (V and O columns); kDim: Q and K columns.
template <int kPad>
__global__ void __launch_bounds__(kThreads) dense_attention_kernel(const Params p) {
  constexpr int kDim = kPad < 32 ? 32 : kPad;
  constexpr int kRow = kDim + 8;  // +16 bytes: ldmatrix rows fall in different banks
  constexpr int KSTEPS = kDim / 16;
  constexpr int DTILES = kPad / 8;
  __shared__ __align__(16) bf16 q_tile[kRows * kRow];
  __shared__ __align__(16) bf16 k_tile[kKeys * kRow];
  __shared__ __align__(16) bf16 v_tile[kKeys * kRow];

  const int b = blockIdx.z, h = blockIdx.y, row0 = blockIdx.x * kRows;
  const int q_len = p.shape.q_len, kv_len = p.shape.kv_len, head_dim = p.shape.head_dim;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int quad_col = (lane % 4) * 2;

  load_tile<kDim, kRow>(q_tile, p.q, p.qs, b, h, row0, q_len, head_dim);
  __syncthreads();
  std::uint32_t q_frag[KSTEPS][4];
#pragma unroll
  for (int kk = 0; kk < KSTEPS; ++kk)
    ldmatrix_x4(q_frag[kk], q_tile + (warp * 16 + lane % 16) * kRow + kk * 16 + (lane / 16) * 8);

  float o[DTILES][4];
#pragma unroll
  for (int d = 0; d < DTILES; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;

  for (int key0 = 0; key0 < kv_len; key0 += kKeys) {
    load_tile<kDim, kRow>(k_tile, p.k, p.ks, b, h, key0, kv_len, head_dim);
    load_tile<kPad, kRow>(v_tile, p.v, p.vs, b, h, key0, kv_len, head_dim);
    __syncthreads();

    float s[kKeys / 8][4];
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KSTEPS; kk += 2) {
        std::uint32_t f[4];
        ldmatrix_x4(f, k_tile + (nt * 8 + lane % 8) * kRow + kk * 16 + (lane / 8) * 8);
        mma_16816<bf16>(s[nt], q_frag[kk], f[0], f[1]);
        mma_16816<bf16>(s[nt], q_frag[kk + 1], f[2], f[3]);
      }
    }
    const bool partial = key0 + kKeys > kv_len;
    float max_lo = m_lo, max_hi = m_hi;
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[nt][e] * p.scale_log2;
        if (partial && key0 + nt * 8 + quad_col + (e & 1) >= kv_len) x = -INFINITY;
        s[nt][e] = x;
      }
      max_lo = fmaxf(max_lo, fmaxf(s[nt][0], s[nt][1]));
      max_hi = fmaxf(max_hi, fmaxf(s[nt][2], s[nt][3]));
    }
    // A row's 64 columns are spread over the 4 threads of a quad.
    max_lo = fmaxf(max_lo, __shfl_xor_sync(0xffffffffu, max_lo, 1));
    max_lo = fmaxf(max_lo, __shfl_xor_sync(0xffffffffu, max_lo, 2));
    max_hi = fmaxf(max_hi, __shfl_xor_sync(0xffffffffu, max_hi, 1));
    max_hi = fmaxf(max_hi, __shfl_xor_sync(0xffffffffu, max_hi, 2));
    // The first tile holds key 0: maxima are finite from then on, and
    // exp2(-inf - finite) = 0 rescales the empty start.
    const float alpha_lo = exp2f(m_lo - max_lo), alpha_hi = exp2f(m_hi - max_hi);
    m_lo = max_lo;
    m_hi = max_hi;
    float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - m_lo);
      s[nt][1] = exp2f(s[nt][1] - m_lo);
      s[nt][2] = exp2f(s[nt][2] - m_hi);
      s[nt][3] = exp2f(s[nt][3] - m_hi);
      sum_lo += s[nt][0] + s[nt][1];
      sum_hi += s[nt][2] + s[nt][3];
    }
    l_lo = l_lo * alpha_lo + sum_lo;
    l_hi = l_hi * alpha_hi + sum_hi;
#pragma unroll
    for (int d = 0; d < DTILES; ++d) {
      o[d][0] *= alpha_lo;
      o[d][1] *= alpha_lo;
      o[d][2] *= alpha_hi;
      o[d][3] *= alpha_hi;
    }
#pragma unroll
    for (int kt = 0; kt < kKeys / 16; ++kt) {
      // n-tiles 2kt and 2kt+1 of S are the A fragment of P over keys 16kt .. 16kt+15.
      const std::uint32_t a[4] = {pack2<bf16>(s[2 * kt][0], s[2 * kt][1]), pack2<bf16>(s[2 * kt][2], s[2 * kt][3]),
                                  pack2<bf16>(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                                  pack2<bf16>(s[2 * kt + 1][2], s[2 * kt + 1][3])};
#pragma unroll
      for (int d = 0; d < DTILES; d += 2) {
        std::uint32_t f[4];
        ldmatrix_x4_trans(f, v_tile + (kt * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kRow + d * 8 + (lane / 16) * 8);
        mma_16816<bf16>(o[d], a, f[0], f[1]);
        mma_16816<bf16>(o[d + 1], a, f[2], f[3]);
      }
    }
    __syncthreads();  // the next tile overwrites k_tile and v_tile
  }

  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + warp * 16 + lane / 4 + half * 8;
    if (row >= q_len) continue;
    const float inv = 1.0f / (half == 0 ? l_lo : l_hi);
#pragma unroll
    for (int d = 0; d < DTILES; ++d) {
      const int col = d * 8 + quad_col;
      if (col < head_dim) p.out[at(p.os, b, h, row, col)] = o[d][2 * half] * inv;
      if (col + 1 < head_dim) p.out[at(p.os, b, h, row, col + 1)] = o[d][2 * half + 1] * inv;
    }
  }
}

}  // namespace

bool dense_attention_supports(int head_dim) { return head_dim >= 1 && head_dim <= 64; }

cudaError_t dense_attention(const ref::DenseAttentionShape& shape, const float* q, const ref::AttentionStrides& q_strides,
                            const float* k, const ref::AttentionStrides& k_strides, const float* v,
                            const ref::AttentionStrides& v_strides, float* out, const ref::AttentionStrides& out_strides,
                            cudaStream_t stream) {
  if (!dense_attention_supports(shape.head_dim) || shape.q_len < 1 || shape.kv_len < 1 || shape.batch < 1 ||
      shape.heads < 1)
    return cudaErrorInvalidValue;
  const Params p{shape, q, k, v, out, q_strides, k_strides, v_strides, out_strides,
                 shape.scale * 1.4426950408889634f};  // log2(e): the kernel's exp2
  const dim3 grid((shape.q_len + kRows - 1) / kRows, shape.heads, shape.batch);
  if (shape.head_dim <= 16) dense_attention_kernel<16><<<grid, kThreads, 0, stream>>>(p);
  else if (shape.head_dim <= 32) dense_attention_kernel<32><<<grid, kThreads, 0, stream>>>(p);
  else dense_attention_kernel<64><<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace hostrun::cuda
