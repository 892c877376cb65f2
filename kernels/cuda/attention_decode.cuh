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
// 64-position K/V tiles are streamed through shared memory (KvTileStream:
// cp.async, double buffered; quantized codes go from there straight into mma
// fragments, below); warp w takes positions 16w .. 16w+15 of each tile with its own
// online-softmax state (m, l, O), and the four states are merged through
// shared memory at the end. Then:
//   one chunk covers the context -> out = O / l, written directly;
//   otherwise                    -> partial_out = O / l, partial_lse =
//                                   m + log2(l) (log2 domain), merged by
//                                   decode_reduce (paged_attention.cu).
#pragma once

#include <cstring>

#include "cuda/attention_common.cuh"

namespace hostrun::cuda::detail {

constexpr int decode_block_n = 64;
constexpr int decode_threads = 128;
constexpr int decode_max_group = 16;

// Quantized pages are read from the staging buffers straight into mma
// fragments (no 16-bit tile in shared memory). A tile of codes is a half
// (int8) or a quarter (int4) of a 16-bit tile, so the same shared memory
// keeps more of them in flight: 3 (int8) and 4 (int4) stages, 2 for 16-bit
// tiles. Measured at 256 x 384 (int8): 168.5 us with 3 stages, 170.3 with 2,
// before the changes that made the kernel 2x faster; it is bound by its
// instructions, not by how many tiles are in flight (kernels/cuda/NOTES.md).
template <int kKvBits>
inline constexpr int decode_stages = kKvBits == 8 ? 3 : kKvBits == 4 ? 4 : 2;
// CTAs an SM must hold (register budget): what the shared memory of the
// quantized pipelines allows at head_dim 128 (int8 61 KB, int4 47 KB).
template <int kKvBits>
inline constexpr int decode_min_ctas = kKvBits == 8 ? 3 : kKvBits == 4 ? 4 : 1;
template <typename T, int kHeadDim, int kKvBits>
using DecodeTiles =
    KvTileStream<T, kHeadDim, kKvBits, decode_block_n, decode_threads, false, decode_stages<kKvBits>>;

// The four warps' merge at the end reuses the K/V area: O as [warp][16 rows]
// [fragment order], rows padded by 8 floats (a warp's stores then spread over
// the banks), and per (warp, row) the max, the sum and the merge weight, and
// per row the log2-sum-exp.
template <int kHeadDim>
inline constexpr int decode_merge_row = kHeadDim + 8;
template <int kHeadDim>
constexpr int decode_merge_bytes() {
  constexpr int warps = decode_threads / 32;
  return (warps * 16 * decode_merge_row<kHeadDim> + 3 * warps * 16 + 16) * 4;
}

template <typename T, int kHeadDim, int kKvBits>
constexpr int decode_kv_area_bytes() {
  return DecodeTiles<T, kHeadDim, kKvBits>::kSmemBytes > decode_merge_bytes<kHeadDim>()
             ? DecodeTiles<T, kHeadDim, kKvBits>::kSmemBytes
             : decode_merge_bytes<kHeadDim>();
}

template <typename T, int kHeadDim, int kKvBits>
constexpr int decode_smem_bytes() {
  return decode_max_group * smem_row<kHeadDim> * 2 + decode_kv_area_bytes<T, kHeadDim, kKvBits>();
}

// ---- quantized pages: codes straight into mma fragments ------------------
//
// A dot product does not care in which order its terms are summed, so S =
// Q K^T may feed the k slots of the m16n8k16 fragments with any permutation of
// head_dim, as long as Q and K use the same one: thread quad c (= lane % 4)
// takes dims [c * D/4, (c + 1) * D/4) of its key row, one contiguous run of
// codes (16 or 32 bytes, two 16-byte loads at most), and Q's fragments are
// loaded once in that order. Likewise O = P V may permute the n dims: the
// thread of column group n (= lane / 4) takes dims [n * D/8, (n + 1) * D/8)
// of the four value rows its P fragment covers (16 or 8 bytes a row), and
// the output dims are mapped back when O is stored (decode_o_index).

// Where output dim `dim` sits in a warp's accumulators, as tile * 8 + column
// (the fragment order the merge area keeps): the dim itself for 16-bit
// pages; for quantized ones column = dim / (D/8), tile = dim % (D/8).
template <int kHeadDim, int kKvBits>
__device__ __forceinline__ int decode_o_index(int dim) {
  if constexpr (kKvBits == 0) return dim;
  else return (dim % (kHeadDim / 8)) * 8 + dim / (kHeadDim / 8);
}

// `kBytes` bytes of shared memory (16-byte aligned when kBytes >= 16) as words.
template <int kBytes>
__device__ __forceinline__ void load_code_words(const unsigned char* p, std::uint32_t (&w)[kBytes / 4]) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes % 16 == 0);
  if constexpr (kBytes == 4) {
    w[0] = *reinterpret_cast<const std::uint32_t*>(p);
  } else if constexpr (kBytes == 8) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    w[0] = v.x;
    w[1] = v.y;
  } else {
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) {
      const uint4 v = *reinterpret_cast<const uint4*>(p + 16 * i);
      w[4 * i] = v.x;
      w[4 * i + 1] = v.y;
      w[4 * i + 2] = v.z;
      w[4 * i + 3] = v.w;
    }
  }
}

