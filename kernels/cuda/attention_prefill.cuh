// Prefill attention over the paged KV cache (FlashAttention-2 style). Included
// only by the per-dtype instance files attention_prefill_{bf16,f16}.cu.
//
// CTA = 4 warps, 64 query rows. A row is one (new token, q head) pair of the
// CTA's kv head, row r = token * group + head_in_group, so the `group` q
// heads sharing a kv head share every K/V tile that is loaded (GQA: K/V read
// once per group, not once per head). Each warp owns 16 rows:
//
//   for each 64-position K/V tile (cp.async, double-buffered):
//     attention_tile.cuh's step: S = Q K^T, masked (-inf) where key position
//     > query position, online softmax, O += P V
//   out = O / l
//
// With kWgmma (sm_90a, head_dim 128; attention_prefill_wgmma_*.cu) the four
// warps are one warpgroup and each step's two products are wgmmas over K/V
// tiles in wgmma's 128-byte swizzle (attention_tile_wgmma.cuh); the rest of the
// kernel is the same.
//
// Tiles strictly below the CTA's first query position need no mask; only the
// ones crossing the diagonal do. The grid is (tiles, kv_heads) over the step's
// flat list of query tiles (paged_attention.cu's schedule), not (tiles,
// kv_heads, sequences): in a mixed step of 250 decodes and one long prompt the
// latter launched ~250x more CTAs than there was work for, each of which
// exited at once. Query positions: token j of a sequence with
// `cached` earlier tokens is at cached + j and sees keys 0 .. cached + j.
#pragma once

#include "cuda/attention_common.cuh"
#include "cuda/attention_tile.cuh"
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#include "cuda/attention_tile_wgmma.cuh"
#endif

