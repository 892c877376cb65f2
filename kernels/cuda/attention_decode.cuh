// Split-K ("flash-decoding") attention for decode tokens over the paged KV
// cache. Included only by attention_decode_{bf16,f16,kv8,kv4}.cu.
//
// grid (splits, kv_heads, sequences), 4 warps. A CTA owns one (sequence, kv
// head) and the positions [split * split_tokens, +split_tokens) of its
// context (the last split also takes anything past splits * split_tokens, so a
// plan made for a shorter max_context_len is slow, never wrong). The `group`
// (<= 8) q heads of the kv head are the 8 columns of the mma tiles (columns
// >= group are zero; "roles" below), so each K/V row is loaded from HBM
// once for the whole group.
//
// 64-position K/V tiles are streamed through shared memory (KvTileStream:
// cp.async, 2-4 stages, one barrier a tile; quantized codes go from there
// straight into mma fragments, below); warp w takes positions 16w .. 16w+15 of each tile with its own
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

// Quantized pages are read from the staging buffers straight into mma
// fragments (no 16-bit tile in shared memory). A tile of codes is a half
// (int8) or a quarter (int4) of a 16-bit tile, so shared memory allows more
// CTAs an SM; the stages and the register budget are chosen for 5 at head_dim
// 128 (int8: 2 stages, 40 KB; int4: 3 stages, 35 KB; registers <= 102).
// Measured against 3 / 4 stages at 3 / 4 CTAs an SM (kernels/cuda/NOTES.md,
// occupancy): 4-14% faster at 256 sequences, 2 or 3 int4 stages the same, and
// splitting the score mmas into two accumulator chains changed nothing (f16
// queries over int8 pages spill 4 bytes at this budget).
// 16-bit pages: 2 stages (70 KB, 3 CTAs an SM), at 88-97% of the copy.
template <int kKvBits>
inline constexpr int decode_stages = kKvBits == 4 ? 3 : 2;
template <int kKvBits>
inline constexpr int decode_min_ctas = kKvBits == 0 ? 1 : 5;
template <typename T, int kHeadDim, int kKvBits>
using DecodeTiles =
    KvTileStream<T, kHeadDim, kKvBits, decode_block_n, decode_threads, false, decode_stages<kKvBits>>;

// The four warps' merge at the end reuses the K/V area: O as [warp][head]
// [fragment order], rows padded by 8 floats (a warp's stores then spread over
// the banks), and per (warp, head) the max, the sum and the merge weight, and
// per head the log2-sum-exp. kHeads = 8 a head tile: the q rows staged and merged.
template <int kHeadDim>
inline constexpr int decode_merge_row = kHeadDim + 8;
template <int kHeadDim, int kHeads>
constexpr int decode_merge_bytes() {
  constexpr int warps = decode_threads / 32;
  return (warps * kHeads * decode_merge_row<kHeadDim> + 3 * warps * kHeads + kHeads) * 4;
}

template <typename T, int kHeadDim, int kKvBits, int kHeads>
constexpr int decode_kv_area_bytes() {
  return DecodeTiles<T, kHeadDim, kKvBits>::kSmemBytes > decode_merge_bytes<kHeadDim, kHeads>()
             ? DecodeTiles<T, kHeadDim, kKvBits>::kSmemBytes
             : decode_merge_bytes<kHeadDim, kHeads>();
}

template <typename T, int kHeadDim, int kKvBits, int kHeads>
constexpr int decode_smem_bytes() {
  return kHeads * smem_row<kHeadDim> * 2 + decode_kv_area_bytes<T, kHeadDim, kKvBits, kHeads>();
}

// ---- roles -------------------------------------------------------------
//
// S^T = K Q^T and O^T = V^T P^T: the warp's 16 positions (then 16 head dims
// at a time) are the mma's 16 rows and the group's q heads its 8 columns
// (kHeadTiles tiles of 8; one is launched: groups up to 8). A GQA group of 4 then pads half
// of each product instead of 3/4 (as the q heads in the rows did), O^T
// holds D/16 x 4 accumulators a thread instead of D/8 x 4, and P^T, the B
// operand of the second product, comes from S^T's accumulators with one
// movmatrix (transpose) per 8 x 8 block. Thread (g = lane / 4, c = lane % 4)
// holds S^T for positions g, g + 8 and heads 2c, 2c + 1 of each head tile.
//
// Quantized pages: a dot product does not care in which order its terms are
// summed, so S^T may feed the k slots of the fragments with any permutation
// of head_dim, as long as K and Q use the same one: thread quad c takes dims
// [c * D/4, (c + 1) * D/4) of its key rows, one contiguous run of codes, and
// Q's fragments are loaded once in that order (k-step kk, k slots 2c + e and
// 2c + 8 + e: dims c * D/4 + 8 (kk / 2) + 4 (kk % 2) + e and + 2 + e). O^T's
// rows may be permuted likewise: thread g takes dims [g * D/8, (g + 1) * D/8)
// of the value rows, and row g (g + 8) of m-tile dt is dim g * D/8 + 2 dt
// (+ 1); decode_o_dim maps them back when O is stored.

