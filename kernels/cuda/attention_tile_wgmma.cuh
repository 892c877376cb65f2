// Internal to kernels/cuda: the attention tile step of attention_tile.cuh on
// Hopper's warpgroup MMA (sm_90a only). A warpgroup of four warps owns 64
// query rows, warp w rows 16w .. 16w + 15 with the same per-thread rows and
// columns as the mma.sync step, so the softmax between the products is that
// step's own (online_softmax):
//
//   S = Q K^T   kHeadDim/16 wgmma m64n<kKeys>k16: Q from registers, K from
//               shared memory (K-major)
//   softmax     online_softmax, P left in S's registers
//   O += P V    kKeys/16 wgmma m64n<kHeadDim>k16: P from registers, V from
//               shared memory (MN-major: each key's values contiguous)
//
// K and V tiles are laid out with wgmma's 128-byte swizzle (wgmma.cuh;
// KvTileStream's TileLayout::swizzled_128 writes it): element (key, c) of a
// tile of kKeys keys in column block c / 64 (kKeys * 64 elements each), row
// key, 16-byte piece ((c % 64) / 8) ^ (key % 8). K is the K-major operand
// (each key's head dims along the row), V the MN-major one (each key's head
// dims along the row, keys being k).
//
// Each product is issued whole, then waited for: the step is a chain of
// three dependent phases per warpgroup, and two CTAs an SM overlap them.
#pragma once

#include <cstdint>

#include "cuda/attention_tile.cuh"
#include "cuda/wgmma.cuh"

namespace hostrun::cuda::detail {

// Issues S = Q K^T over one K tile (s is overwritten), uncommitted.
template <typename T, int kHeadDim, int kKeys>
__device__ __forceinline__ void issue_scores(float (&s)[kKeys / 8][4], const std::uint32_t (&q_frag)[kHeadDim / 16][4],
                                             const T* k_tile) {
  static_assert(kKeys == 64 || (kKeys == 16 && kHeadDim == 64), "S is m64n64k16, or m64n16k16 over one column block");
  constexpr int kAtomBytes = 8 * 128;  // 8 keys' 128-byte rows
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    // K as B (n = keys, k = head dims), K-major: a k16 step is 32 bytes of
    // a row, four to a 64-column block.
    const T* start = k_tile + (kk / 4) * (kKeys * 64) + (kk % 4) * 16;
    const std::uint64_t desc = smem_swizzled_descriptor(start, 16, kAtomBytes);
    if constexpr (kKeys == 64) wgmma_m64n64k16_rs<T>(s, q_frag[kk], desc, kk > 0);
    else wgmma_m64n16k16_rs<T>(s, q_frag[kk], desc, kk > 0);
  }
}
// Issues O += P V over one V tile, uncommitted; p: p_fragment's of P.
template <typename T, int kHeadDim, int kKeys>
__device__ __forceinline__ void issue_values(float (&o)[kHeadDim / 8][4], const std::uint32_t (&p)[kKeys / 16][4],
                                             const T* v_tile) {
  // A tile of kKeys keys; with heads of 128 its buffer holds exactly that
  // many (the column blocks' stride), with 64 the one block is all there is.
  static_assert(kHeadDim == 64 || (kHeadDim == 128 && kKeys == 64), "O is m64n64k16 or m64n128k16");
  constexpr int kAtomBytes = 8 * 128;              // 8 keys' 128-byte rows
  constexpr int kColumnBlockBytes = kKeys * 128;   // 64 head dims of every key
#pragma unroll
  for (int kt = 0; kt < kKeys / 16; ++kt) {
    // V as B (k = keys, n = head dims), MN-major: a k16 step is two atoms
    // of keys; with heads of 128, n spans two column blocks.
    const std::uint64_t desc = smem_swizzled_descriptor(v_tile + kt * 16 * 64, kColumnBlockBytes, kAtomBytes);
    if constexpr (kHeadDim == 128) wgmma_m64n128k16_rs_trans_b<T>(o, p[kt], desc, 1);
    else wgmma_m64n64k16_rs_trans_b<T>(o, p[kt], desc, 1);
  }
}

