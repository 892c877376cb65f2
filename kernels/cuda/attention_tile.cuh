// Internal to kernels/cuda: FlashAttention-2's inner step on mma.sync
// (m16n8k16), shared by the prefill kernel (attention_prefill.cuh, paged
// K/V with a causal mask) and dense attention (dense_attention.cu, the
// vision encoders': no mask, keys past the end cut off).
//
// A warp owns 16 query rows; a thread holds two of them, fragment rows
// g = lane / 4 ("lo") and g + 8 ("hi"), and four columns of every n8 tile.
// Per tile of kKeys keys:
//   S = Q K^T            Q as A fragments kept in registers, K rows in shared
//   S = -inf where the caller's mask says; c = scale * log2(e)
//   m' = max(m, c rowmax S); P = exp2(c S - m') (one FMA a score); O and l
//   rescaled by exp2(m - m')
//   O += P V             P taken from S's accumulators as the A operand
#pragma once

#include <cstdint>

#include "cuda/mma.cuh"

namespace hostrun::cuda::detail {

// The online softmax of a thread's two rows. Sums cover this thread's
// columns only until finish() adds the quad's.
struct RowSoftmax {
  float m_lo = -INFINITY, m_hi = -INFINITY;  // running maxima, log2 domain
  float l_lo = 0.0f, l_hi = 0.0f;            // running sums of exp2(s - m)

  // 1 / the row sums, once every tile has been attended.
  __device__ __forceinline__ void finish(float& inv_lo, float& inv_hi) {
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    inv_lo = 1.0f / l_lo;
    inv_hi = 1.0f / l_hi;
  }
};

// The softmax half of a tile, between the two products: s holds S = Q K^T
// of kKeys keys (m16n8 accumulator fragments); on return it holds P =
// exp2(c S - m'), the row sums are updated, and alpha_lo / alpha_hi are what
// O must be scaled by (rescale_rows) before this tile's P V is added. When
// `needs_mask`, key (key0 + column) is dropped from a row where masked(key,
// hi) is true (hi: the thread's second row). The first tile a row attends
// must hold a key it sees: maxima are finite from then on, and exp2(-inf -
// finite) = 0 rescales the empty start. The maximum is taken over the raw
// scores and scaled once: c > 0 and rounding is monotonic, so it is the
// maximum of the scaled ones, and each score then costs one FMA and an ex2.
template <int kKeys, typename Masked>
__device__ __forceinline__ void softmax_scores(float (&s)[kKeys / 8][4], int key0, float scale_log2, bool needs_mask,
                                               const Masked& masked, RowSoftmax& rows, float& alpha_lo,
                                               float& alpha_hi) {
  const int quad_col = (threadIdx.x % 4) * 2;  // first of the two columns a thread holds in a fragment
  float max_lo = -INFINITY, max_hi = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < kKeys / 8; ++nt) {
    if (needs_mask) {
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (masked(key0 + nt * 8 + quad_col + (e & 1), e >= 2)) s[nt][e] = -INFINITY;
    }
    max_lo = fmaxf(max_lo, fmaxf(s[nt][0], s[nt][1]));
    max_hi = fmaxf(max_hi, fmaxf(s[nt][2], s[nt][3]));
  }
  // The 4 threads of a quad hold one row's columns between them.
  max_lo = fmaxf(max_lo, __shfl_xor_sync(0xffffffffu, max_lo, 1));
  max_lo = fmaxf(max_lo, __shfl_xor_sync(0xffffffffu, max_lo, 2));
  max_hi = fmaxf(max_hi, __shfl_xor_sync(0xffffffffu, max_hi, 1));
  max_hi = fmaxf(max_hi, __shfl_xor_sync(0xffffffffu, max_hi, 2));
  max_lo = fmaxf(rows.m_lo, max_lo * scale_log2);
  max_hi = fmaxf(rows.m_hi, max_hi * scale_log2);
  alpha_lo = exp2_flush(rows.m_lo - max_lo);
  alpha_hi = exp2_flush(rows.m_hi - max_hi);
  rows.m_lo = max_lo;
  rows.m_hi = max_hi;
  float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
  for (int nt = 0; nt < kKeys / 8; ++nt) {
    s[nt][0] = exp2_flush(fmaf(s[nt][0], scale_log2, -max_lo));
    s[nt][1] = exp2_flush(fmaf(s[nt][1], scale_log2, -max_lo));
    s[nt][2] = exp2_flush(fmaf(s[nt][2], scale_log2, -max_hi));
    s[nt][3] = exp2_flush(fmaf(s[nt][3], scale_log2, -max_hi));
    sum_lo += s[nt][0] + s[nt][1];
    sum_hi += s[nt][2] + s[nt][3];
  }
  rows.l_lo = rows.l_lo * alpha_lo + sum_lo;
  rows.l_hi = rows.l_hi * alpha_hi + sum_hi;
}
template <int kTiles>
__device__ __forceinline__ void rescale_rows(float (&o)[kTiles][4], float alpha_lo, float alpha_hi) {
#pragma unroll
  for (int d = 0; d < kTiles; ++d) {
    o[d][0] *= alpha_lo;
    o[d][1] *= alpha_lo;
    o[d][2] *= alpha_hi;
    o[d][3] *= alpha_hi;
  }
}
// Both: what a step does between S = Q K^T and O += P V when the two run
// back to back.
template <int kKeys, int kHeadDim, typename Masked>
__device__ __forceinline__ void online_softmax(float (&s)[kKeys / 8][4], int key0, float scale_log2, bool needs_mask,
                                               const Masked& masked, float (&o)[kHeadDim / 8][4], RowSoftmax& rows) {
  float alpha_lo, alpha_hi;
  softmax_scores<kKeys>(s, key0, scale_log2, needs_mask, masked, rows, alpha_lo, alpha_hi);
  rescale_rows(o, alpha_lo, alpha_hi);
}

