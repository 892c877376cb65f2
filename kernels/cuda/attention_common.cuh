// Internal to kernels/cuda: what the attention kernels share — their
// parameter block and the paged K/V tile loader (the tensor-core and
// async-copy wrappers are in mma.cuh).
//
// Why mma.sync (m16n8k16) through inline PTX rather than WMMA or wgmma:
//  - WMMA hides the accumulator layout, and FlashAttention's online softmax
//    needs it: the S = QK^T accumulators of two n8 tiles are, register for
//    register, the A operand of the P.V product, so P never touches shared
//    memory. With mma.sync the layout is documented (PTX ISA, "Matrix fragments
//    for mma.m16n8k16") and that reuse is free.
//  - wgmma (sm_90a) wants 64-row warpgroup tiles and its B operand in shared
//    memory (8-row core matrices, here swizzled). Decode tiles have <= 16
//    useful rows and decode is bound by K/V bandwidth, so decode stays on
//    mma.sync for sm_80..sm_90.
//    Prefill at head_dim 128 on 9.0 has wgmma forms (attention_tile_wgmma.cuh):
//    two warpgroups with 128 query rows, and a warp-specialized one whose
//    producer warpgroup copies (and dequantizes) K/V for them
//    (attention_prefill_ws.cuh); plan_paged_attention picks.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/kv_quant.cuh"
#include "cuda/mma.cuh"