namespace hostrun::cuda::detail {

// kBlockM, the query rows of a CTA: 64 or 128, a warp per 16 rows (wgmma:
// 128, two warpgroups). Each K/V tile fetched serves kBlockM rows; with GQA
// packing 64 rows are only 16 tokens, and the 64-row kernels (mma.sync and a
// one-warpgroup wgmma form) both stalled at ~150 TFLOP/s on the K/V re-reads
// (kernels/cuda/NOTES.md).
constexpr int prefill_block_n = 64;
template <int kBlockM>
constexpr int prefill_threads = 2 * kBlockM;

template <typename T, int kHeadDim, int kKvBits, bool kWgmma, int kBlockM>
using PrefillTiles = KvTileStream<T, kHeadDim, kKvBits, prefill_block_n, prefill_threads<kBlockM>, true, 2,
                                  kWgmma ? TileLayout::swizzled_128 : TileLayout::padded_rows>;

template <typename T, int kHeadDim, int kKvBits, bool kWgmma, int kBlockM>
constexpr int prefill_smem_bytes() {
  // The K/V tiles follow the Q rows; swizzled ones must start 1024-byte aligned.
  static_assert(!kWgmma || kBlockM * smem_row<kHeadDim> * 2 % 1024 == 0);
  return kBlockM * smem_row<kHeadDim> * 2 + PrefillTiles<T, kHeadDim, kKvBits, kWgmma, kBlockM>::kSmemBytes;
}

// One tile of the step's flat list of query tiles (paged_attention.cu's
// schedule) and what its rows see. A row is (new token, q head of the kv
// head's group); token j of a sequence with `cached` earlier positions is at
// cached + j and sees keys 0 .. cached + j.
struct PrefillQueryTile {
  int q_begin = 0;   // the sequence's first new token in the step
  int rows = 0;      // the sequence's rows: new tokens x group
  int group = 0;
  int cached = 0;
  const std::int32_t* block_table = nullptr;
  int row0 = 0;          // the tile's first row
  int last_row = 0;      // its last real row
  int max_position = 0;  // the furthest key any row of the tile sees
  int min_position = 0;  // the nearest diagonal
  int num_tiles = 0;     // K/V tiles of prefill_block_n positions it walks
};

// The positions of a thread's two rows (fragment rows g and g + 8 of warp
// `warp`'s 16); padding rows borrow the last real row's position so their
// softmax stays finite.
struct RowPositions {
  int row_lo = 0, pos_lo = 0, pos_hi = 0;
  __device__ __forceinline__ bool masked(int key, bool hi) const { return key > (hi ? pos_hi : pos_lo); }
};
__device__ __forceinline__ RowPositions row_positions(const PrefillQueryTile& tile, int warp, int lane) {
  RowPositions r;
  r.row_lo = tile.row0 + warp * 16 + lane / 4;
  r.pos_lo = tile.cached + min(r.row_lo, tile.last_row) / tile.group;
  r.pos_hi = tile.cached + min(r.row_lo + 8, tile.last_row) / tile.group;
  return r;
}

template <int kBlockM>
__device__ __forceinline__ PrefillQueryTile locate_query_tile(const AttentionKernelParams& p, int item) {
  // The sequence owning the tile: the last one whose first tile is <= item
  // (sequences without tiles share their start with the next one).
  int sequence = 0;
  for (int hi = p.num_sequences - 1; sequence < hi;) {
    const int mid = (sequence + hi + 1) / 2;
    if (p.prefill_tile_start[mid] <= item) sequence = mid;
    else hi = mid - 1;
  }
  PrefillQueryTile t;
  t.q_begin = p.query_start[sequence];
  const int q_len = p.query_start[sequence + 1] - t.q_begin;
  t.group = p.group;
  t.rows = q_len * t.group;
  t.cached = p.context_lens[sequence] - q_len;
  t.block_table = p.block_tables + static_cast<std::int64_t>(sequence) * p.max_blocks_per_sequence;
  t.row0 = (item - p.prefill_tile_start[sequence]) * kBlockM;
  t.last_row = min(t.rows, t.row0 + kBlockM) - 1;
  t.max_position = t.cached + t.last_row / t.group;
  t.min_position = t.cached + t.row0 / t.group;
  t.num_tiles = t.max_position / prefill_block_n + 1;
  return t;
}

// cp.async of the tile's queries into q_tile ([kBlockM][smem_row] rows,
// uncommitted) by kThreads threads, `thread` being this one's index among
// them; rows past the sequence's chunk are zero-filled.
template <typename T, int kHeadDim, int kBlockM, int kThreads>
__device__ __forceinline__ void copy_query_tile(const AttentionKernelParams& p, const PrefillQueryTile& tile,
                                                int kv_head, const T* q, T* q_tile, int thread) {
  constexpr int ROW = smem_row<kHeadDim>;
  constexpr int chunks = kHeadDim / 8;
  constexpr int rows_per_pass = kThreads / chunks;
  const int chunk = thread % chunks;
#pragma unroll
  for (int pass = 0; pass < kBlockM / rows_per_pass; ++pass) {
    const int r = pass * rows_per_pass + thread / chunks;
    const int row = tile.row0 + r;
    const bool valid = row < tile.rows;
    std::int64_t element = 0;
    if (valid) {
      const std::int64_t token = tile.q_begin + row / tile.group;
      element = token * p.q_row_stride + static_cast<std::int64_t>(kv_head * tile.group + row % tile.group) * kHeadDim +
                chunk * 8;
    }
    cp_async_16(q_tile + r * ROW + chunk * 8, q + element, valid);
  }
}

// The A fragments of warp `warp`'s 16 query rows (mma.m16n8k16's layout,
// which wgmma's register A shares).
template <int kHeadDim, typename T>
__device__ __forceinline__ void load_q_fragments(std::uint32_t (&q_frag)[kHeadDim / 16][4], const T* q_tile, int warp,
                                                 int lane) {
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk)
    ldmatrix_x4(q_frag[kk], q_tile + (warp * 16 + lane % 16) * smem_row<kHeadDim> + kk * 16 + (lane / 16) * 8);
}