// Codes i and i + 1 (i even) of a run, dequantized as an f16 pair: the code
// goes into the mantissa of 1024 (exact), 1024 is subtracted (exact), then
// one HFMA2 with (scale, zero): each value is the exact q * scale + zero
// rounded once to f16 (11 significant bits), which the f16 mma below takes
// as it is. About 1.5 instructions a value (int8) or 2 (int4), against 3.5
// for dequantize_kv's f32 FMA and a 16-bit pack.
template <int kKvBits, int kWords>
__device__ __forceinline__ __half2 dequantize_pair_f16(const std::uint32_t (&w)[kWords], int i, __half2 scale,
                                                       __half2 zero) {
  constexpr int per_word = 32 / kKvBits;
  const std::uint32_t word = w[i / per_word];
  const int at = i % per_word;
  std::uint32_t magic;
  if constexpr (kKvBits == 8) {
    // bytes [b_at, 0x64, b_at+1, 0x64]: halves 1024 + q_at, 1024 + q_at+1
    magic = __byte_perm(word, 0x64646464u, 0x4040u | static_cast<unsigned>(at) | static_cast<unsigned>(at + 1) << 8);
  } else {
    // byte at/2 twice, then its low nibble into half 0 and its high one
    // into half 1 (as 16 q): 1024 + q_at, 1024 + 16 q_at+1
    const unsigned b = static_cast<unsigned>(at / 2);
    magic = (__byte_perm(word, 0u, 0x4040u | b | b << 8) & 0x00F0000Fu) | 0x64006400u;
    scale = __halves2half2(__low2half(scale), __hmul(__low2half(scale), __float2half_rn(0.0625f)));
  }
  __half2 q;
  std::memcpy(&q, &magic, 4);
  return __hfma2(__hsub2(q, __float2half2_rn(1024.0f)), scale, zero);
}

__device__ __forceinline__ std::uint32_t half2_bits(__half2 h) {
  std::uint32_t bits;
  std::memcpy(&bits, &h, 4);
  return bits;
}

// (scale, zero) word -> the two f16 pairs dequantize_pair_f16 takes.
__device__ __forceinline__ void unpack_kv_params_f16(std::uint32_t word, __half2& scale, __half2& zero) {
  __half2 both;
  std::memcpy(&both, &word, 4);
  scale = __low2half2(both);
  zero = __high2half2(both);
}

// Q's A fragments in the permuted k order, as f16 (the mma over quantized
// pages runs in f16): k-step 2g + h (h = 0, 1) holds dims c * D/4 + 8g + 4h
// + {0, 1} (columns 2c, 2c + 1) and + {2, 3} (columns 2c + 8, 2c + 9), rows
// lane / 4 and lane / 4 + 8. bf16 queries are rounded to f16 here, once per
// CTA (saturated at +-65504, far beyond any query a model produces).
template <typename T, int kHeadDim>
__device__ __forceinline__ void load_q_fragments_permuted(std::uint32_t (&q_frag)[kHeadDim / 16][4], const T* q_tile,
                                                           int lane) {
  constexpr int ROW = smem_row<kHeadDim>;
  const int c = lane % 4, row = lane / 4;
  const auto to_f16 = [](std::uint32_t pair) -> std::uint32_t {
    if constexpr (std::is_same_v<T, __half>) {
      return pair;
    } else {
      __nv_bfloat162 b;
      std::memcpy(&b, &pair, 4);
      const float2 f = __bfloat1622float2(b);
      return half2_bits(__floats2half2_rn(fminf(fmaxf(f.x, -65504.0f), 65504.0f),
                                          fminf(fmaxf(f.y, -65504.0f), 65504.0f)));
    }
  };
#pragma unroll
  for (int g = 0; g < kHeadDim / 32; ++g) {
    const uint4 lo = *reinterpret_cast<const uint4*>(q_tile + row * ROW + c * (kHeadDim / 4) + 8 * g);
    const uint4 hi = *reinterpret_cast<const uint4*>(q_tile + (row + 8) * ROW + c * (kHeadDim / 4) + 8 * g);
    q_frag[2 * g][0] = to_f16(lo.x);
    q_frag[2 * g][1] = to_f16(hi.x);
    q_frag[2 * g][2] = to_f16(lo.y);
    q_frag[2 * g][3] = to_f16(hi.y);
    q_frag[2 * g + 1][0] = to_f16(lo.z);
    q_frag[2 * g + 1][1] = to_f16(hi.z);
    q_frag[2 * g + 1][2] = to_f16(lo.w);
    q_frag[2 * g + 1][3] = to_f16(hi.w);
  }
}