namespace hostrun::cuda::detail {

struct AttentionKernelParams {
  const void* q = nullptr;
  std::int64_t q_row_stride = 0;
  void* out = nullptr;
  std::int64_t out_row_stride = 0;
  const void* k_pages = nullptr;
  const void* v_pages = nullptr;
  std::int64_t kv_block_bytes = 0;  // quantized pages: one block of one pool (ref::KvQuantBlockLayout)
  int kv_heads = 0;
  int block_tokens = 0;
  const std::int32_t* query_start = nullptr;
  const std::int32_t* context_lens = nullptr;
  const std::int32_t* block_tables = nullptr;
  int max_blocks_per_sequence = 0;
  int group = 1;
  float scale_log2 = 0.0f;  // softmax_scale * log2(e): scores live in the exp2 domain
  // decode_split
  int split_tokens = 0;
  int splits = 1;
  float* partial_out = nullptr;  // [num_sequences, q_heads, splits, head_dim]
  float* partial_lse = nullptr;  // [num_sequences, q_heads, splits], log2 domain
  // prefill: leave query_len == 1 sequences to decode_split
  bool prefill_skips_decode = false;
  // prefill: the first query tile of each sequence in the step's flat list of
  // tiles, [num_sequences + 1] (prefill_schedule_kernel writes it)
  const std::int32_t* prefill_tile_start = nullptr;
  int num_sequences = 0;
};

// kKvBits: 0 for pages of T, 8 or 4 for quantized pages.
template <typename T, int kHeadDim, int kKvBits>
cudaError_t launch_decode_split(const AttentionKernelParams& params, int num_sequences, cudaStream_t stream);
// How many of that kernel's CTAs an SM of the current device holds at once
// (asked of the CUDA runtime once a process); 0 when it cannot say.
template <typename T, int kHeadDim, int kKvBits>
int decode_ctas_per_sm();
// kWgmma: the sm_90a kernel (attention_prefill_wgmma_*.cu, head_dim 128,
// 128 rows); kBlockM: query rows a CTA, 64 or 128.
template <typename T, int kHeadDim, int kKvBits, bool kWgmma = false, int kBlockM = 64>
cudaError_t launch_prefill(const AttentionKernelParams& params, int grid_tiles, cudaStream_t stream);
// The warp-specialized sm_90a kernel (attention_prefill_ws.cuh), head_dim
// 128, over pages of T (kKvBits 0) or int8 / int4 ones.
template <typename T, int kHeadDim, int kKvBits>
cudaError_t launch_prefill_ws(const AttentionKernelParams& params, int ctas, cudaStream_t stream);

// ---- shared-memory tiles ------------------------------------------------

// Rows are padded by 16 bytes: with head_dim*2 bytes per row (a multiple of
// 128) the 8 row addresses of one ldmatrix phase would all hit the same four
// banks; the pad shifts each row by four banks, so the 8 rows cover all 32.
template <int kHeadDim>
inline constexpr int smem_row = kHeadDim + 8;  // elements

// Where the rows of a K/V tile live. When the tile lies inside one page (a
// tile starts at a multiple of 64 and pages are usually a multiple of 64
// tokens) row r is at the page's offset + r, found with one block-table read
// and one division for the whole tile; otherwise each row looks its page up. The divisions by the runtime page size and the table
// reads were a large share of a decode step's instructions.
struct PageRow {
  std::int64_t block;
  int offset;  // within the page
};
// The decode kernel reads the next tile's page one step early, so the
// block-table load is not waited for on the way to the copies.
struct TileRows {
  std::int32_t block = -1;  // the page holding the whole tile, else -1
  int offset = 0;           // row 0's offset in it
  __device__ __forceinline__ PageRow at(const AttentionKernelParams& p, const std::int32_t* block_table, int position,
                                        int row) const {
    if (block >= 0) return {block, offset + row};
    return {block_table[position / p.block_tokens], position % p.block_tokens};
  }
};
template <int kRows>
__device__ __forceinline__ TileRows tile_rows(const AttentionKernelParams& p, const std::int32_t* block_table,
                                              int first) {
  TileRows rows;
  const int offset = first % p.block_tokens;
  if (offset + kRows <= p.block_tokens) {
    rows.block = block_table[first / p.block_tokens];
    rows.offset = offset;
  }
  return rows;
}
// tile_rows of consecutive kRows-position tiles, with one division for the
// whole walk instead of one a tile (the decode kernel's loop is short on
// bytes a tile over quantized pages, and a division by the runtime page size
// is ~25 instructions a warp).
template <int kRows>
struct TileWalk {
  int page, offset;  // of the next tile's first position
  __device__ __forceinline__ TileWalk(const AttentionKernelParams& p, int first)
      : page(first / p.block_tokens), offset(first % p.block_tokens) {}
  // The next tile's rows; only for tiles that hold a position of the sequence.
  __device__ __forceinline__ TileRows next(const AttentionKernelParams& p, const std::int32_t* block_table) {
    TileRows rows;
    if (offset + kRows <= p.block_tokens) {
      rows.block = block_table[page];
      rows.offset = offset;
    }
    offset += kRows;
    while (offset >= p.block_tokens) {
      offset -= p.block_tokens;
      ++page;
    }
    return rows;
  }
};

// The K/V tiles of an attention kernel's loop over 64-position steps, for
// either page format:
//
//   16-bit pages (kKvBits 0): cp.async copies rows straight into kStages
//     buffers (two unless asked) of K and V rows.
//   quantized pages (kKvBits 8/4): cp.async copies each row's codes and
//     (scale, zero) word into kStages staging buffers. With kDequantizeToTile
//     (the grid prefill kernels, two buffers), ready() dequantizes the current
//     one into a single buffer of 16-bit rows (one FMA a value, exactly
//     dequantize_kv) for the same ldmatrix/mma code; without it the decode
//     kernel reads the codes straight into mma fragments
//     (attention_decode.cuh) and the warp-specialized prefill's producer
//     dequantizes them into its own ring (dequantize()). Either way the bytes
//     read from HBM are the quantized ones.
//
// The 16-bit tiles come in one of two layouts:
//   padded_rows    row r at r * smem_row (ldmatrix reads, mma.sync kernels)
//   swizzled_128   wgmma's 128-byte swizzle (attention_tile_wgmma.cuh):
//                  columns in blocks of 64 (128 bytes), block-major; in a
//                  block, row r's 16-byte piece j at piece j ^ (r % 8). The
//                  eight pieces of a row, 128 contiguous bytes of a page,
//                  land on all 32 banks, and so do piece j of eight
//                  consecutive rows: gathers and dequantized stores are
//                  conflict-free in either order. Tiles start 1024-byte
//                  aligned (the swizzle reads address bits 4-9).
//
// Per step n of a kernel's loop (kStages buffers, kStages - 1 issued ahead):
//   issue(n + kStages - 1); cp_async_commit(); cp_async_wait<kStages - 1>();
//   __syncthreads(); ready(n % kStages); ... read it ...; __syncthreads();
// ready() ends with a barrier of its own when it writes the tile; the loop's
// closing barrier protects both the tile and the staging buffer it came from.
enum class TileLayout { padded_rows, swizzled_128 };

template <typename T, int kHeadDim, int kKvBits, int kRows, int kThreads, bool kDequantizeToTile = true,
          int kStageCount = 2, TileLayout kLayout = TileLayout::padded_rows>
struct KvTileStream {
  static_assert(kStageCount == 2 || kKvBits == 0 || !kDequantizeToTile,
                "deeper pipelines: 16-bit tiles or staged codes");
  static constexpr int kStages = kStageCount;  // buffers issue() and k_codes() etc. take
  static constexpr bool kSwizzled = kLayout == TileLayout::swizzled_128;
  static constexpr int kRow = kSwizzled ? kHeadDim : smem_row<kHeadDim>;
  static constexpr int kTileElements = kRows * kRow;  // one of K or V, 16-bit
  static constexpr int kCodeBytes = kKvBits == 0 ? 0 : kv_row_code_bytes<kHeadDim, kKvBits>;
  // Staged code rows are padded by 16 bytes so that the fragment reads of
  // attention_decode.cuh (a quad of threads per row, or four rows per
  // thread) spread over all 32 banks.
  static constexpr int kStagePitch = kCodeBytes + 16;
  static constexpr int kStageBuffer = kKvBits == 0 ? 0 : 2 * kRows * (kStagePitch + 4);  // K, V codes; K, V params
  static constexpr int kTileBuffers = kKvBits == 0 ? kStages : kDequantizeToTile ? 1 : 0;
  static constexpr int kTileBytes = kTileBuffers * 2 * kTileElements * static_cast<int>(sizeof(T));
  static_assert(!kSwizzled || kTileElements * sizeof(T) % 1024 == 0, "swizzled tiles stay 1024-byte aligned");
  static constexpr int kSmemBytes = kTileBytes + kStages * kStageBuffer;