template <int kHeadDim, int kKvBits>
__device__ __forceinline__ int decode_o_dim(int dt, int row) {  // row: 0..15 of m-tile dt
  if constexpr (kKvBits == 0) return dt * 16 + row;
  else return (row % 8) * (kHeadDim / 8) + 2 * dt + row / 8;
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

// The codes themselves are the mma operands. A row's values are x = c s +
// z (codes c, one (scale s, zero z) a token), and both products let the
// parameters out of the sums over codes:
//   S[h, j] = sum_d q[h, d] (c[j, d] s_j + z_j) = s_j sum_d q c + z_j sum_d q
//   O[h, d] = sum_j p[h, j] (c[j, d] s_j + z_j) = sum_j (p s_j) c + sum_j p z_j
// so each parameter is applied once a token instead of once a value. A code
// enters a fragment register as the f16 number 1024 + c (put into 1024's
// mantissa: exact; one PRMT for an int8 pair, a LOP3 for a K int4 pair, 1.5
// instructions for a V pair, which V^T pairs across two rows); the 1024s
// come out again through the same mma against a fragment of constants, on
// the same f16-rounded q and p s_j, so their rounding cancels. int4 codes
// are masked where they lie, no shift: one LOP3 puts nibbles k and k + 4 of
// a K word (or nibble k of two V rows' bytes) beside 1024's exponent, and a
// high nibble of its byte lands as 1024 + 16 c: K feeds q / 16 for those k
// slots (exact), V divides those output dims by 16 at the end. p s_j goes in
// relative to the largest V scale the warp has seen (r, rescaled with the
// softmax), so it stays in [0, 1] where f16 is precise. Dequantizing each
// value instead took 10% more instructions (int4) and as long
// (kernels/cuda/NOTES.md: the kernel waits on latency, not on issue).
inline constexpr std::uint32_t half_magic_pair = 0x64006400u;  // (1024, 1024) as f16
inline constexpr std::uint32_t half_one_pair = 0x3C003C00u;    // (1, 1)
inline constexpr std::uint32_t half_sixteen_pair = 0x4C004C00u;  // (16, 16)

// K's A fragment of k-step kk from a quad thread's run of codes of rows g
// (lo) and g + 8 (hi). The run's order of dims is free (the roles above) as
// long as load_q_operands takes Q's in the same one:
//   int8: word kk, bytes (0, 1) in a0 / a1 and (2, 3) in a2 / a3;
//   int4: word kk / 2, shifted down a byte for odd kk; nibbles (0, 4) in
//         a0 / a1 and (1, 5), as 16 c, in a2 / a3: four LOP3s and a shift a
//         word, where a pair of adjacent nibbles took a PRMT and a LOP3 each.
template <int kKvBits, int kWords>
__device__ __forceinline__ void key_fragment(const std::uint32_t (&lo)[kWords], const std::uint32_t (&hi)[kWords],
                                             int kk, std::uint32_t (&a)[4]) {
  if constexpr (kKvBits == 8) {
    // bytes [b, 0x64, b + 1, 0x64]
    a[0] = __byte_perm(lo[kk], 0x64646464u, 0x4140u);
    a[1] = __byte_perm(hi[kk], 0x64646464u, 0x4140u);
    a[2] = __byte_perm(lo[kk], 0x64646464u, 0x4342u);
    a[3] = __byte_perm(hi[kk], 0x64646464u, 0x4342u);
  } else {
    const std::uint32_t l = kk % 2 ? lo[kk / 2] >> 8 : lo[kk / 2];
    const std::uint32_t h = kk % 2 ? hi[kk / 2] >> 8 : hi[kk / 2];
    a[0] = mask_or(l, 0x000F000Fu, half_magic_pair);
    a[1] = mask_or(h, 0x000F000Fu, half_magic_pair);
    a[2] = mask_or(l, 0x00F000F0u, half_magic_pair);
    a[3] = mask_or(h, 0x00F000F0u, half_magic_pair);
  }
}
// Where key_fragment takes dim (k slot) 2c + e (+ 8 when `second`) of k-step
// kk from, within the quad thread's run of kHeadDim / 4 dims.
template <int kKvBits>
__device__ __forceinline__ int key_run_dim(int kk, int e, bool second) {
  if constexpr (kKvBits == 8) return 4 * kk + 2 * second + e;
  else return 8 * (kk / 2) + 2 * (kk % 2) + second + 4 * e;
}

// One code word of each of two rows -> for dims d, d + 1 of those the word
// covers (d even), the registers (1024 + c_row0, 1024 + m c_row1) (m = 16
// for int4's odd dims).
template <int kKvBits>
__device__ __forceinline__ void code_columns(std::uint32_t w0, std::uint32_t w1, int d, std::uint32_t (&out)[2]) {
  if constexpr (kKvBits == 8) {
    // bytes d, d + 1 of both rows: r0.b_d r1.b_d r0.b_d+1 r1.b_d+1, then each dim's pair beside 0x64s
    const std::uint32_t both = __byte_perm(w0, w1, d == 0 ? 0x5140u : 0x7362u);
    out[0] = __byte_perm(both, 0x64646464u, 0x4140u);
    out[1] = __byte_perm(both, 0x64646464u, 0x4342u);
  } else {
    // byte d/2 of each row: its low nibbles are dim d, its high ones dim d + 1
    const unsigned k = static_cast<unsigned>(d / 2);
    const std::uint32_t both = __byte_perm(w0, w1, k | k << 4 | (4 + k) << 8 | (4 + k) << 12);
    out[0] = mask_or(both, 0x000F000Fu, half_magic_pair);
    out[1] = mask_or(both, 0x00F000F0u, half_magic_pair);
  }
}

__device__ __forceinline__ std::uint32_t half2_bits(__half2 h) {
  std::uint32_t bits;
  std::memcpy(&bits, &h, 4);
  return bits;
}

// Q^T's B fragments, once per CTA: q[kk][nt] = {b0, b1} of k-step kk and
// head tile nt (heads nt * 8 + g). Quantized pages: in key_fragment's order,
// as f16 (the mma over codes runs in f16; bf16 queries are rounded here,
// saturated at +-65504), int4's b1 divided by 16 (its codes arrive as 16 c).
template <typename T, int kHeadDim, int kKvBits, int kHeadTiles>
__device__ __forceinline__ void load_q_operands(std::uint32_t (&q)[kHeadDim / 16][kHeadTiles][2], const T* q_tile,
                                                int lane) {
  constexpr int ROW = smem_row<kHeadDim>;
  const int g = lane / 4, c = lane % 4;
  // dims d0, d1 of the row as an f16 pair (times `multiple`, a power of two)
  const auto operand = [](const T* row, int d0, int d1, float multiple) -> std::uint32_t {
    const float x = to_f32(row[d0]) * multiple, y = to_f32(row[d1]) * multiple;
    if constexpr (std::is_same_v<T, __half>) return half2_bits(__floats2half2_rn(x, y));
    else return saturated_f16_bits(x) | std::uint32_t(saturated_f16_bits(y)) << 16;
  };
#pragma unroll
  for (int nt = 0; nt < kHeadTiles; ++nt) {
    const T* row = q_tile + (nt * 8 + g) * ROW;
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      if constexpr (kKvBits == 0) {
        q[kk][nt][0] = *reinterpret_cast<const std::uint32_t*>(row + kk * 16 + 2 * c);
        q[kk][nt][1] = *reinterpret_cast<const std::uint32_t*>(row + kk * 16 + 2 * c + 8);
      } else {
        const T* run = row + c * (kHeadDim / 4);
        q[kk][nt][0] = operand(run, key_run_dim<kKvBits>(kk, 0, false), key_run_dim<kKvBits>(kk, 1, false), 1.0f);
        q[kk][nt][1] = operand(run, key_run_dim<kKvBits>(kk, 0, true), key_run_dim<kKvBits>(kk, 1, true),
                               kKvBits == 4 ? 0.0625f : 1.0f);
      }
    }
  }
}