// s[nt] += Q K^T over the warp's 16 staged key rows (n-tile nt: rows 8nt ..).
template <int kHeadDim, int kKvBits, int kPitch>
__device__ __forceinline__ void quantized_scores(float (&s)[2][4], const std::uint32_t (&q_frag)[kHeadDim / 16][4],
                                                 const unsigned char* k_codes, const std::uint32_t* k_params,
                                                 int lane) {
  constexpr int run_bytes = kHeadDim / 4 * kKvBits / 8;  // a quad thread's codes of one row
  const int c = lane % 4;
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    const int row = nt * 8 + lane / 4;
    std::uint32_t w[run_bytes / 4];
    load_code_words<run_bytes>(k_codes + row * kPitch + c * run_bytes, w);
    __half2 scale, zero;
    unpack_kv_params_f16(k_params[row], scale, zero);
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      // k-step kk = 2g + h: dims 8g + 4h + {0,1} and + {2,3} of the run
      const int first = 8 * (kk / 2) + 4 * (kk % 2);
      mma_16816<__half>(s[nt], q_frag[kk], half2_bits(dequantize_pair_f16<kKvBits>(w, first, scale, zero)),
                        half2_bits(dequantize_pair_f16<kKvBits>(w, first + 2, scale, zero)));
    }
  }
}

