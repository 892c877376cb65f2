// Split-K ("flash-decoding") attention for decode tokens over the paged KV
// cache. Included only by attention_decode_{bf16,f16}.cu.
//
// grid (splits, kv_heads, sequences), 4 warps. A CTA owns one (sequence, kv
// head) and the positions [split * split_tokens, +split_tokens) of its
// context (the last split also takes anything past splits * split_tokens, so a
// plan made for a shorter max_context_len is slow, never wrong). The `group`
// q heads of the kv head are the rows of one 16-row mma tile (rows >= group
// are zero), so each K/V row is loaded from HBM once for the whole group.
//
// 64-position K/V tiles are streamed through shared memory (cp.async, double
// buffered); warp w takes positions 16w .. 16w+15 of each tile with its own
// online-softmax state (m, l, O), and the four states are merged through
// shared memory at the end. Then:
//   one chunk covers the context -> out = O / l, written directly;
//   otherwise                    -> partial_out = O / l, partial_lse =
//                                   m + log2(l) (log2 domain), merged by
//                                   decode_reduce (paged_attention.cu).
#pragma once

#include "cuda/attention_common.cuh"

namespace hostrun::cuda::detail {

constexpr int decode_block_n = 64;
constexpr int decode_threads = 128;
constexpr int decode_max_group = 16;

template <int kHeadDim>
constexpr int decode_smem_bytes() {
  return (decode_max_group + 4 * decode_block_n) * smem_row<kHeadDim> * 2;
}

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(decode_threads) decode_split_kernel(const AttentionKernelParams p) {
  allow_next_grid_to_launch();  // the output projection may start streaming its weights
  constexpr int BN = decode_block_n;
  constexpr int ROW = smem_row<kHeadDim>;
  constexpr int KSTEPS = kHeadDim / 16;
  constexpr int DTILES = kHeadDim / 8;
  constexpr int WARPS = decode_threads / 32;
  extern __shared__ __align__(16) unsigned char smem[];
  T* q_tile = reinterpret_cast<T*>(smem);           // [16][ROW]
  T* k_tiles = q_tile + decode_max_group * ROW;     // [2][BN][ROW]
  T* v_tiles = k_tiles + 2 * BN * ROW;              // [2][BN][ROW]

  const int split = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int sequence = blockIdx.z;
  const int q_begin = p.query_start[sequence];
  if (p.query_start[sequence + 1] - q_begin != 1) return;
  const int context = p.context_lens[sequence];
  const int begin = split * p.split_tokens;
  if (begin >= context) return;
  const bool last_split = split == p.splits - 1;
  const int end = last_split ? context : min(context, begin + p.split_tokens);
  const int active_splits = min(p.splits, (context + p.split_tokens - 1) / p.split_tokens);
  const int group = p.group;
  const int q_heads = p.kv_heads * group;
  const std::int32_t* block_table = p.block_tables + static_cast<std::int64_t>(sequence) * p.max_blocks_per_sequence;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int quad_col = (lane % 4) * 2;

  {  // the group's q rows; rows >= group zero-filled
    constexpr int chunks = kHeadDim / 8;
    const T* q = static_cast<const T*>(p.q) + static_cast<std::int64_t>(q_begin) * p.q_row_stride +
                 static_cast<std::int64_t>(kv_head * group) * kHeadDim;
    for (int i = threadIdx.x; i < decode_max_group * chunks; i += decode_threads) {
      const int row = i / chunks;
      const int chunk = i % chunks;
      const bool valid = row < group;
      cp_async_16(q_tile + row * ROW + chunk * 8, q + (valid ? row * kHeadDim + chunk * 8 : 0), valid);
    }
  }
  const int num_tiles = (end - begin + BN - 1) / BN;
  load_kv_tile<T, kHeadDim, BN, decode_threads>(k_tiles, v_tiles, p, block_table, kv_head, begin, end);
  cp_async_commit();

  std::uint32_t q_frag[KSTEPS][4];
  float o[DTILES][4];
#pragma unroll
  for (int d = 0; d < DTILES; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;

  for (int n = 0; n < num_tiles; ++n) {
    const int buffer = n & 1;
    if (n + 1 < num_tiles) {
      load_kv_tile<T, kHeadDim, BN, decode_threads>(k_tiles + (buffer ^ 1) * BN * ROW,
                                                    v_tiles + (buffer ^ 1) * BN * ROW, p, block_table, kv_head,
                                                    begin + (n + 1) * BN, end);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (n == 0) {
#pragma unroll
      for (int kk = 0; kk < KSTEPS; ++kk) {
        ldmatrix_x4(q_frag[kk], q_tile + (lane % 16) * ROW + kk * 16 + (lane / 16) * 8);
      }
    }
    const T* k_rows = k_tiles + buffer * BN * ROW + warp * 16 * ROW;  // this warp's 16 positions
    const T* v_rows = v_tiles + buffer * BN * ROW + warp * 16 * ROW;
    const int key0 = begin + n * BN + warp * 16;

    float s[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KSTEPS; kk += 2) {
        std::uint32_t b[4];
        ldmatrix_x4(b, k_rows + (nt * 8 + lane % 8) * ROW + kk * 16 + (lane / 8) * 8);
        mma_16816<T>(s[nt], q_frag[kk], b[0], b[1]);
        mma_16816<T>(s[nt], q_frag[kk + 1], b[2], b[3]);
      }
    }
    float tile_max_lo = m_lo, tile_max_hi = m_hi;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        // Past the chunk's end the rows were zero-filled: mask them out.
        s[nt][e] = key0 + nt * 8 + quad_col + (e & 1) < end ? s[nt][e] * p.scale_log2 : -INFINITY;
      }
      tile_max_lo = fmaxf(tile_max_lo, fmaxf(s[nt][0], s[nt][1]));
      tile_max_hi = fmaxf(tile_max_hi, fmaxf(s[nt][2], s[nt][3]));
    }
    tile_max_lo = fmaxf(tile_max_lo, __shfl_xor_sync(0xffffffffu, tile_max_lo, 1));
    tile_max_lo = fmaxf(tile_max_lo, __shfl_xor_sync(0xffffffffu, tile_max_lo, 2));
    tile_max_hi = fmaxf(tile_max_hi, __shfl_xor_sync(0xffffffffu, tile_max_hi, 1));
    tile_max_hi = fmaxf(tile_max_hi, __shfl_xor_sync(0xffffffffu, tile_max_hi, 2));
    // A warp whose positions all lie past the end has seen nothing yet: its
    // max stays -inf, and both exp2 arguments would be NaN; keep it empty.
    const float alpha_lo = m_lo == -INFINITY ? 0.0f : exp2f(m_lo - tile_max_lo);
    const float alpha_hi = m_hi == -INFINITY ? 0.0f : exp2f(m_hi - tile_max_hi);
    const float shift_lo = tile_max_lo == -INFINITY ? 0.0f : tile_max_lo;
    const float shift_hi = tile_max_hi == -INFINITY ? 0.0f : tile_max_hi;
    m_lo = tile_max_lo;
    m_hi = tile_max_hi;
    float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - shift_lo);
      s[nt][1] = exp2f(s[nt][1] - shift_lo);
      s[nt][2] = exp2f(s[nt][2] - shift_hi);
      s[nt][3] = exp2f(s[nt][3] - shift_hi);
      sum_lo += s[nt][0] + s[nt][1];
      sum_hi += s[nt][2] + s[nt][3];
    }
    l_lo = l_lo * alpha_lo + sum_lo;
    l_hi = l_hi * alpha_hi + sum_hi;
    const std::uint32_t a[4] = {pack2<T>(s[0][0], s[0][1]), pack2<T>(s[0][2], s[0][3]), pack2<T>(s[1][0], s[1][1]),
                                pack2<T>(s[1][2], s[1][3])};