// out = O / l for this thread's two rows (row_lo and row_lo + 8).
template <typename T, int kHeadDim>
__device__ __forceinline__ void store_output_rows(const AttentionKernelParams& p, const PrefillQueryTile& tile,
                                                  int kv_head, int row_lo, const float (&o)[kHeadDim / 8][4],
                                                  RowSoftmax& softmax) {
  T* out = static_cast<T*>(p.out);
  const int quad_col = (threadIdx.x % 4) * 2;  // first of the two columns a thread holds in a fragment
  float inv_lo, inv_hi;
  softmax.finish(inv_lo, inv_hi);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row_lo + half * 8;
    if (row >= tile.rows) continue;
    const float inv = half == 0 ? inv_lo : inv_hi;
    T* out_row = out + static_cast<std::int64_t>(tile.q_begin + row / tile.group) * p.out_row_stride +
                 static_cast<std::int64_t>(kv_head * tile.group + row % tile.group) * kHeadDim;
#pragma unroll
    for (int d = 0; d < kHeadDim / 8; ++d) {
      *reinterpret_cast<std::uint32_t*>(out_row + d * 8 + quad_col) =
          pack2<T>(o[d][2 * half] * inv, o[d][2 * half + 1] * inv);
    }
  }
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The K/V loop of the wgmma kernel over 16-bit pages, software-pipelined
// (FlashAttention-3's overlap inside one warpgroup): while the tensor cores
// add tile n's P V, the warps run tile n + 1's softmax, whose S was issued
// just before it. K is fetched two tiles ahead and V one (two buffers each):
//
//   before: Q, K0, V0 landed; K1 in flight; S0 and its softmax done
//   step n: wait for K(n+1), V(n) and barrier (every warp is past S(n) and
//           P(n-1) V(n-1), so their buffers are free)
//           fetch K(n+2) and V(n+1) into them
//           issue S(n+1) = Q K(n+1)^T, then O += P(n) V(n)
//           wait for S(n+1): softmax of tile n + 1 (O untouched)
//           wait for P(n) V(n): rescale O, pack P(n+1)
//
// The caller has issued and committed Q, K0 and V0 into buffer 0.
template <typename T, int kHeadDim, typename Tiles, typename Masked>
__device__ __forceinline__ void attend_tiles_pipelined(const Tiles& tiles, const AttentionKernelParams& p,
                                                       const std::int32_t* block_table, int kv_head,
                                                       int max_position, int min_position, int num_tiles,
                                                       const T* q_tile, const Masked& masked,
                                                       float (&o)[kHeadDim / 8][4], RowSoftmax& softmax) {
  constexpr int BN = prefill_block_n;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int limit = max_position + 1;
  const auto fetch = [&]<bool kK, bool kV>(int k_buffer, int v_buffer, int tile) {
    tiles.template copy_swizzled_rows<kK, kV>(k_buffer, v_buffer, p, block_table, kv_head, tile * BN, limit,
                                              tile_rows<BN>(p, block_table, tile * BN));
  };
  const auto needs_mask = [&](int tile) { return tile * BN + BN - 1 > min_position; };

  if (num_tiles > 1) fetch.template operator()<true, false>(1, 0, 1);
  cp_async_commit();
  cp_async_wait<1>();
  fence_shared_to_async_proxy();
  __syncthreads();
  std::uint32_t q_frag[kHeadDim / 16][4];
  load_q_fragments<kHeadDim>(q_frag, q_tile, warp, lane);

  float s[BN / 8][4];
  std::uint32_t p_frag[BN / 16][4];
  pipelined_first_scores<T, kHeadDim, BN>(q_frag, tiles.k(0), p.scale_log2, needs_mask(0), masked, s, p_frag, softmax);

  // Every step but the last.
  for (int n = 0; n + 1 < num_tiles; ++n) {
    cp_async_wait<0>();
    fence_shared_to_async_proxy();
    __syncthreads();
    if (n + 2 < num_tiles) fetch.template operator()<true, false>(n & 1, 0, n + 2);
    fetch.template operator()<false, true>(0, (n + 1) & 1, n + 1);
    cp_async_commit();
    const bool mask_next = needs_mask(n + 1);
    pipelined_step<T, kHeadDim, BN>(q_frag, tiles.k((n + 1) & 1), tiles.v(n & 1), (n + 1) * BN, p.scale_log2,
                                    mask_next, masked, s, p_frag, o, softmax);
  }
  // The last tile's P V.
  cp_async_wait<0>();
  fence_shared_to_async_proxy();
  __syncthreads();
  pipelined_last_values<T, kHeadDim, BN>(p_frag, tiles.v((num_tiles - 1) & 1), o);
  __syncthreads();  // the next query tile's copies overwrite the buffers
}
#endif