  unsigned char* smem;  // kSmemBytes, 16-byte aligned

  __device__ __forceinline__ T* k(int buffer) const {
    return reinterpret_cast<T*>(smem) + (kKvBits == 0 ? buffer : 0) * 2 * kTileElements;
  }
  __device__ __forceinline__ T* v(int buffer) const { return k(buffer) + kTileElements; }
  // Where element (row, column) of a 16-bit tile lives.
  static __device__ __forceinline__ int tile_offset(int row, int column) {
    if constexpr (kSwizzled) {
      static_assert(sizeof(T) == 2 && kHeadDim % 64 == 0);
      return (column / 64) * (kRows * 64) + row * 64 + (((column % 64) / 8) ^ (row % 8)) * 8 + column % 8;
    }
    else return row * kRow + column;
  }
  // Staged rows of `buffer`: codes at row * kStagePitch, one (scale, zero) word a row.
  __device__ __forceinline__ unsigned char* k_codes(int buffer) const { return smem + kTileBytes + buffer * kStageBuffer; }
  __device__ __forceinline__ unsigned char* v_codes(int buffer) const { return k_codes(buffer) + kRows * kStagePitch; }
  __device__ __forceinline__ std::uint32_t* k_params(int buffer) const {
    return reinterpret_cast<std::uint32_t*>(k_codes(buffer) + 2 * kRows * kStagePitch);
  }
  __device__ __forceinline__ std::uint32_t* v_params(int buffer) const { return k_params(buffer) + kRows; }