// What quantized scores need of Q besides its fragments, for the lane's
// heads 2c, 2c + 1 of each tile: the 1024s its codes carry (sum_d q' 1024
// over the f16 operands) and its sum (sum_d q, for the zero points), from
// the same mma against a constant A.
template <int kHeadDim, int kKvBits, int kHeadTiles>
struct QuerySums {
  float offset[kHeadTiles][2], sum[kHeadTiles][2];
};
template <int kHeadDim, int kKvBits, int kHeadTiles>
__device__ __forceinline__ QuerySums<kHeadDim, kKvBits, kHeadTiles> query_sums(
    const std::uint32_t (&q)[kHeadDim / 16][kHeadTiles][2]) {
  constexpr std::uint32_t second = kKvBits == 4 ? half_sixteen_pair : half_one_pair;  // 16 undoes b1's q / 16
  const std::uint32_t magic[4] = {half_magic_pair, half_magic_pair, half_magic_pair, half_magic_pair};
  const std::uint32_t ones[4] = {half_one_pair, half_one_pair, second, second};
  QuerySums<kHeadDim, kKvBits, kHeadTiles> sums;
#pragma unroll
  for (int nt = 0; nt < kHeadTiles; ++nt) {
    float offset[4] = {0.0f, 0.0f, 0.0f, 0.0f}, sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      mma_16816<__half>(offset, magic, q[kk][nt][0], q[kk][nt][1]);
      mma_16816<__half>(sum, ones, q[kk][nt][0], q[kk][nt][1]);
    }
    sums.offset[nt][0] = offset[0];
    sums.offset[nt][1] = offset[1];
    sums.sum[nt][0] = sum[0];
    sums.sum[nt][1] = sum[1];
  }
  return sums;
}