// The phases of the software-pipelined K/V loop (FlashAttention-3's overlap
// inside one warpgroup), shared by attention_prefill.cuh's two-warpgroup
// kernel and the warp-specialized one: each kernel only decides when a
// buffer may be read and when it may be refilled.
//
// Tile 0: S = Q K^T, its softmax, P packed for the first P V.
template <typename T, int kHeadDim, int kKeys, typename Masked>
__device__ __forceinline__ void pipelined_first_scores(const std::uint32_t (&q_frag)[kHeadDim / 16][4],
                                                       const T* k_tile, float scale_log2, bool needs_mask,
                                                       const Masked& masked, float (&s)[kKeys / 8][4],
                                                       std::uint32_t (&p_frag)[kKeys / 16][4], RowSoftmax& rows) {
  wgmma_fence();
  issue_scores<T, kHeadDim, kKeys>(s, q_frag, k_tile);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operands(s);
  float alpha_lo, alpha_hi;  // O is still zero
  softmax_scores<kKeys>(s, 0, scale_log2, needs_mask, masked, rows, alpha_lo, alpha_hi);
#pragma unroll
  for (int kt = 0; kt < kKeys / 16; ++kt) p_fragment<T>(s, kt, p_frag[kt]);
}
// Step n: S(n + 1) = Q K(n + 1)^T and O += P(n) V(n) in flight together, the
// softmax of tile n + 1 (keys from key0) while P V runs, then O rescaled and
// P(n + 1) packed. Both products have completed on return. The branches stay
// outside the wgmma stages (ptxas serializes wgmmas whose stage holds
// control flow).
//
// kSkipSettledRescale: once a row's maximum has settled, exp2(m - m') is
// exactly 1 and the rescale's multiplies change nothing; a warp then skips
// them when none of its rows moved. That frees issue slots for a producer
// warp sharing the schedulers (the ws kernel over quantized pages, which its
// dequantization binds: +3-5%), and costs where the consumers bind (bf16
// pages: -12%; kernels/cuda/NOTES.md, softmax).
template <typename T, int kHeadDim, int kKeys, bool kSkipSettledRescale = false, typename Masked>
__device__ __forceinline__ void pipelined_step(const std::uint32_t (&q_frag)[kHeadDim / 16][4], const T* k_next,
                                               const T* v_current, int key0, float scale_log2, bool needs_mask,
                                               const Masked& masked, float (&s)[kKeys / 8][4],
                                               std::uint32_t (&p_frag)[kKeys / 16][4], float (&o)[kHeadDim / 8][4],
                                               RowSoftmax& rows) {
  wgmma_fence_operands(o);
  wgmma_fence();
  issue_scores<T, kHeadDim, kKeys>(s, q_frag, k_next);
  wgmma_commit();
  issue_values<T, kHeadDim, kKeys>(o, p_frag, v_current);
  wgmma_commit();
  wgmma_wait<1>();
  wgmma_fence_operands(s);
  float alpha_lo, alpha_hi;
  softmax_scores<kKeys>(s, key0, scale_log2, needs_mask, masked, rows, alpha_lo, alpha_hi);
  wgmma_wait<0>();
  wgmma_fence_operands(o);
  if (!kSkipSettledRescale || __any_sync(0xffffffffu, alpha_lo != 1.0f || alpha_hi != 1.0f))
    rescale_rows(o, alpha_lo, alpha_hi);
#pragma unroll
  for (int kt = 0; kt < kKeys / 16; ++kt) p_fragment<T>(s, kt, p_frag[kt]);
}
// The last tile's O += P V, completed on return.
template <typename T, int kHeadDim, int kKeys>
__device__ __forceinline__ void pipelined_last_values(const std::uint32_t (&p_frag)[kKeys / 16][4], const T* v_tile,
                                                      float (&o)[kHeadDim / 8][4]) {
  wgmma_fence_operands(o);
  wgmma_fence();
  issue_values<T, kHeadDim, kKeys>(o, p_frag, v_tile);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operands(o);
}

// attention_tile.cuh's attend_tile on wgmma: S, softmax, O += P V, each
// product waited for before the next phase.
template <typename T, int kHeadDim, int kKeys, typename Masked>
__device__ __forceinline__ void attend_tile_wgmma(const std::uint32_t (&q_frag)[kHeadDim / 16][4], const T* k_tile,
                                                  const T* v_tile, int key0, float scale_log2, bool needs_mask,
                                                  const Masked& masked, float (&o)[kHeadDim / 8][4],
                                                  RowSoftmax& rows) {
  float s[kKeys / 8][4];
  wgmma_fence();
  issue_scores<T, kHeadDim, kKeys>(s, q_frag, k_tile);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operands(s);

  online_softmax<kKeys, kHeadDim>(s, key0, scale_log2, needs_mask, masked, o, rows);

  std::uint32_t p[kKeys / 16][4];
#pragma unroll
  for (int kt = 0; kt < kKeys / 16; ++kt) p_fragment<T>(s, kt, p[kt]);
  wgmma_fence_operands(o);
  wgmma_fence();
  issue_values<T, kHeadDim, kKeys>(o, p, v_tile);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operands(o);
}

}  // namespace hostrun::cuda::detail