// o += P V over the warp's 16 staged value rows; `a` is P's A fragment (f16).
// The run is taken 8 bytes at a time (fewer live registers: the kernel is
// latency-bound and wants 4 CTAs an SM).
template <int kHeadDim, int kKvBits, int kPitch>
__device__ __forceinline__ void quantized_values(float (&o)[kHeadDim / 8][4], const std::uint32_t (&a)[4],
                                                 const unsigned char* v_codes, const std::uint32_t* v_params,
                                                 int lane) {
  constexpr int run_bytes = kHeadDim / 8 * kKvBits / 8;  // a thread's codes of one row
  constexpr int piece_bytes = run_bytes < 8 ? run_bytes : 8;
  constexpr int piece_dims = piece_bytes * 8 / kKvBits;
  const int c = lane % 4, n = lane / 4;
  // B rows (k) 2c, 2c + 1 (b0) and 2c + 8, 2c + 9 (b1): the positions of P's columns.
  const int rows[4] = {2 * c, 2 * c + 1, 2 * c + 8, 2 * c + 9};
  __half2 scale[4], zero[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) unpack_kv_params_f16(v_params[rows[r]], scale[r], zero[r]);
#pragma unroll
  for (int piece = 0; piece < run_bytes / piece_bytes; ++piece) {
    std::uint32_t w[4][piece_bytes / 4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
      load_code_words<piece_bytes>(v_codes + rows[r] * kPitch + n * run_bytes + piece * piece_bytes, w[r]);
#pragma unroll
    for (int i = 0; i < piece_dims; i += 2) {
      // Each row's pair (dims i, i + 1); B wants each dim's pair of rows.
      const __half2 r0 = dequantize_pair_f16<kKvBits>(w[0], i, scale[0], zero[0]);
      const __half2 r1 = dequantize_pair_f16<kKvBits>(w[1], i, scale[1], zero[1]);
      const __half2 r2 = dequantize_pair_f16<kKvBits>(w[2], i, scale[2], zero[2]);
      const __half2 r3 = dequantize_pair_f16<kKvBits>(w[3], i, scale[3], zero[3]);
      mma_16816<__half>(o[piece * piece_dims + i], a, half2_bits(__lows2half2(r0, r1)),
                        half2_bits(__lows2half2(r2, r3)));
      mma_16816<__half>(o[piece * piece_dims + i + 1], a, half2_bits(__highs2half2(r0, r1)),
                        half2_bits(__highs2half2(r2, r3)));
    }
  }
}

template <typename T, int kHeadDim, int kKvBits>
__global__ void __launch_bounds__(decode_threads, decode_min_ctas<kKvBits>) decode_split_kernel(const AttentionKernelParams p) {
  allow_next_grid_to_launch();  // the output projection may start streaming its weights
  constexpr int BN = decode_block_n;
  constexpr int ROW = smem_row<kHeadDim>;
  constexpr int KSTEPS = kHeadDim / 16;
  constexpr int DTILES = kHeadDim / 8;
  constexpr int WARPS = decode_threads / 32;
  extern __shared__ __align__(16) unsigned char smem[];
  T* q_tile = reinterpret_cast<T*>(smem);  // [16][ROW]
  using Tiles = DecodeTiles<T, kHeadDim, kKvBits>;
  const Tiles tiles{reinterpret_cast<unsigned char*>(q_tile + decode_max_group * ROW)};

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
  constexpr int STAGES = Tiles::kStages;
#pragma unroll
  for (int t = 0; t < STAGES - 1; ++t) {  // the first group also holds q
    if (t < num_tiles) tiles.issue(t, p, block_table, kv_head, begin + t * BN, end, tile_rows<BN>(p, block_table, begin + t * BN));
    cp_async_commit();
  }
  // The page of the next tile to issue, read one step before it is needed.
  TileRows next_rows;
  if (STAGES - 1 < num_tiles) next_rows = tile_rows<BN>(p, block_table, begin + (STAGES - 1) * BN);

  std::uint32_t q_frag[KSTEPS][4];
  float o[DTILES][4];
#pragma unroll
  for (int d = 0; d < DTILES; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;

  for (int n = 0; n < num_tiles; ++n) {
    const int buffer = n % STAGES;
    if (n + STAGES - 1 < num_tiles) {
      tiles.issue((n + STAGES - 1) % STAGES, p, block_table, kv_head, begin + (n + STAGES - 1) * BN, end, next_rows);
      if (n + STAGES < num_tiles) next_rows = tile_rows<BN>(p, block_table, begin + (n + STAGES) * BN);
    }
    cp_async_commit();  // empty groups near the end keep the wait uniform
    cp_async_wait<STAGES - 1>();
    __syncthreads();
    if (n == 0) {
      if constexpr (kKvBits == 0) {
#pragma unroll
        for (int kk = 0; kk < KSTEPS; ++kk) {
          ldmatrix_x4(q_frag[kk], q_tile + (lane % 16) * ROW + kk * 16 + (lane / 16) * 8);
        }
      } else {
        load_q_fragments_permuted<T, kHeadDim>(q_frag, q_tile, lane);
      }
    }
    const int key0 = begin + n * BN + warp * 16;  // this warp's 16 positions

    float s[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
    if constexpr (kKvBits == 0) {
      const T* k_rows = tiles.k(buffer) + warp * 16 * ROW;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk += 2) {
          std::uint32_t b[4];
          ldmatrix_x4(b, k_rows + (nt * 8 + lane % 8) * ROW + kk * 16 + (lane / 8) * 8);
          mma_16816<T>(s[nt], q_frag[kk], b[0], b[1]);
          mma_16816<T>(s[nt], q_frag[kk + 1], b[2], b[3]);
        }
      }
    } else {
      quantized_scores<kHeadDim, kKvBits, Tiles::kStagePitch>(
          s, q_frag, tiles.k_codes(buffer) + warp * 16 * Tiles::kStagePitch, tiles.k_params(buffer) + warp * 16, lane);
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
#pragma unroll
    for (int d = 0; d < DTILES; ++d) {
      o[d][0] *= alpha_lo;
      o[d][1] *= alpha_lo;
      o[d][2] *= alpha_hi;
      o[d][3] *= alpha_hi;
    }
    if constexpr (kKvBits == 0) {
      // P re-packed from the S accumulators: the A operand, register for register.
      const std::uint32_t a[4] = {pack2<T>(s[0][0], s[0][1]), pack2<T>(s[0][2], s[0][3]),
                                  pack2<T>(s[1][0], s[1][1]), pack2<T>(s[1][2], s[1][3])};
      const T* v_rows = tiles.v(buffer) + warp * 16 * ROW;
#pragma unroll
      for (int d = 0; d < DTILES; d += 2) {
        std::uint32_t b[4];
        ldmatrix_x4_trans(b, v_rows + (lane % 8 + ((lane / 8) % 2) * 8) * ROW + d * 8 + (lane / 16) * 8);
        mma_16816<T>(o[d], a, b[0], b[1]);
        mma_16816<T>(o[d + 1], a, b[2], b[3]);
      }
    } else {
      const std::uint32_t a[4] = {pack2<__half>(s[0][0], s[0][1]), pack2<__half>(s[0][2], s[0][3]),
                                  pack2<__half>(s[1][0], s[1][1]), pack2<__half>(s[1][2], s[1][3])};
      quantized_values<kHeadDim, kKvBits, Tiles::kStagePitch>(
          o, a, tiles.v_codes(buffer) + warp * 16 * Tiles::kStagePitch, tiles.v_params(buffer) + warp * 16, lane);
    }
    __syncthreads();
  }
  cp_async_wait<0>();  // nothing may still land in the buffers reused below

  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);

  // Merge the four warps' states (rows >= group are padding: skipped).
  constexpr int MROW = decode_merge_row<kHeadDim>;
  float* merge_o = reinterpret_cast<float*>(tiles.smem);  // [WARPS][16][MROW]
  float* merge_m = merge_o + WARPS * 16 * MROW;           // [WARPS][16]
  float* merge_l = merge_m + WARPS * 16;                  // [WARPS][16]
  float* merge_w = merge_l + WARPS * 16;                  // [WARPS][16]: exp2(m_w - m) / l
  float* merge_lse = merge_w + WARPS * 16;                // [16]: m + log2(l)
  static_assert(decode_merge_bytes<kHeadDim>() <= decode_kv_area_bytes<T, kHeadDim, kKvBits>());
  const int row_lo = lane / 4;
  if (lane % 4 == 0) {
    merge_m[warp * 16 + row_lo] = m_lo;
    merge_m[warp * 16 + row_lo + 8] = m_hi;
    merge_l[warp * 16 + row_lo] = l_lo;
    merge_l[warp * 16 + row_lo + 8] = l_hi;
  }
  float* lo = merge_o + (warp * 16 + row_lo) * MROW + quad_col;
  float* hi = lo + 8 * MROW;
#pragma unroll
  for (int d = 0; d < DTILES; ++d) {
    if (row_lo < group) {
      lo[d * 8] = o[d][0];
      lo[d * 8 + 1] = o[d][1];
    }
    if (row_lo + 8 < group) {
      hi[d * 8] = o[d][2];
      hi[d * 8 + 1] = o[d][3];
    }
  }
  __syncthreads();
  if (threadIdx.x < group) {  // one thread a row: the merge weights, once
    const int row = threadIdx.x;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) m = fmaxf(m, merge_m[w * 16 + row]);
    float scale[WARPS], l = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      const float mw = merge_m[w * 16 + row];
      scale[w] = mw == -INFINITY ? 0.0f : exp2f(mw - m);
      l += merge_l[w * 16 + row] * scale[w];
    }
#pragma unroll
    for (int w = 0; w < WARPS; ++w) merge_w[w * 16 + row] = scale[w] / l;
    merge_lse[row] = m + log2f(l);
  }
  __syncthreads();

  for (int i = threadIdx.x; i < group * kHeadDim; i += decode_threads) {
    const int row = i / kHeadDim;
    const int d = i % kHeadDim;
    const int at = decode_o_index<kHeadDim, kKvBits>(d);
    float acc = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) acc += merge_o[(w * 16 + row) * MROW + at] * merge_w[w * 16 + row];
    const int head = kv_head * group + row;
    if (active_splits == 1) {
      T* out = static_cast<T*>(p.out) + static_cast<std::int64_t>(q_begin) * p.out_row_stride +
               static_cast<std::int64_t>(head) * kHeadDim;
      out[d] = from_f32<T>(acc);
    } else {
      const std::int64_t partial = (static_cast<std::int64_t>(sequence) * q_heads + head) * p.splits + split;
      p.partial_out[partial * kHeadDim + d] = acc;
      if (d == 0) p.partial_lse[partial] = merge_lse[row];
    }
  }
}

template <typename T, int kHeadDim, int kKvBits>
cudaError_t launch_decode_split(const AttentionKernelParams& params, int num_sequences, cudaStream_t stream) {
  constexpr int smem = decode_smem_bytes<T, kHeadDim, kKvBits>();
  if (const cudaError_t e = allow_dynamic_smem<decode_split_kernel<T, kHeadDim, kKvBits>>(smem); e != cudaSuccess) {
    return e;
  }
  const dim3 grid(params.splits, params.kv_heads, num_sequences);
  decode_split_kernel<T, kHeadDim, kKvBits><<<grid, decode_threads, smem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace hostrun::cuda::detail