// s[nt] = S^T over the warp's 16 staged rows: K's A fragments (ldmatrix for
// 16-bit pages, codes for quantized ones) against Q^T; quantized scores get
// each key's (scale, zero) applied after the codes' sums.
template <typename T, int kHeadDim, int kKvBits, int kHeadTiles, int kPitch>
__device__ __forceinline__ void decode_scores(float (&s)[kHeadTiles][4],
                                              const std::uint32_t (&q)[kHeadDim / 16][kHeadTiles][2],
                                              const unsigned char* k_rows, const std::uint32_t* k_params,
                                              const QuerySums<kHeadDim, kKvBits, kHeadTiles>& q_sums, int lane) {
  const int g = lane / 4, c = lane % 4;
#pragma unroll
  for (int nt = 0; nt < kHeadTiles; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
  if constexpr (kKvBits == 0) {
    const T* rows = reinterpret_cast<const T*>(k_rows);
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      std::uint32_t a[4];
      ldmatrix_x4(a, rows + (lane % 16) * kPitch + kk * 16 + (lane / 16) * 8);
#pragma unroll
      for (int nt = 0; nt < kHeadTiles; ++nt) mma_16816<T>(s[nt], a, q[kk][nt][0], q[kk][nt][1]);
    }
  } else {
    constexpr int run_bytes = kHeadDim / 4 * kKvBits / 8;  // a quad thread's codes of one row
    std::uint32_t lo[run_bytes / 4], hi[run_bytes / 4];     // rows g and g + 8
    load_code_words<run_bytes>(k_rows + g * kPitch + c * run_bytes, lo);
    load_code_words<run_bytes>(k_rows + (g + 8) * kPitch + c * run_bytes, hi);
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      std::uint32_t a[4];
      key_fragment<kKvBits>(lo, hi, kk, a);
#pragma unroll
      for (int nt = 0; nt < kHeadTiles; ++nt) mma_16816<__half>(s[nt], a, q[kk][nt][0], q[kk][nt][1]);
    }
    const float2 key_lo = unpack_kv_params(k_params[g]), key_hi = unpack_kv_params(k_params[g + 8]);
#pragma unroll
    for (int nt = 0; nt < kHeadTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[nt][e] = fmaf(key_lo.x, s[nt][e] - q_sums.offset[nt][e], key_lo.y * q_sums.sum[nt][e]);
        s[nt][e + 2] = fmaf(key_hi.x, s[nt][e + 2] - q_sums.offset[nt][e], key_hi.y * q_sums.sum[nt][e]);
      }
  }
}