  // Issues the copies of positions [first, first + kRows) of one sequence's
  // K and V (one kv head) into `buffer`; `rows` = tile_rows<kRows>(first). Positions >= limit are zero-filled:
  // their probabilities are 0, but 0 * garbage could be NaN (and zero codes
  // with zero parameters dequantize to 0).
  __device__ __forceinline__ void issue(int buffer, const AttentionKernelParams& p, const std::int32_t* block_table,
                                        int kv_head, int first, int limit, const TileRows& rows) const {
    if constexpr (kKvBits == 0 && kSwizzled) {
      copy_swizzled_rows<true, true>(buffer, buffer, p, block_table, kv_head, first, limit, rows);
    } else if constexpr (kKvBits == 0) {
      constexpr int row_bytes = kHeadDim * static_cast<int>(sizeof(T));
      const std::int64_t block_bytes = static_cast<std::int64_t>(p.block_tokens) * p.kv_heads * row_bytes;
      copy_rows<row_bytes>(reinterpret_cast<unsigned char*>(k(buffer)), reinterpret_cast<unsigned char*>(v(buffer)),
                           kRow * static_cast<int>(sizeof(T)), block_bytes, p, block_table, kv_head, first, limit, rows);
    } else {
      copy_rows<kCodeBytes>(k_codes(buffer), v_codes(buffer), kStagePitch, p.kv_block_bytes, p, block_table, kv_head,
                            first, limit, rows);
      // Then each row's (scale, zero) word, after the block's codes, head-major
      // (ref::KvQuantBlockLayout): a tile inside one page finds its words
      // contiguous and copies them 16 bytes (four rows) at a time, rows past
      // the limit zero-filled; one spanning pages copies word by word.
      static_assert(kRows <= kThreads && kRows % 4 == 0 && kRows / 2 <= kThreads);
      const std::int64_t params_start = static_cast<std::int64_t>(p.block_tokens) * p.kv_heads * kCodeBytes;
      const auto* k_pages = static_cast<const unsigned char*>(p.k_pages);
      const auto* v_pages = static_cast<const unsigned char*>(p.v_pages);
      if (rows.block >= 0 && (p.block_tokens | rows.offset) % 4 == 0) {
        constexpr int pieces = kRows / 4;  // of K's words, then as many of V's
        if (threadIdx.x < 2 * pieces) {
          const int piece = threadIdx.x % pieces;
          const int valid_rows = min(max(limit - (first + 4 * piece), 0), 4);
          const std::int64_t at = rows.block * p.kv_block_bytes + params_start +
                                  4 * (static_cast<std::int64_t>(kv_head) * p.block_tokens + rows.offset + 4 * piece);
          const bool key = threadIdx.x < pieces;
          cp_async_16_prefix((key ? k_params(buffer) : v_params(buffer)) + 4 * piece,
                             (key ? k_pages : v_pages) + (valid_rows > 0 ? at : 0), 4 * valid_rows);
        }
      } else if (threadIdx.x < kRows) {
        const int row = threadIdx.x;
        const int position = first + row;
        const bool valid = position < limit;
        std::int64_t at = 0;
        if (valid) {
          const PageRow page = rows.at(p, block_table, position, row);
          at = page.block * p.kv_block_bytes + params_start + 4 * (kv_head * p.block_tokens + page.offset);
        }
        cp_async_4(k_params(buffer) + row, k_pages + at, valid);
        cp_async_4(v_params(buffer) + row, v_pages + at, valid);
      }
    }
  }