#pragma unroll
    for (int d = 0; d < DTILES; d += 2) {
      o[d][0] *= alpha_lo;
      o[d][1] *= alpha_lo;
      o[d][2] *= alpha_hi;
      o[d][3] *= alpha_hi;
      o[d + 1][0] *= alpha_lo;
      o[d + 1][1] *= alpha_lo;
      o[d + 1][2] *= alpha_hi;
      o[d + 1][3] *= alpha_hi;
      std::uint32_t b[4];
      ldmatrix_x4_trans(b, v_rows + (lane % 8 + ((lane / 8) % 2) * 8) * ROW + d * 8 + (lane / 16) * 8);
      mma_16816<T>(o[d], a, b[0], b[1]);
      mma_16816<T>(o[d + 1], a, b[2], b[3]);
    }
    __syncthreads();
  }
  cp_async_wait<0>();  // nothing may still land in the buffers reused below

  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);

  // Merge the four warps' states: [WARPS][16] maxima and sums, [WARPS][16][D]
  // unnormalised outputs, in the (now idle) K/V buffers.
  float* merge_o = reinterpret_cast<float*>(k_tiles);
  float* merge_m = merge_o + WARPS * 16 * kHeadDim;
  float* merge_l = merge_m + WARPS * 16;
  static_assert((WARPS * 16 * kHeadDim + 2 * WARPS * 16) * 4 <= 4 * BN * ROW * 2, "merge area fits the K/V buffers");
  const int row_lo = lane / 4;
  if (lane % 4 == 0) {
    merge_m[warp * 16 + row_lo] = m_lo;
    merge_m[warp * 16 + row_lo + 8] = m_hi;
    merge_l[warp * 16 + row_lo] = l_lo;
    merge_l[warp * 16 + row_lo + 8] = l_hi;
  }