// o[dt] += V^T P^T over the warp's 16 staged rows for head-dim tile dt
// (p[nt]: P^T's B fragments). 16-bit pages: ldmatrix.trans of V; quantized:
// the codes of rows 2c, 2c + 1 (and + 8) for the thread's dims.
template <typename T, int kHeadDim, int kKvBits, int kHeadTiles, int kPitch>
__device__ __forceinline__ void decode_values(float (&o)[kHeadDim / 16][kHeadTiles][4],
                                              const std::uint32_t (&p)[kHeadTiles][2], const unsigned char* v_rows,
                                              int lane) {
  if constexpr (kKvBits == 0) {
    const T* rows = reinterpret_cast<const T*>(v_rows);
#pragma unroll
    for (int dt = 0; dt < kHeadDim / 16; ++dt) {
      std::uint32_t a[4];
      ldmatrix_x4_trans(a, rows + (lane % 8 + (lane / 16) * 8) * kPitch + dt * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
      for (int nt = 0; nt < kHeadTiles; ++nt) mma_16816<T>(o[dt][nt], a, p[nt][0], p[nt][1]);
    }
  } else {
    constexpr int run_bytes = kHeadDim / 8 * kKvBits / 8;  // a thread's codes of one row
    constexpr int per_word = 32 / kKvBits;
    const int g = lane / 4, c = lane % 4;
    const int rows[4] = {2 * c, 2 * c + 1, 2 * c + 8, 2 * c + 9};
    std::uint32_t w[4][run_bytes / 4];
#pragma unroll
    for (int r = 0; r < 4; ++r) load_code_words<run_bytes>(v_rows + rows[r] * kPitch + g * run_bytes, w[r]);
#pragma unroll
    for (int dt = 0; dt < kHeadDim / 16; ++dt) {
      // dims 2 dt, 2 dt + 1 of the run: A rows g and g + 8
      std::uint32_t top[2], bottom[2];
      code_columns<kKvBits>(w[0][2 * dt / per_word], w[1][2 * dt / per_word], 2 * dt % per_word, top);
      code_columns<kKvBits>(w[2][2 * dt / per_word], w[3][2 * dt / per_word], 2 * dt % per_word, bottom);
      const std::uint32_t a[4] = {top[0], top[1], bottom[0], bottom[1]};
#pragma unroll
      for (int nt = 0; nt < kHeadTiles; ++nt) mma_16816<__half>(o[dt][nt], a, p[nt][0], p[nt][1]);
    }
  }
}

template <typename T, int kHeadDim, int kKvBits, int kHeadTiles>
__global__ void __launch_bounds__(decode_threads, decode_min_ctas<kKvBits>) decode_split_kernel(const AttentionKernelParams p) {
  wait_for_previous_grid();  // a programmatic dependent: the pages were just written
  allow_next_grid_to_launch();  // the output projection may start streaming its weights
  constexpr int BN = decode_block_n;
  constexpr int ROW = smem_row<kHeadDim>;
  constexpr int KSTEPS = kHeadDim / 16;
  constexpr int DTILES = kHeadDim / 16;
  constexpr int WARPS = decode_threads / 32;
  constexpr bool kQuantized = kKvBits != 0;
  constexpr int HEADS = 8 * kHeadTiles;  // q rows staged; rows >= group are zeros
  using P = std::conditional_t<kQuantized, __half, T>;  // the type of the products' operands
  extern __shared__ __align__(16) unsigned char smem[];
  T* q_tile = reinterpret_cast<T*>(smem);  // [HEADS][ROW]
  using Tiles = DecodeTiles<T, kHeadDim, kKvBits>;
  const Tiles tiles{reinterpret_cast<unsigned char*>(q_tile + HEADS * ROW)};

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
  const int g = lane / 4, c = lane % 4;

  {  // the group's q rows; rows >= group zero-filled
    constexpr int chunks = kHeadDim / 8;
    const T* q = static_cast<const T*>(p.q) + static_cast<std::int64_t>(q_begin) * p.q_row_stride +
                 static_cast<std::int64_t>(kv_head * group) * kHeadDim;
    for (int i = threadIdx.x; i < HEADS * chunks; i += decode_threads) {
      const int row = i / chunks;
      const int chunk = i % chunks;
      const bool valid = row < group;
      cp_async_16(q_tile + row * ROW + chunk * 8, q + (valid ? row * kHeadDim + chunk * 8 : 0), valid);
    }
  }
  const int num_tiles = (end - begin + BN - 1) / BN;
  constexpr int STAGES = Tiles::kStages;
  TileWalk<BN> walk(p, begin);
#pragma unroll
  for (int t = 0; t < STAGES - 1; ++t) {  // the first group also holds q
    if (t < num_tiles) tiles.issue(t, p, block_table, kv_head, begin + t * BN, end, walk.next(p, block_table));
    cp_async_commit();
  }
  // The page of the next tile to issue, read one step before it is needed.
  TileRows next_rows;
  if (STAGES - 1 < num_tiles) next_rows = walk.next(p, block_table);

  std::uint32_t q_operands[KSTEPS][kHeadTiles][2];
  [[maybe_unused]] QuerySums<kHeadDim, kKvBits, kHeadTiles> q_sums;
  float o[DTILES][kHeadTiles][4];
#pragma unroll
  for (int dt = 0; dt < DTILES; ++dt)
#pragma unroll
    for (int nt = 0; nt < kHeadTiles; ++nt) o[dt][nt][0] = o[dt][nt][1] = o[dt][nt][2] = o[dt][nt][3] = 0.0f;
  // Per head tile, the lane's heads 2c, 2c + 1: running max, sum of p (over the lane's positions until the end),
  // and for quantized pages the V side's sums (attention_decode's codes section): sum of p' (units of r) and of p z.
  float m[kHeadTiles][2], l[kHeadTiles][2];
  [[maybe_unused]] float v_ones[kHeadTiles][2], v_zero[kHeadTiles][2];
  [[maybe_unused]] float v_r = 0.0f;  // the largest V scale seen
#pragma unroll
  for (int nt = 0; nt < kHeadTiles; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      m[nt][e] = -INFINITY;
      l[nt][e] = 0.0f;
      v_ones[nt][e] = v_zero[nt][e] = 0.0f;
    }

  for (int n = 0; n < num_tiles; ++n) {
    const int buffer = n % STAGES;
    // Tile n has landed (groups 0..n of the S - 1 + n committed) and, after
    // the barrier, every warp is done with tile n - 1, whose buffer is
    // refilled next: one barrier a tile.
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    if (n + STAGES - 1 < num_tiles) {
      tiles.issue((n + STAGES - 1) % STAGES, p, block_table, kv_head, begin + (n + STAGES - 1) * BN, end, next_rows);
      if (n + STAGES < num_tiles) next_rows = walk.next(p, block_table);
    }
    cp_async_commit();  // empty groups near the end keep the wait uniform
    if (n == 0) {
      load_q_operands<T, kHeadDim, kKvBits, kHeadTiles>(q_operands, q_tile, lane);
      if constexpr (kQuantized) q_sums = query_sums<kHeadDim, kKvBits, kHeadTiles>(q_operands);
    }
    const int key0 = begin + n * BN + warp * 16;  // this warp's 16 positions

    float s[kHeadTiles][4];
    [[maybe_unused]] const std::uint32_t* v_params = nullptr;
    if constexpr (kQuantized) {
      decode_scores<T, kHeadDim, kKvBits, kHeadTiles, Tiles::kStagePitch>(
          s, q_operands, tiles.k_codes(buffer) + warp * 16 * Tiles::kStagePitch, tiles.k_params(buffer) + warp * 16,
          q_sums, lane);
      v_params = tiles.v_params(buffer) + warp * 16;
    } else {
      decode_scores<T, kHeadDim, kKvBits, kHeadTiles, ROW>(
          s, q_operands, reinterpret_cast<const unsigned char*>(tiles.k(buffer) + warp * 16 * ROW), nullptr, q_sums,
          lane);
    }
    // Past the chunk's end the rows were zero-filled: mask them out. The
    // maximum is taken over the raw scores and scaled once (the scale is
    // positive), so a score costs one FMA before its exp2 (attention_tile.cuh).
    const bool valid_lo = key0 + g < end, valid_hi = key0 + g + 8 < end;
    float alpha[kHeadTiles][2], o_alpha[kHeadTiles][2];
#pragma unroll
    for (int nt = 0; nt < kHeadTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (!valid_lo) s[nt][e] = -INFINITY;
        if (!valid_hi) s[nt][e + 2] = -INFINITY;
        float tile_max = fmaxf(s[nt][e], s[nt][e + 2]);
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 4));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 8));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 16));
        tile_max = fmaxf(m[nt][e], tile_max * p.scale_log2);
        // A warp whose positions all lie past the end has seen nothing yet: its
        // max stays -inf, and both exp2 arguments would be NaN; keep it empty.
        alpha[nt][e] = m[nt][e] == -INFINITY ? 0.0f : exp2_flush(m[nt][e] - tile_max);
        const float shift = tile_max == -INFINITY ? 0.0f : tile_max;
        m[nt][e] = tile_max;
        s[nt][e] = exp2_flush(fmaf(s[nt][e], p.scale_log2, -shift));
        s[nt][e + 2] = exp2_flush(fmaf(s[nt][e + 2], p.scale_log2, -shift));
        l[nt][e] = l[nt][e] * alpha[nt][e] + s[nt][e] + s[nt][e + 2];
        o_alpha[nt][e] = alpha[nt][e];
      }
    // P^T's B fragments: S^T's accumulators (positions g, g + 8 x heads 2c, 2c + 1) as two 8 x 8 blocks,
    // transposed. Quantized pages: p s_j / r, and the sums the V side keeps.
    float ratio_lo = 1.0f, ratio_hi = 1.0f;
    if constexpr (kQuantized) {
      const float2 value_lo = unpack_kv_params(v_params[g]), value_hi = unpack_kv_params(v_params[g + 8]);
      float tile_r = fmaxf(value_lo.x, value_hi.x);
      tile_r = fmaxf(tile_r, __shfl_xor_sync(0xffffffffu, tile_r, 4));
      tile_r = fmaxf(tile_r, __shfl_xor_sync(0xffffffffu, tile_r, 8));
      tile_r = fmaxf(tile_r, __shfl_xor_sync(0xffffffffu, tile_r, 16));
      const float r = fmaxf(v_r, tile_r);
      const float inverse = r > 0.0f ? rcp_approx(r) : 0.0f;
      const float rescale = r > v_r ? v_r * inverse : 1.0f;  // O and v_ones to units of the new r (exactly 1 if none)
      v_r = r;
      ratio_lo = value_lo.x * inverse;
      ratio_hi = value_hi.x * inverse;
#pragma unroll
      for (int nt = 0; nt < kHeadTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          o_alpha[nt][e] *= rescale;
          v_ones[nt][e] *= o_alpha[nt][e];
          v_zero[nt][e] = v_zero[nt][e] * alpha[nt][e] + s[nt][e] * value_lo.y + s[nt][e + 2] * value_hi.y;
        }
    }
    // Once the maxima (and the V scale) settle, every factor is exactly 1
    // (exp2(0) and the rescale above): the warp then skips O's multiplies.
    bool o_moves = false;
