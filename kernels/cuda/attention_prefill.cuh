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

namespace hostrun::cuda::detail {

constexpr int prefill_block_m = 64;
constexpr int prefill_block_n = 64;
constexpr int prefill_threads = 128;

template <typename T, int kHeadDim, int kKvBits>
using PrefillTiles = KvTileStream<T, kHeadDim, kKvBits, prefill_block_n, prefill_threads>;

template <typename T, int kHeadDim, int kKvBits>
constexpr int prefill_smem_bytes() {
  return prefill_block_m * smem_row<kHeadDim> * 2 + PrefillTiles<T, kHeadDim, kKvBits>::kSmemBytes;
}

template <typename T, int kHeadDim, int kKvBits>
__global__ void __launch_bounds__(prefill_threads) prefill_kernel(const AttentionKernelParams p) {
  allow_next_grid_to_launch();
  constexpr int BM = prefill_block_m;
  constexpr int BN = prefill_block_n;
  constexpr int ROW = smem_row<kHeadDim>;
  constexpr int KSTEPS = kHeadDim / 16;  // k-steps of S = Q K^T
  constexpr int DTILES = kHeadDim / 8;   // n8 tiles of O
  extern __shared__ __align__(16) unsigned char smem[];
  T* q_tile = reinterpret_cast<T*>(smem);  // [BM][ROW]
  const PrefillTiles<T, kHeadDim, kKvBits> tiles{reinterpret_cast<unsigned char*>(q_tile + BM * ROW)};

  const int kv_head = blockIdx.y;
  // grid.x walks the step's flat list of query tiles (a mixed step's decode
  // sequences own none), looping when the list outgrows the grid.
  const int total_tiles = p.prefill_tile_start[p.num_sequences];
  for (int item = blockIdx.x; item < total_tiles; item += gridDim.x) {
    // The sequence owning the tile: the last one whose first tile is <= item
    // (sequences without tiles share their start with the next one).
    int sequence = 0;
    for (int hi = p.num_sequences - 1; sequence < hi;) {
      const int mid = (sequence + hi + 1) / 2;
      if (p.prefill_tile_start[mid] <= item) sequence = mid;
      else hi = mid - 1;
    }
    const int q_begin = p.query_start[sequence];
    const int q_len = p.query_start[sequence + 1] - q_begin;
    const int group = p.group;
    const int rows = q_len * group;
    const int cached = p.context_lens[sequence] - q_len;
    const std::int32_t* block_table = p.block_tables + static_cast<std::int64_t>(sequence) * p.max_blocks_per_sequence;
    const T* q = static_cast<const T*>(p.q);
    T* out = static_cast<T*>(p.out);
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int quad_col = (lane % 4) * 2;  // first of the two columns a thread holds in a fragment

    {
      const int row0 = (item - p.prefill_tile_start[sequence]) * BM;
      {  // Q tile, rows past the chunk zero-filled
        constexpr int chunks = kHeadDim / 8;
        constexpr int rows_per_pass = prefill_threads / chunks;
        const int chunk = threadIdx.x % chunks;
#pragma unroll
        for (int pass = 0; pass < BM / rows_per_pass; ++pass) {
          const int r = pass * rows_per_pass + threadIdx.x / chunks;
          const int row = row0 + r;
          const bool valid = row < rows;
          std::int64_t element = 0;
          if (valid) {
            const std::int64_t token = q_begin + row / group;
            element = token * p.q_row_stride + static_cast<std::int64_t>(kv_head * group + row % group) * kHeadDim +
                      chunk * 8;
          }
          cp_async_16(q_tile + r * ROW + chunk * 8, q + element, valid);
        }
      }
      const int last_row = min(rows, row0 + BM) - 1;
      const int max_position = cached + last_row / group;  // the furthest key any row of the tile sees
      const int min_position = cached + row0 / group;      // the nearest diagonal
      const int num_tiles = max_position / BN + 1;
      tiles.issue(0, p, block_table, kv_head, 0, max_position + 1, tile_rows<BN>(p, block_table, 0));
      cp_async_commit();

      // This thread's two rows (fragment rows g and g + 8 of its warp); padding
      // rows borrow the last real row's position so their softmax stays finite.
      const int row_lo = row0 + warp * 16 + lane / 4;
      const int pos_lo = cached + min(row_lo, last_row) / group;
      const int pos_hi = cached + min(row_lo + 8, last_row) / group;

      std::uint32_t q_frag[KSTEPS][4];
      float o[DTILES][4];
#pragma unroll
      for (int d = 0; d < DTILES; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
      RowSoftmax softmax;

      for (int n = 0; n < num_tiles; ++n) {
        const int buffer = n & 1;
        if (n + 1 < num_tiles)
          tiles.issue(buffer ^ 1, p, block_table, kv_head, (n + 1) * BN, max_position + 1,
                      tile_rows<BN>(p, block_table, (n + 1) * BN));
        cp_async_commit();  // an empty group on the last tile keeps wait<1> uniform
        cp_async_wait<1>();
        __syncthreads();
        tiles.ready(buffer);
        if (n == 0) {
#pragma unroll
          for (int kk = 0; kk < KSTEPS; ++kk) {
            ldmatrix_x4(q_frag[kk], q_tile + (warp * 16 + lane % 16) * ROW + kk * 16 + (lane / 16) * 8);
          }
        }
        attend_tile<T, kHeadDim, BN, ROW>(
            q_frag, tiles.k(buffer), tiles.v(buffer), n * BN, p.scale_log2,
            n * BN + BN - 1 > min_position,  // only tiles crossing the diagonal need the mask
            [&](int key, bool hi) { return key > (hi ? pos_hi : pos_lo); }, o, softmax);
        __syncthreads();  // the next iteration's prefetch overwrites this buffer
      }

      float inv_lo, inv_hi;
      softmax.finish(inv_lo, inv_hi);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = row_lo + half * 8;
        if (row >= rows) continue;
        const float inv = half == 0 ? inv_lo : inv_hi;
        T* out_row = out + static_cast<std::int64_t>(q_begin + row / group) * p.out_row_stride +
                     static_cast<std::int64_t>(kv_head * group + row % group) * kHeadDim;
#pragma unroll
        for (int d = 0; d < DTILES; ++d) {
          *reinterpret_cast<std::uint32_t*>(out_row + d * 8 + quad_col) =
              pack2<T>(o[d][2 * half] * inv, o[d][2 * half + 1] * inv);
        }
      }
    }
  }
}

template <typename T, int kHeadDim, int kKvBits>
cudaError_t launch_prefill(const AttentionKernelParams& params, int grid_tiles, cudaStream_t stream) {
  constexpr int smem = prefill_smem_bytes<T, kHeadDim, kKvBits>();
  if (const cudaError_t e = allow_dynamic_smem<prefill_kernel<T, kHeadDim, kKvBits>>(smem); e != cudaSuccess) {
    return e;
  }
  const dim3 grid(grid_tiles, params.kv_heads);
  prefill_kernel<T, kHeadDim, kKvBits><<<grid, prefill_threads, smem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace hostrun::cuda::detail
