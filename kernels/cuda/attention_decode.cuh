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
// before the changes that made the kernel 2x faster; it is bound by the
// latency of each warp's chain of dependent instructions a tile, not by how
// many tiles are in flight (kernels/cuda/NOTES.md).
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

// Quantized pages: per warp and q row, the row's (offset, sum) of
// query_row_sums, kept in shared memory (registers are at their cap).
template <int kKvBits>
inline constexpr int decode_q_sums_bytes = kKvBits == 0 ? 0 : decode_threads / 32 * decode_max_group * 8;

template <typename T, int kHeadDim, int kKvBits>
constexpr int decode_smem_bytes() {
  return decode_max_group * smem_row<kHeadDim> * 2 + decode_kv_area_bytes<T, kHeadDim, kKvBits>() +
         decode_q_sums_bytes<kKvBits>;
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

// The codes themselves are the mma operands. A row's values are x = c s +
// z (codes c, one (scale s, zero z) a token), and both products let the
// parameters out of the sums over codes:
//   S[h, j] = sum_d q[h, d] (c[j, d] s_j + z_j) = s_j sum_d q c + z_j sum_d q
//   O[h, d] = sum_j p[h, j] (c[j, d] s_j + z_j) = sum_j (p s_j) c + sum_j p z_j
// so each parameter is applied once a token instead of once a value. A code
// enters a fragment register as the f16 number 1024 + c (put into 1024's
// mantissa: exact; one PRMT for an int8 pair, a PRMT and a LOP3 for an int4
// pair, ~0.75 for a V pair, which B wants across two rows); the 1024s come
// out again through the same mma against a fragment of constants, on the
// same f16-rounded q and p s_j, so their rounding cancels. int4 pairs share
// a byte and the high nibble lands as 1024 + 16 c: K feeds q / 16 for those
// dims (exact), V divides those output dims by 16 at the end. p s_j goes in
// relative to the largest V scale the warp has seen (r, rescaled with the
// softmax), so it stays in [0, 1] where f16 is precise. Dequantizing each
// value instead took 10% more instructions (int4) and as long
// (kernels/cuda/NOTES.md: the kernel waits on latency, not on issue).
inline constexpr std::uint32_t half_magic_pair = 0x64006400u;  // (1024, 1024) as f16
inline constexpr std::uint32_t half_one_pair = 0x3C003C00u;    // (1, 1)

// Codes i, i + 1 (i even) of one row's run as (1024 + c_i, 1024 + m c_i+1),
// m = 1 (int8) or 16 (int4).
template <int kKvBits, int kWords>
__device__ __forceinline__ std::uint32_t code_pair(const std::uint32_t (&w)[kWords], int i) {
  constexpr int per_word = 32 / kKvBits;
  const std::uint32_t word = w[i / per_word];
  const int at = i % per_word;
  if constexpr (kKvBits == 8) {
    // bytes [b_at, 0x64, b_at+1, 0x64]
    return __byte_perm(word, 0x64646464u, 0x4040u | static_cast<unsigned>(at) | static_cast<unsigned>(at + 1) << 8);
  } else {
    // byte at/2 into bytes 0 and 2; its low nibble stays in half 0, its high one in half 1 (as 16 c)
    const unsigned b = static_cast<unsigned>(at / 2);
    return (__byte_perm(word, 0u, 0x4040u | b | b << 8) & 0x00F0000Fu) | half_magic_pair;
  }
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
    out[0] = (both & 0x000F000Fu) | half_magic_pair;
    out[1] = (both & 0x00F000F0u) | half_magic_pair;
  }
}

__device__ __forceinline__ std::uint32_t half2_bits(__half2 h) {
  std::uint32_t bits;
  std::memcpy(&bits, &h, 4);
  return bits;
}