#pragma unroll
    for (int nt = 0; nt < kHeadTiles; ++nt) o_moves = o_moves || o_alpha[nt][0] != 1.0f || o_alpha[nt][1] != 1.0f;
    if (__any_sync(0xffffffffu, o_moves)) {
#pragma unroll
      for (int dt = 0; dt < DTILES; ++dt)
#pragma unroll
        for (int nt = 0; nt < kHeadTiles; ++nt) {
          o[dt][nt][0] *= o_alpha[nt][0];
          o[dt][nt][1] *= o_alpha[nt][1];
          o[dt][nt][2] *= o_alpha[nt][0];
          o[dt][nt][3] *= o_alpha[nt][1];
        }
    }
    std::uint32_t p_t[kHeadTiles][2];
#pragma unroll
    for (int nt = 0; nt < kHeadTiles; ++nt) {
      p_t[nt][0] = movmatrix_trans(pack2<P>(s[nt][0] * ratio_lo, s[nt][1] * ratio_lo));
      p_t[nt][1] = movmatrix_trans(pack2<P>(s[nt][2] * ratio_hi, s[nt][3] * ratio_hi));
    }
    if constexpr (kQuantized) {
      const std::uint32_t ones[4] = {half_one_pair, half_one_pair, half_one_pair, half_one_pair};
#pragma unroll
      for (int nt = 0; nt < kHeadTiles; ++nt) {
        float sums[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mma_16816<__half>(sums, ones, p_t[nt][0], p_t[nt][1]);
        v_ones[nt][0] += sums[0];
        v_ones[nt][1] += sums[1];
      }
      decode_values<T, kHeadDim, kKvBits, kHeadTiles, Tiles::kStagePitch>(
          o, p_t, tiles.v_codes(buffer) + warp * 16 * Tiles::kStagePitch, lane);
    } else {
      decode_values<T, kHeadDim, kKvBits, kHeadTiles, ROW>(
          o, p_t, reinterpret_cast<const unsigned char*>(tiles.v(buffer) + warp * 16 * ROW), lane);
    }
  }
  cp_async_wait<0>();  // nothing may still land in the buffers reused below
  __syncthreads();     // and every warp is done with the last tile

  // Sums over the lane's positions -> over the warp's (lanes of one c hold one head pair).