  // The copies of kRows (token, kv head) rows of kRowBytes each, K and V, in
  // 16-byte chunks: row r of the tile is row (offset * kv_heads + head) of
  // its 16-bit page, or (head * block_tokens + offset) of its quantized one
  // (ref::KvQuantBlockLayout), `block_bytes` a page, and lands at r * dst_pitch.
  template <int kRowBytes>
  __device__ __forceinline__ void copy_rows(unsigned char* k_dst, unsigned char* v_dst, int dst_pitch,
                                            std::int64_t block_bytes, const AttentionKernelParams& p,
                                            const std::int32_t* block_table, int kv_head, int first, int limit,
                                            const TileRows& rows) const {
    constexpr int chunks_per_row = kRowBytes / 16;
    constexpr int rows_per_pass = kThreads / chunks_per_row;
    // Short rows (int4 codes at head_dim 64) with many threads: one pass
    // covers the tile with threads to spare.
    static_assert(kRowBytes % 16 == 0 && kThreads % chunks_per_row == 0 &&
                  (kRows % rows_per_pass == 0 || rows_per_pass % kRows == 0));
    constexpr int passes = (kRows + rows_per_pass - 1) / rows_per_pass;
    const auto* k_pages = static_cast<const unsigned char*>(p.k_pages);
    const auto* v_pages = static_cast<const unsigned char*>(p.v_pages);
    const int chunk = threadIdx.x % chunks_per_row;
#pragma unroll
    for (int pass = 0; pass < passes; ++pass) {
      const int row = pass * rows_per_pass + threadIdx.x / chunks_per_row;
      if (rows_per_pass > kRows && row >= kRows) break;
      const int position = first + row;
      const bool valid = position < limit;
      std::int64_t at = 0;
      if (valid) {
        const PageRow page = rows.at(p, block_table, position, row);
        const int page_row = kKvBits == 0 ? page.offset * p.kv_heads + kv_head : kv_head * p.block_tokens + page.offset;
        at = page.block * block_bytes + static_cast<std::int64_t>(page_row) * kRowBytes + chunk * 16;
      }
      cp_async_16(k_dst + row * dst_pitch + chunk * 16, k_pages + at, valid);
      cp_async_16(v_dst + row * dst_pitch + chunk * 16, v_pages + at, valid);
    }
  }

  // copy_rows for 16-bit rows into swizzled tiles, K into k(k_buffer) and V
  // into v(v_buffer) as kK / kV ask (a pipelined kernel fetches K one step
  // ahead of V): consecutive threads take consecutive 16-byte pieces of a
  // row, so a warp reads two rows' 512 contiguous bytes of the pages and the
  // 8 threads of a shared-memory phase write one row's 128 swizzled bytes.
  template <bool kK, bool kV>
  __device__ __forceinline__ void copy_swizzled_rows(int k_buffer, int v_buffer, const AttentionKernelParams& p,
                                                     const std::int32_t* block_table, int kv_head, int first,
                                                     int limit, const TileRows& rows) const {
    static_assert(kSwizzled && kKvBits == 0);
    constexpr int row_bytes = kHeadDim * static_cast<int>(sizeof(T));
    constexpr int chunks_per_row = row_bytes / 16;
    constexpr int rows_per_pass = kThreads / chunks_per_row;
    static_assert(kThreads % chunks_per_row == 0 && kRows % rows_per_pass == 0);
    const std::int64_t block_bytes = static_cast<std::int64_t>(p.block_tokens) * p.kv_heads * row_bytes;
    const auto* k_pages = static_cast<const unsigned char*>(p.k_pages);
    const auto* v_pages = static_cast<const unsigned char*>(p.v_pages);
    const int chunk = threadIdx.x % chunks_per_row;
    const int row_in_pass = threadIdx.x / chunks_per_row;
#pragma unroll
    for (int pass = 0; pass < kRows / rows_per_pass; ++pass) {
      const int row = pass * rows_per_pass + row_in_pass;
      const int position = first + row;
      const bool valid = position < limit;
      std::int64_t at = 0;
      if (valid) {
        const PageRow page = rows.at(p, block_table, position, row);
        at = page.block * block_bytes + static_cast<std::int64_t>(page.offset * p.kv_heads + kv_head) * row_bytes +
             chunk * 16;
      }
      const int dst = tile_offset(row, chunk * 8);
      if constexpr (kK) cp_async_16(k(k_buffer) + dst, k_pages + at, valid);
      if constexpr (kV) cp_async_16(v(v_buffer) + dst, v_pages + at, valid);
    }
  }