// n-tiles 2kt and 2kt+1 of P are, register for register, the A fragment of
// the 16x16 block of P over keys 16kt .. 16kt+15.
template <typename T, int kNTiles>
__device__ __forceinline__ void p_fragment(const float (&p)[kNTiles][4], int kt, std::uint32_t (&a)[4]) {
  a[0] = pack2<T>(p[2 * kt][0], p[2 * kt][1]);
  a[1] = pack2<T>(p[2 * kt][2], p[2 * kt][3]);
  a[2] = pack2<T>(p[2 * kt + 1][0], p[2 * kt + 1][1]);
  a[3] = pack2<T>(p[2 * kt + 1][2], p[2 * kt + 1][3]);
}

// One tile. k_tile and v_tile: [kKeys][kRow] 16-bit rows in shared memory
// (kRow = smem_row<kHeadDim>, attention_common.cuh's padding); masking as in
// online_softmax.
template <typename T, int kHeadDim, int kKeys, int kRow, typename Masked>
__device__ __forceinline__ void attend_tile(const std::uint32_t (&q_frag)[kHeadDim / 16][4], const T* k_tile,
                                            const T* v_tile, int key0, float scale_log2, bool needs_mask,
                                            const Masked& masked, float (&o)[kHeadDim / 8][4], RowSoftmax& rows) {
  constexpr int KSTEPS = kHeadDim / 16;  // k-steps of S = Q K^T (taken in pairs)
  constexpr int DTILES = kHeadDim / 8;   // n8 tiles of O
  static_assert(KSTEPS % 2 == 0, "S's k-steps go in pairs: head sizes are multiples of 32");
  const int lane = threadIdx.x % 32;

  float s[kKeys / 8][4];
#pragma unroll
  for (int nt = 0; nt < kKeys / 8; ++nt) {
    s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk += 2) {
      std::uint32_t b[4];
      ldmatrix_x4(b, k_tile + (nt * 8 + lane % 8) * kRow + kk * 16 + (lane / 8) * 8);
      mma_16816<T>(s[nt], q_frag[kk], b[0], b[1]);
      mma_16816<T>(s[nt], q_frag[kk + 1], b[2], b[3]);
    }
  }

  online_softmax<kKeys, kHeadDim>(s, key0, scale_log2, needs_mask, masked, o, rows);

#pragma unroll
  for (int kt = 0; kt < kKeys / 16; ++kt) {
    std::uint32_t a[4];
    p_fragment<T>(s, kt, a);
#pragma unroll
    for (int d = 0; d < DTILES; d += 2) {
      std::uint32_t b[4];
      ldmatrix_x4_trans(b, v_tile + (kt * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kRow + d * 8 + (lane / 16) * 8);
      mma_16816<T>(o[d], a, b[0], b[1]);
      mma_16816<T>(o[d + 1], a, b[2], b[3]);
    }
  }
}

}  // namespace hostrun::cuda::detail