// Q's A fragments in the permuted k order, as f16 (the mma over quantized
// pages runs in f16): k-step 2g + h (h = 0, 1) holds dims c * D/4 + 8g + 4h
// + {0, 1} (columns 2c, 2c + 1) and + {2, 3} (columns 2c + 8, 2c + 9), rows
// lane / 4 and lane / 4 + 8. bf16 queries are rounded to f16 here, once per
// CTA (saturated at +-65504, far beyond any query a model produces); for
// int4 the odd dims are divided by 16 (their codes arrive as 16 c).
template <typename T, int kHeadDim, int kKvBits>
__device__ __forceinline__ void load_q_fragments_permuted(std::uint32_t (&q_frag)[kHeadDim / 16][4], const T* q_tile,
                                                           int lane) {
  constexpr int ROW = smem_row<kHeadDim>;
  const int c = lane % 4, row = lane / 4;
  const auto to_f16 = [](std::uint32_t pair) -> std::uint32_t {
    __half2 h;
    if constexpr (std::is_same_v<T, __half>) {
      std::memcpy(&h, &pair, 4);
    } else {
      __nv_bfloat162 b;
      std::memcpy(&b, &pair, 4);
      const float2 f = __bfloat1622float2(b);
      h = __floats2half2_rn(fminf(fmaxf(f.x, -65504.0f), 65504.0f), fminf(fmaxf(f.y, -65504.0f), 65504.0f));
    }
    if constexpr (kKvBits == 4) h = __hmul2(h, __halves2half2(__float2half_rn(1.0f), __float2half_rn(0.0625f)));
    return half2_bits(h);
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

// What the scores need of Q besides its fragments, per q row: the 1024s its
// codes carry (sum_d q' 1024 over the f16 fragments) and its sum (sum_d q,
// for the zero points), as float2 (offset, sum) into the warp's `row_sums`
// [16] (lanes of quad column 0 write rows lane / 4 and + 8).
template <int kHeadDim, int kKvBits>
__device__ __forceinline__ void store_query_row_sums(const std::uint32_t (&q_frag)[kHeadDim / 16][4],
                                                     float2* row_sums, int lane) {
  constexpr std::uint32_t multiples = kKvBits == 4 ? 0x4C003C00u : half_one_pair;  // (1, 16) undoes q / 16
  float offset[4] = {0.0f, 0.0f, 0.0f, 0.0f}, sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    mma_16816<__half>(offset, q_frag[kk], half_magic_pair, half_magic_pair);
    mma_16816<__half>(sum, q_frag[kk], multiples, multiples);
  }
  if (lane % 4 == 0) {
    row_sums[lane / 4] = make_float2(offset[0], sum[0]);
    row_sums[lane / 4 + 8] = make_float2(offset[2], sum[2]);
  }
  __syncwarp();
}

// s[nt] = Q K^T over the warp's 16 staged key rows (n-tile nt: rows 8nt ..):
// the codes' sums, then each key's (scale, zero) applied.
template <int kHeadDim, int kKvBits, int kPitch>
__device__ __forceinline__ void quantized_scores(float (&s)[2][4], const std::uint32_t (&q_frag)[kHeadDim / 16][4],
                                                 const float2* row_sums, const unsigned char* k_codes,
                                                 const std::uint32_t* k_params, int lane) {
  constexpr int run_bytes = kHeadDim / 4 * kKvBits / 8;  // a quad thread's codes of one row
  const int c = lane % 4;
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    const int row = nt * 8 + lane / 4;
    std::uint32_t w[run_bytes / 4];
    load_code_words<run_bytes>(k_codes + row * kPitch + c * run_bytes, w);
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      // k-step kk = 2g + h: dims 8g + 4h + {0,1} and + {2,3} of the run
      const int first = 8 * (kk / 2) + 4 * (kk % 2);
      mma_16816<__half>(s[nt], q_frag[kk], code_pair<kKvBits>(w, first), code_pair<kKvBits>(w, first + 2));
    }
  }
  // C: rows lane / 4 (e < 2) and + 8, columns (keys) 8 nt + 2c + e % 2
  const float2 lo = row_sums[lane / 4], hi = row_sums[lane / 4 + 8];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float2 key = unpack_kv_params(k_params[nt * 8 + 2 * c + e]);
      s[nt][e] = fmaf(key.x, s[nt][e] - lo.x, key.y * lo.y);
      s[nt][e + 2] = fmaf(key.x, s[nt][e + 2] - hi.x, key.y * hi.y);
    }
}

// The V side's state beyond O: O and `ones` (sum_j p' for the 1024s of the
// lane's rows lane / 4 and + 8) count in units of r, the largest V scale
// seen; `zero` is sum_j p z_j over the lane's keys, absolute.
struct QuantizedValueState {
  float r = 0.0f;
  float ones_lo = 0.0f, ones_hi = 0.0f;
  float zero_lo = 0.0f, zero_hi = 0.0f;
};