#pragma unroll
  for (int nt = 0; nt < kHeadTiles; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int offset = 4; offset < 32; offset <<= 1) {
        l[nt][e] += __shfl_xor_sync(0xffffffffu, l[nt][e], offset);
        if constexpr (kQuantized) v_zero[nt][e] += __shfl_xor_sync(0xffffffffu, v_zero[nt][e], offset);
      }
  if constexpr (kQuantized) {  // O back to absolute units: r (o - 1024 v_ones) / m + sum_j p z_j
#pragma unroll
    for (int dt = 0; dt < DTILES; ++dt)
#pragma unroll
      for (int nt = 0; nt < kHeadTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          // rows g + 8 hold odd dims of the run, which int4 fed as 16 c
          const float r = kKvBits == 4 && e >= 2 ? v_r * 0.0625f : v_r;
          o[dt][nt][e] = fmaf(r, o[dt][nt][e] - 1024.0f * v_ones[nt][e % 2], v_zero[nt][e % 2]);
        }
  }

  // Merge the four warps' states (heads >= group are padding: skipped).
  constexpr int MROW = decode_merge_row<kHeadDim>;
  float* merge_o = reinterpret_cast<float*>(tiles.smem);  // [WARPS][HEADS][MROW], by dim
  float* merge_m = merge_o + WARPS * HEADS * MROW;        // [WARPS][HEADS]
  float* merge_l = merge_m + WARPS * HEADS;               // [WARPS][HEADS]
  float* merge_w = merge_l + WARPS * HEADS;               // [WARPS][HEADS]: exp2(m_w - m) / l
  float* merge_lse = merge_w + WARPS * HEADS;             // [HEADS]: m + log2(l)
  static_assert(decode_merge_bytes<kHeadDim, HEADS>() <= decode_kv_area_bytes<T, kHeadDim, kKvBits, HEADS>());