template <typename T, int kHeadDim, int kKvBits, bool kWgmma, int kBlockM>
__global__ void __launch_bounds__(prefill_threads<kBlockM>) prefill_kernel(const AttentionKernelParams p) {
  static_assert(kBlockM == 64 || kBlockM == 128);
  static_assert(!kWgmma || kBlockM == 128, "the wgmma kernel is two warpgroups");
  allow_next_grid_to_launch();
  constexpr int BM = kBlockM;
  constexpr int BN = prefill_block_n;
  constexpr int ROW = smem_row<kHeadDim>;
  constexpr int KSTEPS = kHeadDim / 16;  // k-steps of S = Q K^T
  constexpr int DTILES = kHeadDim / 8;   // n8 tiles of O
  extern __shared__ __align__(1024) unsigned char smem[];
  T* q_tile = reinterpret_cast<T*>(smem);  // [BM][ROW]
  const PrefillTiles<T, kHeadDim, kKvBits, kWgmma, kBlockM> tiles{reinterpret_cast<unsigned char*>(q_tile + BM * ROW)};

  const int kv_head = blockIdx.y;
  // grid.x walks the step's flat list of query tiles (a mixed step's decode
  // sequences own none), looping when the list outgrows the grid.
  const T* q = static_cast<const T*>(p.q);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int total_tiles = p.prefill_tile_start[p.num_sequences];
  // Query tiles longest first (the last of the step first): the hardware
  // starts CTAs in blockIdx order, so the step's tail is its shortest tiles.
  // Measured on the H100 against first-to-last: +5-8% at 2k and 8k tokens.
  for (int walked = blockIdx.x; walked < total_tiles; walked += gridDim.x) {
    const int item = total_tiles - 1 - walked;
    const PrefillQueryTile tile = locate_query_tile<BM>(p, item);
    const std::int32_t* block_table = tile.block_table;
    const int max_position = tile.max_position, min_position = tile.min_position, num_tiles = tile.num_tiles;
    copy_query_tile<T, kHeadDim, BM, prefill_threads<kBlockM>>(p, tile, kv_head, q, q_tile, threadIdx.x);
    tiles.issue(0, p, block_table, kv_head, 0, max_position + 1, tile_rows<BN>(p, block_table, 0));
    cp_async_commit();

    const RowPositions positions = row_positions(tile, warp, lane);
    const auto masked = [&](int key, bool hi) { return positions.masked(key, hi); };
    std::uint32_t q_frag[KSTEPS][4];
    float o[DTILES][4];
#pragma unroll
    for (int d = 0; d < DTILES; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    RowSoftmax softmax;

    if constexpr (kWgmma && kKvBits == 0) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
      attend_tiles_pipelined<T, kHeadDim>(tiles, p, block_table, kv_head, max_position, min_position, num_tiles,
                                          q_tile, masked, o, softmax);
#elif defined(__CUDA_ARCH__)
      __trap();  // an instance built without sm_90a; the plan never picks it
#endif
    } else {
      for (int n = 0; n < num_tiles; ++n) {
        const int buffer = n & 1;
        if (n + 1 < num_tiles)
          tiles.issue(buffer ^ 1, p, block_table, kv_head, (n + 1) * BN, max_position + 1,
                      tile_rows<BN>(p, block_table, (n + 1) * BN));
        cp_async_commit();  // an empty group on the last tile keeps wait<1> uniform
        cp_async_wait<1>();
        if constexpr (kWgmma) fence_shared_to_async_proxy();
        __syncthreads();
        tiles.ready(buffer);
        if (n == 0) load_q_fragments<kHeadDim>(q_frag, q_tile, warp, lane);
        const bool needs_mask = n * BN + BN - 1 > min_position;  // only tiles crossing the diagonal
        if constexpr (kWgmma) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
          attend_tile_wgmma<T, kHeadDim, BN>(q_frag, tiles.k(buffer), tiles.v(buffer), n * BN, p.scale_log2,
                                             needs_mask, masked, o, softmax);
#elif defined(__CUDA_ARCH__)
          __trap();  // an instance built without sm_90a; the plan never picks it
#endif
        } else {
          attend_tile<T, kHeadDim, BN, ROW>(q_frag, tiles.k(buffer), tiles.v(buffer), n * BN, p.scale_log2,
                                            needs_mask, masked, o, softmax);
        }
        __syncthreads();  // the next iteration's prefetch overwrites this buffer
      }
    }
    store_output_rows<T, kHeadDim>(p, tile, kv_head, positions.row_lo, o, softmax);
  }
}

template <typename T, int kHeadDim, int kKvBits, bool kWgmma, int kBlockM>
cudaError_t launch_prefill(const AttentionKernelParams& params, int grid_tiles, cudaStream_t stream) {
  constexpr int smem = prefill_smem_bytes<T, kHeadDim, kKvBits, kWgmma, kBlockM>();
  if (const cudaError_t e = allow_dynamic_smem<prefill_kernel<T, kHeadDim, kKvBits, kWgmma, kBlockM>>(smem);
      e != cudaSuccess) {
    return e;
  }
  const dim3 grid(grid_tiles, params.kv_heads);
  prefill_kernel<T, kHeadDim, kKvBits, kWgmma, kBlockM><<<grid, prefill_threads<kBlockM>, smem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace hostrun::cuda::detail