// o += P V over the warp's 16 staged value rows (a: P' = p s_j / r, f16).
// The run is taken 8 bytes at a time (fewer live registers).
template <int kHeadDim, int kKvBits, int kPitch>
__device__ __forceinline__ void quantized_values(float (&o)[kHeadDim / 8][4], const std::uint32_t (&a)[4],
                                                 const unsigned char* v_codes, int lane) {
  constexpr int run_bytes = kHeadDim / 8 * kKvBits / 8;  // a thread's codes of one row
  constexpr int piece_bytes = run_bytes < 8 ? run_bytes : 8;
  constexpr int piece_words = piece_bytes / 4;
  constexpr int per_word = 32 / kKvBits;
  const int c = lane % 4, n = lane / 4;
  // B rows (k) 2c, 2c + 1 (b0) and 2c + 8, 2c + 9 (b1): the keys of P's columns.
  const int rows[4] = {2 * c, 2 * c + 1, 2 * c + 8, 2 * c + 9};
#pragma unroll
  for (int piece = 0; piece < run_bytes / piece_bytes; ++piece) {
    std::uint32_t w[4][piece_words];
#pragma unroll
    for (int r = 0; r < 4; ++r)
      load_code_words<piece_bytes>(v_codes + rows[r] * kPitch + n * run_bytes + piece * piece_bytes, w[r]);
#pragma unroll
    for (int i = 0; i < piece_words; ++i) {
#pragma unroll
      for (int d = 0; d < per_word; d += 2) {  // two dims at a time: fewer live registers
        std::uint32_t b0[2], b1[2];
        code_columns<kKvBits>(w[0][i], w[1][i], d, b0);
        code_columns<kKvBits>(w[2][i], w[3][i], d, b1);
        mma_16816<__half>(o[(piece * piece_words + i) * per_word + d], a, b0[0], b1[0]);
        mma_16816<__half>(o[(piece * piece_words + i) * per_word + d + 1], a, b0[1], b1[1]);
      }
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
  [[maybe_unused]] float2* q_row_sums =  // this warp's [16] of decode_q_sums_bytes, after the K/V area
      reinterpret_cast<float2*>(smem + decode_max_group * ROW * 2 + decode_kv_area_bytes<T, kHeadDim, kKvBits>()) +
      (threadIdx.x / 32) * decode_max_group;

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
  [[maybe_unused]] QuantizedValueState v_state;

  for (int n = 0; n < num_tiles; ++n) {
    const int buffer = n % STAGES;
    // Tile n has landed (groups 0..n of the S - 1 + n committed) and, after
    // the barrier, every warp is done with tile n - 1, whose buffer is
    // refilled next: one barrier a tile.
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    if (n + STAGES - 1 < num_tiles) {
      tiles.issue((n + STAGES - 1) % STAGES, p, block_table, kv_head, begin + (n + STAGES - 1) * BN, end, next_rows);
      if (n + STAGES < num_tiles) next_rows = tile_rows<BN>(p, block_table, begin + (n + STAGES) * BN);
    }
    cp_async_commit();  // empty groups near the end keep the wait uniform
    if (n == 0) {
      if constexpr (kKvBits == 0) {
#pragma unroll
        for (int kk = 0; kk < KSTEPS; ++kk) {
          ldmatrix_x4(q_frag[kk], q_tile + (lane % 16) * ROW + kk * 16 + (lane / 16) * 8);
        }
      } else {
        load_q_fragments_permuted<T, kHeadDim, kKvBits>(q_frag, q_tile, lane);
        store_query_row_sums<kHeadDim, kKvBits>(q_frag, q_row_sums, lane);
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
          s, q_frag, q_row_sums, tiles.k_codes(buffer) + warp * 16 * Tiles::kStagePitch,
          tiles.k_params(buffer) + warp * 16, lane);
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
    float o_alpha_lo = alpha_lo, o_alpha_hi = alpha_hi;
    // (scale, zero) of the keys of P's columns 2c, 2c + 1, 2c + 8, 2c + 9, and p s_j / r for them
    [[maybe_unused]] float2 v_key[4];
    [[maybe_unused]] float v_ratio[4];
    if constexpr (kKvBits != 0) {
      const std::uint32_t* v_params = tiles.v_params(buffer) + warp * 16;
      const int c = lane % 4;
      v_key[0] = unpack_kv_params(v_params[2 * c]);
      v_key[1] = unpack_kv_params(v_params[2 * c + 1]);
      v_key[2] = unpack_kv_params(v_params[2 * c + 8]);
      v_key[3] = unpack_kv_params(v_params[2 * c + 9]);
      float tile_r = fmaxf(fmaxf(v_key[0].x, v_key[1].x), fmaxf(v_key[2].x, v_key[3].x));
      tile_r = fmaxf(tile_r, __shfl_xor_sync(0xffffffffu, tile_r, 1));
      tile_r = fmaxf(tile_r, __shfl_xor_sync(0xffffffffu, tile_r, 2));
      const float r = fmaxf(v_state.r, tile_r);
      const float rescale = r > 0.0f ? v_state.r / r : 1.0f;  // O and ones to units of the new r
      const float inverse = r > 0.0f ? 1.0f / r : 0.0f;
      v_state.r = r;
#pragma unroll
      for (int j = 0; j < 4; ++j) v_ratio[j] = v_key[j].x * inverse;
      o_alpha_lo *= rescale;
      o_alpha_hi *= rescale;
      v_state.ones_lo *= o_alpha_lo;
      v_state.ones_hi *= o_alpha_hi;
      v_state.zero_lo = v_state.zero_lo * alpha_lo + s[0][0] * v_key[0].y + s[0][1] * v_key[1].y +
                        s[1][0] * v_key[2].y + s[1][1] * v_key[3].y;
      v_state.zero_hi = v_state.zero_hi * alpha_hi + s[0][2] * v_key[0].y + s[0][3] * v_key[1].y +
                        s[1][2] * v_key[2].y + s[1][3] * v_key[3].y;
    }
#pragma unroll
    for (int d = 0; d < DTILES; ++d) {
      o[d][0] *= o_alpha_lo;
      o[d][1] *= o_alpha_lo;
      o[d][2] *= o_alpha_hi;
      o[d][3] *= o_alpha_hi;
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
      const std::uint32_t a[4] = {pack2<__half>(s[0][0] * v_ratio[0], s[0][1] * v_ratio[1]),
                                  pack2<__half>(s[0][2] * v_ratio[0], s[0][3] * v_ratio[1]),
                                  pack2<__half>(s[1][0] * v_ratio[2], s[1][1] * v_ratio[3]),
                                  pack2<__half>(s[1][2] * v_ratio[2], s[1][3] * v_ratio[3])};
      float ones[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      mma_16816<__half>(ones, a, half_one_pair, half_one_pair);
      v_state.ones_lo += ones[0];
      v_state.ones_hi += ones[2];
      quantized_values<kHeadDim, kKvBits, Tiles::kStagePitch>(
          o, a, tiles.v_codes(buffer) + warp * 16 * Tiles::kStagePitch, lane);
    }
  }
  cp_async_wait<0>();  // nothing may still land in the buffers reused below
  __syncthreads();     // and every warp is done with the last tile

  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
  if constexpr (kKvBits != 0) {  // O back to absolute units: r (o - 1024 ones) / m + sum_j p z_j
    v_state.zero_lo += __shfl_xor_sync(0xffffffffu, v_state.zero_lo, 1);
    v_state.zero_lo += __shfl_xor_sync(0xffffffffu, v_state.zero_lo, 2);
    v_state.zero_hi += __shfl_xor_sync(0xffffffffu, v_state.zero_hi, 1);
    v_state.zero_hi += __shfl_xor_sync(0xffffffffu, v_state.zero_hi, 2);
    const float offset_lo = 1024.0f * v_state.ones_lo, offset_hi = 1024.0f * v_state.ones_hi;
#pragma unroll
    for (int d = 0; d < DTILES; ++d) {
      const float r = kKvBits == 4 && d % 2 == 1 ? v_state.r * 0.0625f : v_state.r;  // int4's odd dims came as 16 c
      o[d][0] = fmaf(r, o[d][0] - offset_lo, v_state.zero_lo);
      o[d][1] = fmaf(r, o[d][1] - offset_lo, v_state.zero_lo);
      o[d][2] = fmaf(r, o[d][2] - offset_hi, v_state.zero_hi);
      o[d][3] = fmaf(r, o[d][3] - offset_hi, v_state.zero_hi);
    }
  }

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