#pragma unroll
  for (int nt = 0; nt < kHeadTiles; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int head = nt * 8 + 2 * c + e;
      if (g == 0) {
        merge_m[warp * HEADS + head] = m[nt][e];
        merge_l[warp * HEADS + head] = l[nt][e];
      }
      if (head >= group) continue;
      float* row = merge_o + (warp * HEADS + head) * MROW;
#pragma unroll
      for (int dt = 0; dt < DTILES; ++dt) {
        row[decode_o_dim<kHeadDim, kKvBits>(dt, g)] = o[dt][nt][e];
        row[decode_o_dim<kHeadDim, kKvBits>(dt, g + 8)] = o[dt][nt][e + 2];
      }
    }
  __syncthreads();
  if (threadIdx.x < group) {  // one thread a head: the merge weights, once
    const int row = threadIdx.x;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) mx = fmaxf(mx, merge_m[w * HEADS + row]);
    float scale[WARPS], sum = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      const float mw = merge_m[w * HEADS + row];
      scale[w] = mw == -INFINITY ? 0.0f : exp2f(mw - mx);
      sum += merge_l[w * HEADS + row] * scale[w];
    }
#pragma unroll
    for (int w = 0; w < WARPS; ++w) merge_w[w * HEADS + row] = scale[w] / sum;
    merge_lse[row] = mx + log2f(sum);
  }
  __syncthreads();

  for (int i = threadIdx.x; i < group * kHeadDim; i += decode_threads) {
    const int row = i / kHeadDim;
    const int d = i % kHeadDim;
    float acc = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) acc += merge_o[(w * HEADS + row) * MROW + d] * merge_w[w * HEADS + row];
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

template <typename T, int kHeadDim, int kKvBits, int kHeadTiles>
cudaError_t launch_decode_heads(const AttentionKernelParams& params, int num_sequences, cudaStream_t stream) {
  constexpr auto kernel = decode_split_kernel<T, kHeadDim, kKvBits, kHeadTiles>;
  constexpr int smem = decode_smem_bytes<T, kHeadDim, kKvBits, 8 * kHeadTiles>();
  if (const cudaError_t e = allow_dynamic_smem<kernel>(smem); e != cudaSuccess) return e;
  return launch_dependent(kernel, dim3(params.splits, params.kv_heads, num_sequences), dim3(decode_threads),
                          std::size_t(smem), stream, params);
}

// One head tile: paged_attention plans this kernel for groups up to 8 (two
// tiles, groups up to 16, would compile, but int4's would spill at the
// register cap, and no GPU run has covered them; larger groups' decode
// tokens go through the prefill kernel).
template <typename T, int kHeadDim, int kKvBits>
cudaError_t launch_decode_split(const AttentionKernelParams& params, int num_sequences, cudaStream_t stream) {
  if (params.group > 8) return cudaErrorInvalidValue;
  return launch_decode_heads<T, kHeadDim, kKvBits, 1>(params, num_sequences, stream);
}

template <typename T, int kHeadDim, int kKvBits>
int decode_ctas_per_sm() {
  static const int ctas = [] {
    constexpr auto kernel = decode_split_kernel<T, kHeadDim, kKvBits, 1>;
    constexpr int smem = decode_smem_bytes<T, kHeadDim, kKvBits, 8>();
    int n = 0;
    if (allow_dynamic_smem<kernel>(smem) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, decode_threads, smem) != cudaSuccess) {
      cudaGetLastError();  // not sticky; the launch itself reports what is wrong
      return 0;
    }
    return n;
  }();
  return ctas;
}

}  // namespace hostrun::cuda::detail