  // After the copies of `buffer` have landed and a barrier: with
  // kDequantizeToTile, makes k(buffer), v(buffer) hold the step's rows.
  __device__ __forceinline__ void ready(int buffer) const {
    if constexpr (kKvBits != 0 && kDequantizeToTile) {
      dequantize(buffer, k(0), v(0), threadIdx.x);
      if constexpr (kSwizzled) fence_shared_to_async_proxy();
      __syncthreads();
    }
  }

  // Staged rows of `buffer` as 16-bit K and V tiles of this layout at k_dst
  // and v_dst, by the kThreads threads (`thread` this one's index among them)
  // once every thread's copies of the buffer have landed; one FMA a value,
  // exactly dequantize_kv. The warp-specialized prefill's producer writes its
  // ring's buffers with it (attention_prefill_ws.cuh).
  __device__ __forceinline__ void dequantize(int buffer, T* k_dst, T* v_dst, int thread) const {
    static_assert(kKvBits != 0);
    constexpr int values_per_chunk = 16 * 8 / kKvBits;  // 16 code bytes
    constexpr int chunks_per_row = kCodeBytes / 16;
    constexpr int chunks = 2 * kRows * chunks_per_row;  // K then V
    // Consecutive threads take consecutive rows of one chunk column: the
    // same piece of eight consecutive rows covers all 32 banks in either
    // tile layout (a chunk a thread, row-major, would put a warp's pieces
    // on a few banks), and the code reads stay conflict-free through the
    // padded pitch.
    // A thread loads kBatch chunks before it converts any: the compiler
    // cannot move a load above the stores before it (both shared memory),
    // and one load at a time leaves the producer warpgroup (one warp a
    // scheduler) waiting on each. Measured in the ws producer (56 registers,
    // H100, 8k, against 1): int8 +6% at 4 (though 44 bytes spill), +3% at
    // 2; int4 (twice the values a chunk) -6% at 4, +1.5% at 2 (both spill).
    constexpr int kBatch = kKvBits == 8 ? 4 : 1;
    const auto locate = [&](int i, int& half, int& row, int& chunk) {
      half = i / (kRows * chunks_per_row);
      const int local = i % (kRows * chunks_per_row);
      row = local % kRows;
      chunk = local / kRows;
    };
    for (int first = thread; first < chunks; first += kBatch * kThreads) {
      uint4 raw[kBatch];
      std::uint32_t param_words[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int i = first + b * kThreads;
        if (chunks % (kBatch * kThreads) != 0 && i >= chunks) break;
        int half, row, chunk;
        locate(i, half, row, chunk);
        raw[b] = *reinterpret_cast<const uint4*>((half == 0 ? k_codes(buffer) : v_codes(buffer)) +
                                                 row * kStagePitch + chunk * 16);
        param_words[b] = (half == 0 ? k_params(buffer) : v_params(buffer))[row];
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int i = first + b * kThreads;
        if (chunks % (kBatch * kThreads) != 0 && i >= chunks) break;
        int half, row, chunk;
        locate(i, half, row, chunk);
        const float2 params = unpack_kv_params(param_words[b]);
        T* dst = half == 0 ? k_dst : v_dst;
        const std::uint32_t words[4] = {raw[b].x, raw[b].y, raw[b].z, raw[b].w};
        constexpr int per_word = 32 / kKvBits;
        // One 16-byte store a piece of 8 values (int8: two words, int4: one):
        // 8-byte stores put a quarter-warp on half the banks of the swizzle.
#pragma unroll
        for (int piece = 0; piece < values_per_chunk / 8; ++piece) {
          std::uint32_t packed[4];
#pragma unroll
          for (int v = 0; v < 8; v += 2) {
            const int value = piece * 8 + v;
            packed[v / 2] = pack2<T>(dequantize_code<kKvBits>(words[value / per_word], value % per_word, params),
                                     dequantize_code<kKvBits>(words[value / per_word], value % per_word + 1, params));
          }
          *reinterpret_cast<uint4*>(dst + tile_offset(row, chunk * values_per_chunk + piece * 8)) =
              make_uint4(packed[0], packed[1], packed[2], packed[3]);
        }
      }
    }
  }
};

}  // namespace hostrun::cuda::detail