#pragma unroll
  for (int d = 0; d < DTILES; ++d) {
    float* lo = merge_o + (warp * 16 + row_lo) * kHeadDim + d * 8 + quad_col;
    float* hi = lo + 8 * kHeadDim;
    lo[0] = o[d][0];
    lo[1] = o[d][1];
    hi[0] = o[d][2];
    hi[1] = o[d][3];
  }
  __syncthreads();

  for (int i = threadIdx.x; i < group * kHeadDim; i += decode_threads) {
    const int row = i / kHeadDim;
    const int d = i % kHeadDim;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) m = fmaxf(m, merge_m[w * 16 + row]);
    float l = 0.0f, acc = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      const float mw = merge_m[w * 16 + row];
      const float scale = mw == -INFINITY ? 0.0f : exp2f(mw - m);
      l += merge_l[w * 16 + row] * scale;
      acc += merge_o[(w * 16 + row) * kHeadDim + d] * scale;
    }
    const int head = kv_head * group + row;
    if (active_splits == 1) {
      T* out = static_cast<T*>(p.out) + static_cast<std::int64_t>(q_begin) * p.out_row_stride +
               static_cast<std::int64_t>(head) * kHeadDim;
      out[d] = from_f32<T>(acc / l);
    } else {
      const std::int64_t partial = (static_cast<std::int64_t>(sequence) * q_heads + head) * p.splits + split;
      p.partial_out[partial * kHeadDim + d] = acc / l;
      if (d == 0) p.partial_lse[partial] = m + log2f(l);
    }
  }
}

template <typename T, int kHeadDim>
cudaError_t launch_decode_split(const AttentionKernelParams& params, int num_sequences, cudaStream_t stream) {
  constexpr int smem = decode_smem_bytes<kHeadDim>();
  if (const cudaError_t e = allow_dynamic_smem<decode_split_kernel<T, kHeadDim>>(smem); e != cudaSuccess) {
    return e;
  }
  const dim3 grid(params.splits, params.kv_heads, num_sequences);
  decode_split_kernel<T, kHeadDim><<<grid, decode_threads, smem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace hostrun::cuda::detail
