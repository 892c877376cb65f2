// W4A16 GEMM on repacked AutoAWQ weights (awq_gemm.hpp has the layout and
// why it is exact).
#include "cuda/awq_gemm.hpp"

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/mma.cuh"

namespace hostrun::cuda {

// ---- repack (host) ------------------------------------------------------

namespace {

// Code of W[n, k] (k < in_features) in the checkpoint: column n of qweight row k.
inline std::uint32_t checkpoint_code(const ref::AwqWeights& layer, int k, int n) {
  return ref::awq_code(layer.qweight, layer.out_features, std::size_t(k), std::size_t(n));
}

// Where awq_repack puts W[n, k]: its word and nibble in `codes` (the order
// awq_gemm.hpp describes).
struct CodePlace {
  std::size_t word;
  int nibble;
};
inline CodePlace code_place(int k_blocks, int k, int n) {
  const int kb = k / awq_k_block, within = k % awq_k_block;
  const int step = within / 16, t = (within % 16) / 4, j = (within % 4) / 2, e = within % 2;
  const int lane = (n % 8) * 4 + t, tile = n / 8;
  return {(awq_tile_index(tile, kb, k_blocks) * 32 + lane) * 4 + step / 2, 2 * (step % 2) + j + 4 * e};
}

}  // namespace

AwqRepacked awq_repack(const ref::AwqWeights& layer) {
  AwqRepacked r;
  r.in_features = int(layer.in_features);
  r.out_features = int(layer.out_features);
  r.group_size = int(layer.group_size);
  r.padded_in = (r.in_features + awq_k_block - 1) / awq_k_block * awq_k_block;
  const int n = r.out_features, k_blocks = r.padded_in / awq_k_block, n_tiles = n / 8;
  const int groups = int(layer.in_features / layer.group_size), padded_groups = r.padded_in / r.group_size;
  r.codes.assign(std::size_t(awq_padded_tiles(n_tiles)) * k_blocks * 32 * 4, 0u);
  r.zeros.assign(std::size_t(padded_groups) * n_tiles, 0u);
  r.scales.assign(std::size_t(padded_groups) * n, 0u);
  // Codes: each output word gathers 8 codes from 8 rows of qweight. Column
  // tiles are independent, so threads take interleaved ranges of them (an 8B
  // model has ~7e9 codes; one thread would take seconds).
  const auto pack_tiles = [&](int first, int step) {
    for (int nt = first; nt < n_tiles; nt += step)
      for (int k = 0; k < r.in_features; ++k)
        for (int c = 0; c < 8; ++c) {
          const CodePlace place = code_place(k_blocks, k, nt * 8 + c);
          r.codes[place.word] |= checkpoint_code(layer, k, nt * 8 + c) << (4 * place.nibble);
        }
  };
  const int workers = int(std::clamp<unsigned>(std::thread::hardware_concurrency(), 1u, 16u));
  if (workers == 1 || std::size_t(n) * r.in_features < (1u << 20)) {
    pack_tiles(0, 1);
  } else {
    std::vector<std::thread> threads;
    for (int t = 0; t < workers; ++t) threads.emplace_back(pack_tiles, t, workers);
    for (std::thread& thread : threads) thread.join();
  }
  for (int g = 0; g < groups; ++g) {
    for (int nt = 0; nt < n_tiles; ++nt) {
      std::uint32_t word = 0;
      for (int c = 0; c < 8; ++c)
        word |= ref::awq_code(layer.qzeros, layer.out_features, std::size_t(g), std::size_t(nt * 8 + c)) << (4 * c);
      r.zeros[std::size_t(g) * n_tiles + nt] = word;
    }
    std::memcpy(r.scales.data() + std::size_t(g) * n, layer.scales + std::size_t(g) * n, std::size_t(n) * 2);
  }
  return r;
}

std::uint32_t awq_repacked_code(const AwqRepacked& repacked, int k, int n) {
  const CodePlace place = code_place(repacked.padded_in / awq_k_block, k, n);
  return (repacked.codes[place.word] >> (4 * place.nibble)) & 0xfu;
}

// ---- kernels ------------------------------------------------------------

namespace {

using namespace detail;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kColumns = kWarps * 16;            // per CTA: two n8 tiles a warp
constexpr int kTilesPerCta = kColumns / 8;
constexpr int kPitch = awq_k_block + 16;         // x row in shared memory, elements: the 32-byte pad shifts each
                                                 // row by 8 banks, so a half-warp's 8-byte A loads (4 rows x 4
                                                 // lanes) hit 32 distinct banks
constexpr int kCodeWordsPerStage = kTilesPerCta * 32 * 4;

// OR a 4-bit code into the 16-bit pattern of 128 (bf16: 8 mantissa bits, so
// 128..143 exactly) or 1024 (f16) and the register holds magic + code.
template <typename T>
struct Codes {
  static constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  using Pair = std::conditional_t<kBf16, __nv_bfloat162, __half2>;
  static constexpr std::uint32_t kMagic = kBf16 ? 0x43004300u : 0x64006400u;
  // (word & 0x000f000f) | magic, the codes of nibbles 0 and 4 as two 16-bit
  // numbers magic + q, in one LOP3. Written as C++ the compiler emits an AND
  // and an OR (a LOP3 takes one immediate and both masks are constants);
  // with the magic in a register it is one instruction: a third of the decode
  // kernel's integer work (kernels/cuda/NOTES.md, W4A16 SASS). The tile
  // kernel keeps the two (one more live register spilled it at 32 rows).
  __device__ static std::uint32_t low_pair(std::uint32_t word) {
    std::uint32_t magic = kMagic, out;
    asm volatile("" : "+r"(magic));  // keep the magic in a register
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(out) : "r"(word), "n"(0x000f000f), "r"(magic));
    return out;
  }
  // a - b on two 16-bit values a register (exact for magic + code minus magic + zero).
  __device__ static std::uint32_t minus(std::uint32_t a, std::uint32_t b) {
    Pair x, y;
    std::memcpy(&x, &a, 4);
    std::memcpy(&y, &b, 4);
    const Pair d = __hsub2(x, y);
    std::uint32_t out;
    std::memcpy(&out, &d, 4);
    return out;
  }
};

// One pipeline stage: a 128-deep slice of k for the CTA's columns and rows.
template <typename T, int kMTiles, int kGroup>
struct Stage {
  static constexpr int kGroups = awq_k_block / kGroup;
  static constexpr int kRows = kMTiles * 16;
  static constexpr int kZerosOffset = kCodeWordsPerStage * 4;
  static constexpr int kScalesOffset = kZerosOffset + kGroups * kTilesPerCta * 4;
  static constexpr int kXOffset = kScalesOffset + kGroups * kColumns * 2;
  static constexpr int kBytes = kXOffset + kRows * kPitch * int(sizeof(T));
  static_assert(kXOffset % 16 == 0 && kBytes % 16 == 0);

  unsigned char* base;
  __device__ std::uint32_t* codes() const { return reinterpret_cast<std::uint32_t*>(base); }
  __device__ std::uint32_t* zeros() const { return reinterpret_cast<std::uint32_t*>(base + kZerosOffset); }
  __device__ std::uint16_t* scales() const { return reinterpret_cast<std::uint16_t*>(base + kScalesOffset); }
  __device__ T* x() const { return reinterpret_cast<T*>(base + kXOffset); }
};

// Pipeline depth: 3 stages at 64 rows (the x tile is large), 4 below. The
// depth did not change the timings at 1-16 rows (3 to 8 stages swept).
template <int kMTiles>
inline constexpr int kStages = kMTiles == 4 ? 3 : 4;

struct GemmParams {
  AwqDeviceWeights w;
  const void* x;
  std::int64_t x_stride;
  int m;
  void* y;
  std::int64_t y_stride;
  float* partial;  // [splits][m][n] when gridDim.y > 1 or silu_half
  std::uint32_t* counters;  // [row blocks][column blocks], zero between calls, when gridDim.y > 1
  int blocks_per_split;
  // Decode kernel only: 0, or n / 2 for SiLU-and-multiply over [gate | up]
  // (y [m, n / 2]; a CTA takes 64 gate columns and the matching 64 up ones).
  int silu_half = 0;
  // Decode kernel only, sm_90: the k splits of a column block are one thread
  // block cluster and add their sums through each other's shared memory
  // (no partials in `partial`, no counters).
  bool cluster_reduce = false;
};

// Copies of the weights' part of k-block `kb` (codes, zeros, scales).
template <typename T, int kMTiles, int kGroup>
__device__ __forceinline__ void issue_weights(const Stage<T, kMTiles, kGroup>& st, const GemmParams& p, int kb) {
  using S = Stage<T, kMTiles, kGroup>;
  const int tid = threadIdx.x, n_tiles = p.w.out_features / 8, k_blocks = p.w.padded_in / awq_k_block;
  const int tile0 = blockIdx.x * kTilesPerCta;
#pragma unroll
  for (int c = tid; c < kTilesPerCta * 32; c += kThreads) {
    const int nt = tile0 + c / 32;
    const bool valid = nt < n_tiles;
    const std::uint32_t* src = p.w.codes + (awq_tile_index(valid ? nt : 0, kb, k_blocks) * 32 + c % 32) * 4;
    cp_async_16(st.codes() + c * 4, src, valid);
  }
  if (tid < S::kGroups * kTilesPerCta) {
    const int g = tid / kTilesPerCta, nt = tile0 + tid % kTilesPerCta;
    const bool valid = nt < n_tiles;
    const std::uint32_t* src = p.w.zeros + std::size_t(kb * S::kGroups + g) * n_tiles + (valid ? nt : 0);
    cp_async_4(st.zeros() + tid, src, valid);
  } else if (tid >= 64 && tid < 64 + S::kGroups * kTilesPerCta) {
    const int c = tid - 64, g = c / kTilesPerCta, col = tile0 * 8 + (c % kTilesPerCta) * 8;
    const bool valid = col < p.w.out_features;
    const std::uint16_t* src = p.w.scales + std::size_t(kb * S::kGroups + g) * p.w.out_features + (valid ? col : 0);
    cp_async_16(st.scales() + g * kColumns + (c % kTilesPerCta) * 8, src, valid);
  }
}

// Copies of x's part of k-block `kb`: rows past m and k past in_features read as 0.
template <typename T, int kMTiles, int kGroup>
__device__ __forceinline__ void issue_x(const Stage<T, kMTiles, kGroup>& st, const GemmParams& p, int kb) {
  using S = Stage<T, kMTiles, kGroup>;
  const T* x = static_cast<const T*>(p.x);
  const int row0 = blockIdx.z * S::kRows;
#pragma unroll
  for (int c = threadIdx.x; c < S::kRows * (awq_k_block / 8); c += kThreads) {
    const int r = c / (awq_k_block / 8), k = kb * awq_k_block + (c % (awq_k_block / 8)) * 8;
    const bool valid = row0 + r < p.m && k < p.w.in_features;
    const T* src = valid ? x + (row0 + r) * p.x_stride + k : x;
    cp_async_16(st.x() + r * kPitch + (c % (awq_k_block / 8)) * 8, src, valid);
  }
}

// The warp's two n8 tiles over one k-block: per group, the codes minus the
// zero point (exact small integers) times x on the tensor cores into f32
// partial sums, then scaled into the accumulators.
template <typename T, int kMTiles, int kGroup>
__device__ __forceinline__ void compute_block(const Stage<T, kMTiles, kGroup>& st, int warp, int lane,
                                              float (&acc)[kMTiles][2][4]) {
  using S = Stage<T, kMTiles, kGroup>;
  constexpr int kStepsPerGroup = kGroup / 16;
  std::uint32_t words[2][4];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    const uint4 v = *reinterpret_cast<const uint4*>(st.codes() + ((warp * 2 + nt) * 32 + lane) * 4);
    words[nt][0] = v.x;
    words[nt][1] = v.y;
    words[nt][2] = v.z;
    words[nt][3] = v.w;
  }
#pragma unroll
  for (int g = 0; g < S::kGroups; ++g) {
    std::uint32_t zero2[2];
    float2 scale[2];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const std::uint32_t z = (st.zeros()[g * kTilesPerCta + warp * 2 + nt] >> (4 * (lane >> 2))) & 0xfu;
      zero2[nt] = Codes<T>::kMagic | z | (z << 16);
      scale[nt] = __half22float2(
          *reinterpret_cast<const __half2*>(st.scales() + g * kColumns + warp * 16 + nt * 8 + (lane & 3) * 2));
    }
    float part[kMTiles][2][4] = {};
#pragma unroll
    for (int s = g * kStepsPerGroup; s < (g + 1) * kStepsPerGroup; ++s) {
      std::uint32_t a[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        const T* row = st.x() + (mt * 16 + (lane >> 2)) * kPitch + s * 16 + (lane & 3) * 4;
        const uint2 top = *reinterpret_cast<const uint2*>(row), bottom = *reinterpret_cast<const uint2*>(row + 8 * kPitch);
        a[mt][0] = top.x;
        a[mt][1] = bottom.x;
        a[mt][2] = top.y;
        a[mt][3] = bottom.y;
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const std::uint32_t w = words[nt][s / 2] >> (8 * (s % 2));
        const std::uint32_t b0 = Codes<T>::minus((w & 0x000f000fu) | Codes<T>::kMagic, zero2[nt]);
        const std::uint32_t b1 = Codes<T>::minus(((w >> 4) & 0x000f000fu) | Codes<T>::kMagic, zero2[nt]);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) mma_16816<T>(part[mt][nt], a[mt], b0, b1);
      }
    }
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        acc[mt][nt][0] += scale[nt].x * part[mt][nt][0];
        acc[mt][nt][1] += scale[nt].y * part[mt][nt][1];
        acc[mt][nt][2] += scale[nt].x * part[mt][nt][2];
        acc[mt][nt][3] += scale[nt].y * part[mt][nt][3];
      }
  }
}

// After a k-split CTA stored its partial tile: the last of the tile's splits
// to arrive adds all of them in split order (the same sums whichever CTA is
// last, so results do not depend on timing) and writes y, then leaves the
// tile's counter at zero for the next call. Saves a reduction launch per
// split call (a decode step makes ~100 of them).
// Whether this CTA is the last split of its tile to arrive (then every
// split's partials are visible to it); one split is always last.
__device__ __forceinline__ bool last_split_arrived(const GemmParams& p) {
  __shared__ bool last;
  if (gridDim.y == 1) {
    __syncthreads();  // the CTA's own partials, written by its other warps
    return true;
  }
  __threadfence();  // this CTA's partials are visible before its arrival is counted
  __syncthreads();
  if (threadIdx.x == 0) {
    std::uint32_t* counter = p.counters + blockIdx.z * gridDim.x + blockIdx.x;
    last = atomicAdd(counter, 1u) == gridDim.y - 1;
    if (last) *counter = 0;  // every split of this tile has arrived: none touches it again this call
  }
  __syncthreads();
  if (!last) return false;
  __threadfence();
  return true;
}

template <typename T>
__device__ __forceinline__ void finish_splits(const GemmParams& p, int row_begin, int rows, int col_begin,
                                              int columns) {
  if (!last_split_arrived(p)) return;
  rows = min(rows, p.m - row_begin);
  columns = min(columns, p.w.out_features - col_begin);
  const int pairs = columns / 2;
  // Up to 64 rows x 128 columns x the splits from L2: the splits' loads of a
  // pair four at a time (the sums stay in split order).
  for (int i = threadIdx.x; i < rows * pairs; i += blockDim.x) {
    const int row = row_begin + i / pairs, col = col_begin + (i % pairs) * 2;
    const float* sums = p.partial + std::size_t(row) * p.w.out_features + col;
    const std::size_t split_stride = std::size_t(p.m) * p.w.out_features;
    float2 sum = make_float2(0.0f, 0.0f);
#pragma unroll 4
    for (int s = 0; s < int(gridDim.y); ++s) {
      const float2 v = __ldcg(reinterpret_cast<const float2*>(sums + s * split_stride));
      sum.x += v.x;
      sum.y += v.y;
    }
    *reinterpret_cast<std::uint32_t*>(static_cast<T*>(p.y) + row * p.y_stride + col) = pack2<T>(sum.x, sum.y);
  }
}

// The decode kernel's SiLU-and-multiply: the last CTA of a column block adds
// the splits of its gate columns [col_begin, + columns) and of the matching
// up columns, rounds each to T (as the product would be stored) and writes
// silu(gate) * up.
template <typename T>
__device__ __forceinline__ void finish_silu_mul(const GemmParams& p, int row_begin, int rows, int col_begin,
                                                int columns) {
  if (!last_split_arrived(p)) return;
  rows = min(rows, p.m - row_begin);
  const int n = p.w.out_features;
  for (int i = threadIdx.x; i < rows * columns; i += blockDim.x) {
    const int row = row_begin + i / columns, col = col_begin + i % columns;
    float gate = 0.0f, up = 0.0f;
#pragma unroll 4
    for (int s = 0; s < int(gridDim.y); ++s) {
      const float* sums = p.partial + (std::size_t(s) * p.m + row) * n;
      gate += __ldcg(sums + col);
      up += __ldcg(sums + p.silu_half + col);
    }
    const float g = to_f32(from_f32<T>(gate)), u = to_f32(from_f32<T>(up));
    static_cast<T*>(p.y)[row * p.y_stride + col] = from_f32<T>(detail::silu(g) * u);
  }
}

// grid (column blocks of 64, k splits, row blocks of 16 * kMTiles).
template <typename T, int kMTiles, int kGroup>
__global__ void __launch_bounds__(kThreads) awq_gemm_kernel(GemmParams p) {
  using S = Stage<T, kMTiles, kGroup>;
  constexpr int kDepth = kStages<kMTiles>;
  extern __shared__ __align__(16) unsigned char smem[];
  const auto stage = [&](int i) { return S{smem + (i % kDepth) * S::kBytes}; };
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int k_blocks = p.w.padded_in / awq_k_block;
  const int kb_begin = blockIdx.y * p.blocks_per_split;
  const int blocks = min(k_blocks - kb_begin, p.blocks_per_split);

  // The weights are constant: copy the first stages' before the previous
  // kernel (which writes x) has finished; x after. One group holds the whole
  // prologue, padded with empty groups so block i's group is i from then on.
#pragma unroll
  for (int i = 0; i < kDepth - 1; ++i)
    if (i < blocks) issue_weights(stage(i), p, kb_begin + i);
  wait_for_previous_grid();
#pragma unroll
  for (int i = 0; i < kDepth - 1; ++i)
    if (i < blocks) issue_x(stage(i), p, kb_begin + i);
#pragma unroll
  for (int i = 0; i < kDepth - 1; ++i) cp_async_commit();

  float acc[kMTiles][2][4] = {};
  for (int i = 0; i < blocks; ++i) {
    cp_async_wait<kDepth - 2>();
    __syncthreads();  // block i is in; every warp is done with the stage refilled next
    if (i + kDepth - 1 < blocks) {
      issue_weights(stage(i + kDepth - 1), p, kb_begin + i + kDepth - 1);
      issue_x(stage(i + kDepth - 1), p, kb_begin + i + kDepth - 1);
    }
    cp_async_commit();
    compute_block(stage(i), warp, lane, acc);
  }
  allow_next_grid_to_launch();

  const int col0 = blockIdx.x * kColumns + warp * 16 + (lane & 3) * 2;
  const int row0 = blockIdx.z * S::kRows + (lane >> 2);
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int col = col0 + nt * 8;
      if (col >= p.w.out_features) continue;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = row0 + mt * 16 + half * 8;
        if (row >= p.m) continue;
        const float lo = acc[mt][nt][2 * half], hi = acc[mt][nt][2 * half + 1];
        if (gridDim.y == 1) {
          *reinterpret_cast<std::uint32_t*>(static_cast<T*>(p.y) + row * p.y_stride + col) = pack2<T>(lo, hi);
        } else {
          float* out = p.partial + (std::size_t(blockIdx.y) * p.m + row) * p.w.out_features + col;
          *reinterpret_cast<float2*>(out) = make_float2(lo, hi);
        }
      }
    }
  if (gridDim.y > 1) finish_splits<T>(p, blockIdx.z * S::kRows, S::kRows, blockIdx.x * kColumns, kColumns);
}

// ---- decode rows: the weight-streaming kernel -----------------------------
//
// With few rows the roles in the mma swap: y^T = W x^T, the weights
// are the 16-row A operand (two column tiles a product) and x^T the 8-column
// B operand, so no half of the tensor-core product is padding and a lane's x
// operand for step s is exactly its 8-byte load x[row][16s + 4t .. +3]
// (row = lane / 4, the B column it serves). The codes a lane holds for tile
// nt are then A's rows nt*8 + lane/4: its (j = 0, j = 1) pairs are A
// registers 0 and 2 for the even tile of a pair, 1 and 3 for the odd one.

constexpr int kGemvWarps = 4;
constexpr int kGemvTiles = 4;                                // column tiles (n8) a warp
constexpr int kGemvColumns = kGemvWarps * kGemvTiles * 8;    // per CTA
// Rows come in groups of 8 (B's columns); a warp multiplies each A fragment
// it builds with 1, 2, 4 or 8 of them, so the dequantization (most of the
// kernel's instructions) is shared by up to 64 rows. From 4 groups on x is
// staged per CTA in shared memory (kStagedRowGroups).
constexpr int kGemvGroupRows = 8;
constexpr int kGemvMaxRowGroups = 8;
constexpr int kGemvMaxRows = kGemvGroupRows * kGemvMaxRowGroups;  // a CTA's
// Above kGemvMaxRows the grid has a row block per 64 rows, each reading the
// codes again. Three blocks (192 rows) still beat W dequantized for cuBLAS
// (gate/up 188 against 218 us, H100); at four the grid runs 3.4 waves and
// takes twice as long, so the kernel stops at 192.
constexpr int kGemvMaxCallRows = 192;
constexpr int kStagedRowGroups = 4;
constexpr int gemv_row_groups(int m) { return m <= 8 ? 1 : m <= 16 ? 2 : m <= 32 ? 4 : 8; }
// CTAs of awq_gemv_kernel an SM holds (its launch bound: registers).
constexpr int gemv_ctas_per_sm(int group_size, int row_groups) {
  return row_groups > 1 ? 2 : group_size == 128 ? 4 : 3;
}

// One k-block of a warp's tiles in registers: the codes and, per group, the
// zero-point word of each tile and the f16 scale of this lane's column.
template <int kGroup>
struct GemvBlock {
  static constexpr int kGroups = awq_k_block / kGroup;
  uint4 codes[kGemvTiles];
  std::uint32_t zeros[kGemvTiles][kGroups];
  std::uint16_t scales[kGemvTiles][kGroups];
};

// Read once: streamed past L1.
__device__ __forceinline__ uint4 load_streaming(const std::uint32_t* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// Where a warp's tiles start in the three arrays; block kb is an offset.
// The warp's four tiles are one group of the codes' layout, so tile i of
// block kb is at a constant offset: kb * 512 + i * 128 words. The group's
// padding tiles hold codes in memory (zeros), so codes load unpredicated;
// their zero points and scales are read from the group's last real tile.
// A warp wholly past out_features reads group 0. Neither is ever stored.
struct GemvTiles {
  const std::uint32_t* codes;   // tile 0, this lane, k-block 0
  const std::uint32_t* zeros;   // tile 0's word in group row 0
  const std::uint16_t* scales;  // tile 0, this lane's column, group row 0
  int last_tile;                // the last of the warp's tiles inside out_features (0..3)
};
static_assert(kGemvTiles == awq_tile_group, "a warp's tiles are one group of the codes layout");

template <int kGroup>
__device__ __forceinline__ void gemv_load(GemvBlock<kGroup>& b, const GemvTiles& t, const AwqDeviceWeights& w, int kb) {
  using B = GemvBlock<kGroup>;
  const int n_tiles = w.out_features / 8;
#pragma unroll
  for (int i = 0; i < kGemvTiles; ++i) {
    b.codes[i] = load_streaming(t.codes + std::size_t(kb) * (awq_tile_group * 32 * 4) + i * (32 * 4));
    const int real = min(i, t.last_tile);
#pragma unroll
    for (int g = 0; g < B::kGroups; ++g) {
      const int row = kb * B::kGroups + g;
      b.zeros[i][g] = __ldg(t.zeros + std::size_t(row) * n_tiles + real);
      b.scales[i][g] = __ldg(t.scales + std::size_t(row) * w.out_features + real * 8);
    }
  }
}

// x's part of k-block `kb` as this lane's B operands, per row group r: step
// s is x[8r + row][kb*128 + 16s + 4t .. +3] (0 past in_features or for rows
// past m).
template <int R>
struct GemvX {
  uint2 s[R][awq_k_block / 16];
};
// Where a lane reads x: its row of each group (row 0 for rows past m, whose
// B columns' sums are never stored).
template <typename T, int R>
struct GemvXRows {
  const T* lane[R];
  bool valid[R];
};
template <typename T, int R>
__device__ __forceinline__ void gemv_load_x(GemvX<R>& xs, const GemvXRows<T, R>& rows, int in_features, int kb,
                                            int lane) {
  const int k_left = in_features - kb * awq_k_block - (lane & 3) * 4;
  // The whole block inside in_features (every block of Llama's shapes): no
  // test a step.
  if (k_left >= awq_k_block - 12) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int s = 0; s < awq_k_block / 16; ++s)
        xs.s[r][s] = *reinterpret_cast<const uint2*>(rows.lane[r] + kb * awq_k_block + s * 16);
    return;
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int s = 0; s < awq_k_block / 16; ++s)
      xs.s[r][s] = rows.valid[r] && s * 16 < k_left
                       ? *reinterpret_cast<const uint2*>(rows.lane[r] + kb * awq_k_block + s * 16)
                       : make_uint2(0, 0);
}

// acc[p] += this block's product for tiles 2p, 2p+1 (C rows: the lane's
// column lane/4 of each; C columns: x rows 2(lane % 4) + 0/1).
//
// bf16 with one or two row groups skips the per-code zero-point
// subtraction: A holds 128 + q as the OR makes it, and each group's product
// is corrected with the group's row sums of x (one more mma per step and
// row group, against a fragment of ones, shared by every tile):
// sum (q - z) x = sum (128 + q) x - (128 + z) sum x. Products stay exact;
// the f32 sums lose ~7 bits to the cancellation, far below bf16's rounding
// of the result. f16's offset is 1024 (10 bits lost, too close to f16's own
// rounding), so f16 subtracts per code as the tile kernel does, and so does
// bf16 from four row groups on, where the row sums' mmas cost more than the
// subtraction (gate/up at 64 rows: 83.8 -> 64.0 us, H100).
// x's B operands held in registers (GemvX) ...
template <int R>
struct RegisterX {
  const GemvX<R>& xs;
  __device__ __forceinline__ uint2 at(int r, int s) const { return xs.s[r][s]; }
};
// ... or read from the CTA's staged block: rows 8 apart by kXPitch bytes, so
// a half-warp's 8-byte reads (4 rows x 4 lanes) fall on 32 distinct banks.
constexpr int kXPitch = awq_k_block * 2 + 32;
struct StagedX {
  const unsigned char* lane;  // row lane/4, k 4 (lane % 4) of the block
  __device__ __forceinline__ uint2 at(int r, int s) const {
    return *reinterpret_cast<const uint2*>(lane + r * kGemvGroupRows * kXPitch + s * 32);
  }
};

template <typename T, int kGroup, int R, typename XSource>
__device__ __forceinline__ void gemv_compute(const GemvBlock<kGroup>& b, const XSource& x, int lane,
                                             float (&acc)[R][kGemvTiles / 2][4]) {
  using B = GemvBlock<kGroup>;
  constexpr int kStepsPerGroup = kGroup / 16;
  constexpr bool kRowSums = std::is_same_v<T, __nv_bfloat16> && R < kStagedRowGroups;
  constexpr std::uint32_t kOnes = 0x3f803f80u;  // bf16 1.0, twice
#pragma unroll
  for (int g = 0; g < B::kGroups; ++g) {
    std::uint32_t zero[kGemvTiles];
#pragma unroll
    for (int i = 0; i < kGemvTiles; ++i) zero[i] = (b.zeros[i][g] >> (4 * (lane >> 2))) & 0xfu;
    const auto pair = [&](std::uint32_t word, int i) -> std::uint32_t {
      const std::uint32_t magic_q = Codes<T>::low_pair(word);
      if constexpr (kRowSums) return magic_q;
      else return Codes<T>::minus(magic_q, Codes<T>::kMagic | zero[i] | (zero[i] << 16));
    };
    float part[R][kGemvTiles / 2][4] = {};
    float row_sums[R][4] = {};  // [r][0] / [1]: sum of x over the group for rows 8r + 2(lane % 4) + 0 / 1
#pragma unroll
    for (int s = g * kStepsPerGroup; s < (g + 1) * kStepsPerGroup; ++s) {
      if constexpr (kRowSums) {
        const std::uint32_t ones[4] = {kOnes, kOnes, kOnes, kOnes};
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const uint2 v = x.at(r, s);
          mma_16816<T>(row_sums[r], ones, v.x, v.y);
        }
      }
#pragma unroll
      for (int p = 0; p < kGemvTiles / 2; ++p) {
        const uint4& even = b.codes[2 * p];
        const uint4& odd = b.codes[2 * p + 1];
        const std::uint32_t we = (s / 2 == 0 ? even.x : s / 2 == 1 ? even.y : s / 2 == 2 ? even.z : even.w) >> (8 * (s % 2));
        const std::uint32_t wo = (s / 2 == 0 ? odd.x : s / 2 == 1 ? odd.y : s / 2 == 2 ? odd.z : odd.w) >> (8 * (s % 2));
        const std::uint32_t a[4] = {pair(we, 2 * p), pair(wo, 2 * p + 1), pair(we >> 4, 2 * p), pair(wo >> 4, 2 * p + 1)};
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const uint2 v = x.at(r, s);
          mma_16816<T>(part[r][p], a, v.x, v.y);
        }
      }
    }
#pragma unroll
    for (int p = 0; p < kGemvTiles / 2; ++p) {
      const float even = __half2float(__ushort_as_half(b.scales[2 * p][g]));
      const float odd = __half2float(__ushort_as_half(b.scales[2 * p + 1][g]));
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if constexpr (kRowSums) {
          const float even_zero = 128.0f + float(zero[2 * p]), odd_zero = 128.0f + float(zero[2 * p + 1]);
          acc[r][p][0] += even * (part[r][p][0] - even_zero * row_sums[r][0]);
          acc[r][p][1] += even * (part[r][p][1] - even_zero * row_sums[r][1]);
          acc[r][p][2] += odd * (part[r][p][2] - odd_zero * row_sums[r][0]);
          acc[r][p][3] += odd * (part[r][p][3] - odd_zero * row_sums[r][1]);
        } else {
          acc[r][p][0] += even * part[r][p][0];
          acc[r][p][1] += even * part[r][p][1];
          acc[r][p][2] += odd * part[r][p][2];
          acc[r][p][3] += odd * part[r][p][3];
        }
      }
    }
  }
}

// The cluster's reduction: row pitch of a CTA's sums in shared memory
// (floats; 4 banks a row apart, so the four rows of a C fragment's store
// land on distinct banks).
constexpr int kReducePitch = kGemvColumns + 4;
constexpr int kMaxClusterSplits = 8;  // the portable cluster size

// The k splits of this column block (the CTAs of the cluster, gridDim.y of
// them) add their sums: each CTA stores its own in shared memory, then
// finishes a 1/splits share of the (row, column) pairs reading every CTA's
// copy in split order (the same sums whichever CTA runs first), and writes
// y (or silu(gate) * up). No partials go to global memory and no CTA waits
// for the last one alone.
template <typename T, int R>
__device__ __forceinline__ void reduce_in_cluster(const GemmParams& p, const float (&acc)[R][kGemvTiles / 2][4],
                                                  float* sums, int row0, int warp, int lane) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int q = 0; q < kGemvTiles / 2; ++q)
#pragma unroll
      for (int half = 0; half < 2; ++half)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int row = r * kGemvGroupRows + (lane & 3) * 2 + e;
          const int col = (warp * kGemvTiles + 2 * q + half) * 8 + (lane >> 2);
          sums[row * kReducePitch + col] = acc[r][q][2 * half + e];
        }
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every split's sums are in place
  const int splits = int(cluster.num_blocks()), rank = int(cluster.block_rank());
  const int rows = min(R * kGemvGroupRows, p.m - row0);
  if (p.silu_half != 0) {
    constexpr int kHalf = kGemvColumns / 2;  // gate columns at 0.., the matching up ones at kHalf..
    const int items = rows * kHalf, share = (items + splits - 1) / splits;
    const int end = min(items, (rank + 1) * share);
    for (int i = rank * share + int(threadIdx.x); i < end; i += int(blockDim.x)) {
      const int row = i / kHalf, j = i % kHalf;
      float gate = 0.0f, up = 0.0f;
      for (int s = 0; s < splits; ++s) {
        const float* peer = cluster.map_shared_rank(sums, s);
        gate += peer[row * kReducePitch + j];
        up += peer[row * kReducePitch + kHalf + j];
      }
      const float g = to_f32(from_f32<T>(gate)), u = to_f32(from_f32<T>(up));
      static_cast<T*>(p.y)[(row0 + row) * p.y_stride + blockIdx.x * kHalf + j] = from_f32<T>(detail::silu(g) * u);
    }
  } else {
    const int col_begin = blockIdx.x * kGemvColumns;
    const int pairs = min(kGemvColumns, p.w.out_features - col_begin) / 2;
    const int items = rows * pairs, share = (items + splits - 1) / splits;
    const int end = min(items, (rank + 1) * share);
    for (int i = rank * share + int(threadIdx.x); i < end; i += int(blockDim.x)) {
      const int row = i / pairs, c = (i % pairs) * 2;
      float2 sum = make_float2(0.0f, 0.0f);
      for (int s = 0; s < splits; ++s) {
        const float2 v = *reinterpret_cast<const float2*>(cluster.map_shared_rank(sums, s) + row * kReducePitch + c);
        sum.x += v.x;
        sum.y += v.y;
      }
      *reinterpret_cast<std::uint32_t*>(static_cast<T*>(p.y) + (row0 + row) * p.y_stride + col_begin + c) =
          pack2<T>(sum.x, sum.y);
    }
  }
  cluster.sync();  // no CTA leaves while another still reads its shared memory
#endif
}

// The CTA's x rows (8R of them from row0) of k-block kb into `dst` by
// cp.async, zeros past m and past in_features.
template <typename T, int R>
__device__ __forceinline__ void stage_x(unsigned char* dst, const GemmParams& p, int row0, int kb) {
  constexpr int kChunks = awq_k_block / 8;  // 16-byte pieces a row
  const T* x = static_cast<const T*>(p.x);
#pragma unroll
  for (int c = threadIdx.x; c < R * kGemvGroupRows * kChunks; c += kGemvWarps * 32) {
    const int row = c / kChunks, k = kb * awq_k_block + (c % kChunks) * 8;
    const bool valid = row0 + row < p.m && k < p.w.in_features;
    cp_async_16(dst + row * kXPitch + (c % kChunks) * 16, valid ? x + (row0 + row) * p.x_stride + k : x, valid);
  }
}

// grid (column blocks of kGemvColumns, k splits, row blocks of 64), R row groups of 8. Two
// k-blocks of codes in flight a warp; with one row group four CTAs an SM fit
// in the registers at group 128 (three at 64), with more two.
template <typename T, int kGroup, int R>
__global__ void __launch_bounds__(kGemvWarps * 32, gemv_ctas_per_sm(kGroup, R)) awq_gemv_kernel(GemmParams p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // With SiLU the CTA's first warps take gate columns, the others the matching up ones.
  constexpr int kHalfWarps = kGemvWarps / 2;
  const int tile0 = p.silu_half == 0 ? (blockIdx.x * kGemvWarps + warp) * kGemvTiles
                                     : (warp < kHalfWarps ? 0 : p.silu_half / 8) +
                                           (blockIdx.x * kHalfWarps + warp % kHalfWarps) * kGemvTiles;
  const int n_tiles = p.w.out_features / 8, k_blocks = p.w.padded_in / awq_k_block;
  const int kb_begin = blockIdx.y * p.blocks_per_split;
  const int blocks = min(k_blocks - kb_begin, p.blocks_per_split);
  const int first = tile0 < n_tiles ? tile0 : 0;  // loads stay inside the arrays
  const int row0 = blockIdx.z * kGemvMaxRows;  // above 64 rows a CTA takes 64 of them
  GemvTiles tiles;
  tiles.codes = p.w.codes + awq_tile_index(first, 0, k_blocks) * 32 * 4 + lane * 4;
  tiles.zeros = p.w.zeros + first;
  tiles.scales = p.w.scales + first * 8 + (lane >> 2);
  tiles.last_tile = min(n_tiles - first, kGemvTiles) - 1;
  GemvBlock<kGroup> even, odd;
  gemv_load(even, tiles, p.w, kb_begin);
  if (blocks > 1) gemv_load(odd, tiles, p.w, kb_begin + 1);
  wait_for_previous_grid();  // x is the previous kernel's output

  extern __shared__ __align__(16) unsigned char smem[];  // staged x, then the cluster's sums
  float acc[R][kGemvTiles / 2][4] = {};
  if constexpr (R < kStagedRowGroups) {
    GemvXRows<T, R> x_rows;  // the B column this lane loads in each row group
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int row = row0 + r * kGemvGroupRows + (lane >> 2);
      x_rows.valid[r] = row < p.m;
      x_rows.lane[r] =
          static_cast<const T*>(p.x) + std::int64_t(x_rows.valid[r] ? row : 0) * p.x_stride + (lane & 3) * 4;
    }
    // x one block ahead of the math (L1/L2 hits, but not free), codes two.
    GemvX<R> x_even, x_odd;
    gemv_load_x(x_even, x_rows, p.w.in_features, kb_begin, lane);
    for (int i = 0; i < blocks; i += 2) {
      const int kb = kb_begin + i;
      if (i + 1 < blocks) gemv_load_x(x_odd, x_rows, p.w.in_features, kb + 1, lane);
      gemv_compute<T, kGroup, R>(even, RegisterX<R>{x_even}, lane, acc);
      if (i + 2 < blocks) gemv_load(even, tiles, p.w, kb + 2);
      if (i + 1 < blocks) {
        if (i + 2 < blocks) gemv_load_x(x_even, x_rows, p.w.in_features, kb + 2, lane);
        gemv_compute<T, kGroup, R>(odd, RegisterX<R>{x_odd}, lane, acc);
        if (i + 3 < blocks) gemv_load(odd, tiles, p.w, kb + 3);
      }
    }
  } else {
    // Four or eight row groups: x's registers (16 a group a block) would not
    // fit, so the CTA stages each block of x once in shared memory (one copy
    // for its four warps), the next block in flight by cp.async while this
    // one is multiplied.
    unsigned char* staged = smem;
    constexpr int kStageBytes = R * kGemvGroupRows * kXPitch;
    const int lane_offset = (lane >> 2) * kXPitch + (lane & 3) * 8;
    stage_x<T, R>(staged, p, row0, kb_begin);
    cp_async_commit();
    for (int i = 0; i < blocks; ++i) {
      const int kb = kb_begin + i;
      if (i + 1 < blocks) stage_x<T, R>(staged + ((i + 1) % 2) * kStageBytes, p, row0, kb + 1);
      cp_async_commit();  // an empty group at the last block keeps the count
      cp_async_wait<1>();
      __syncthreads();  // block i's x, copied by every thread, is in place
      const StagedX x{staged + (i % 2) * kStageBytes + lane_offset};
      if (i % 2 == 0) {
        gemv_compute<T, kGroup, R>(even, x, lane, acc);
        if (i + 2 < blocks) gemv_load(even, tiles, p.w, kb + 2);
      } else {
        gemv_compute<T, kGroup, R>(odd, x, lane, acc);
        if (i + 2 < blocks) gemv_load(odd, tiles, p.w, kb + 2);
      }
      __syncthreads();  // every warp is done with this buffer before block i + 2 is staged into it
    }
  }
  allow_next_grid_to_launch();
  if (p.cluster_reduce) {
    // (the staged blocks are done with: the loop's last barrier)
    reduce_in_cluster<T, R>(p, acc, reinterpret_cast<float*>(smem), row0, warp, lane);
    return;
  }
  // C rows: column (tile0 + 2p [+1]) * 8 + lane/4; C columns: x rows 8r + 2(lane % 4) + 0/1.
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int q = 0; q < kGemvTiles / 2; ++q)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int col = (tile0 + 2 * q + half) * 8 + (lane >> 2);
        if (col >= p.w.out_features) continue;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int out_row = row0 + r * kGemvGroupRows + (lane & 3) * 2 + e;
          if (out_row >= p.m) continue;
          const float v = acc[r][q][2 * half + e];
          if (gridDim.y == 1 && p.silu_half == 0)
            static_cast<T*>(p.y)[out_row * p.y_stride + col] = from_f32<T>(v);
          else
            p.partial[(std::size_t(blockIdx.y) * p.m + out_row) * p.w.out_features + col] = v;
        }
      }
  if (p.silu_half != 0)
    finish_silu_mul<T>(p, row0, R * kGemvGroupRows, blockIdx.x * (kGemvColumns / 2), kGemvColumns / 2);
  else if (gridDim.y > 1)
    finish_splits<T>(p, row0, R * kGemvGroupRows, blockIdx.x * kGemvColumns, kGemvColumns);
}

// W [n, k] from the codes: one thread per (column tile, k-block, lane), its
// 32 codes written as 8 runs of 4 values.
template <typename T>
__global__ void awq_dequantize_kernel(AwqDeviceWeights w, T* weight) {
  const int n_tiles = w.out_features / 8, k_blocks = w.padded_in / awq_k_block;
  const std::size_t threads = std::size_t(awq_padded_tiles(n_tiles)) * k_blocks * 32;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < threads;
       i += std::size_t(gridDim.x) * blockDim.x) {
    // memory order: (tile group, block, tile in the group, lane)
    const int lane = int(i % 32), in_group = int(i / 32 % awq_tile_group);
    const int kb = int(i / (32 * awq_tile_group) % k_blocks);
    const int nt = int(i / (std::size_t(32) * awq_tile_group * k_blocks)) * awq_tile_group + in_group;
    if (nt >= n_tiles) continue;  // a group's padding tiles
    const int n = nt * 8 + lane / 4, t = lane % 4;
    const uint4 c = *reinterpret_cast<const uint4*>(w.codes + i * 4);
    const std::uint32_t words[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
    for (int s = 0; s < awq_k_block / 16; ++s) {
      const int k = kb * awq_k_block + s * 16 + t * 4;
      if (k >= w.in_features) break;
      const int group = k / w.group_size;
      const float zero = float((w.zeros[std::size_t(group) * n_tiles + nt] >> (4 * (lane / 4))) & 0xfu);
      const float scale = __half2float(__ushort_as_half(w.scales[std::size_t(group) * w.out_features + n]));
      const std::uint32_t word = words[s / 2] >> (8 * (s % 2));
      // nibbles 0, 4, 1, 5 of `word`: k + 0, +1, +2, +3 (j = 0 then 1, e = 0 then 1)
      const float q0 = float(word & 0xfu), q1 = float((word >> 16) & 0xfu), q2 = float((word >> 4) & 0xfu),
                  q3 = float((word >> 20) & 0xfu);
      uint2 out;
      out.x = pack2<T>((q0 - zero) * scale, (q1 - zero) * scale);
      out.y = pack2<T>((q2 - zero) * scale, (q3 - zero) * scale);
      *reinterpret_cast<uint2*>(weight + std::size_t(n) * w.in_features + k) = out;
    }
  }
}

int device_sms() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    return 132;
  }
  return sms;
}

// Whether the decode kernel's splits may reduce in a cluster: an sm_90+
// device running code built for sm_90+ (reduce_in_cluster is empty below).
bool gemv_has_clusters() {
  static const bool has = [] {
    if (!device_has_pdl()) return false;
    cudaFuncAttributes attributes{};
    if (cudaFuncGetAttributes(&attributes, awq_gemv_kernel<__nv_bfloat16, 128, 1>) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return attributes.binaryVersion >= 90;
  }();
  return has;
}

// How a call of m rows is cut: which kernel, rows per CTA and the number of
// k splits. With few CTAs (small m, narrow layers) k is split until about
// as many CTAs stream weights as an SM holds at once (3 for the tile
// kernel), each split keeping at least two k-blocks. The decode kernel's
// splits stop below that count: a split more that overshoots leaves a
// second, partial wave as a tail (gate/up at one row: 672 CTAs for 528
// places took 29.5 us, 448 took 25.4; H100, docs/benchmarks.md). With 17-64
// rows a CTA (x staged) and the splits added in a cluster, the splits aim at
// 1.5 CTAs an SM: at 32 and 64 rows that was the fastest split count of a
// sweep for each Llama-3-8B layer (qkv 4, o and down 6, gate/up 1; H100,
// kernels/cuda/NOTES.md), where the two an SM hold at once were 10-50%
// slower (the cluster's exchange of 64 x 128 sums a split is not free).
// From 4 rows up, on layers of at most 32 k-blocks, the decode kernel's
// splits stop at a cluster's 8.
struct Plan {
  bool gemv = false;
  int row_groups = 1;  // the decode kernel's
  int m_tiles = 1;
  int splits = 1;
  int blocks_per_split = 1;
  bool cluster = false;  // the decode kernel's splits reduce in a cluster (sm_90, at most 8 of them)
  dim3 grid;
};
// Group 64 holds twice the zero points and scales a k-block: four row
// groups spill there, so it stops at two (16 rows).
bool takes_gemv(const AwqDeviceWeights& w, int m) {
  return w.group_size >= 64 && m <= (w.group_size == 128 ? kGemvMaxCallRows : 2 * kGemvGroupRows);
}
// `forced_splits` (test_kernels_cuda's sweep) replaces the choice when > 0.
Plan plan_for(const AwqDeviceWeights& w, int m, int sms, int forced_splits = 0) {
  Plan plan;
  plan.gemv = takes_gemv(w, m);
  plan.row_groups = gemv_row_groups(m);
  plan.m_tiles = m <= 16 ? 1 : (m <= 32 ? 2 : 4);
  const int rows = plan.gemv ? kGemvMaxRows : 16 * plan.m_tiles;
  const int columns = plan.gemv ? kGemvColumns : kColumns;
  const bool clusters = plan.gemv && gemv_has_clusters();
  const int ctas_per_sm = plan.gemv ? gemv_ctas_per_sm(w.group_size, plan.row_groups) : 3;
  const long long target = clusters && plan.row_groups >= kStagedRowGroups ? 3ll * sms / 2 : 1ll * ctas_per_sm * sms;
  const int col_blocks = (w.out_features + columns - 1) / columns, row_blocks = (m + rows - 1) / rows;
  const int k_blocks = w.padded_in / awq_k_block;
  const long long ctas = static_cast<long long>(col_blocks) * row_blocks;
  int splits = ctas >= target ? 1 : plan.gemv ? int(target / ctas) : int((target + ctas - 1) / ctas);
  splits = std::max(1, std::min(splits, k_blocks / 2));
  // From 4 rows up, on layers of at most 32 k-blocks (qkv, o), 8 splits
  // added in a cluster beat the 11-16 the target asks for with the last CTA
  // adding them (8 rows: qkv 11.7 -> 9.0 us, o 10.9 -> 8.1). At 1-2 rows, and
  // for down's 112 k-blocks (14 a split with 8), they lost (o at 2 rows 6.8
  // -> 7.3, down at 2 / 8 rows 13.1 / 17.2 -> 16.5 / 17.8; H100).
  if (clusters && m >= 4 && k_blocks <= 4 * kMaxClusterSplits) splits = std::min(splits, kMaxClusterSplits);
  if (forced_splits > 0) splits = std::min(forced_splits, k_blocks);
  plan.blocks_per_split = (k_blocks + splits - 1) / splits;
  plan.splits = (k_blocks + plan.blocks_per_split - 1) / plan.blocks_per_split;
  plan.grid = dim3(col_blocks, plan.splits, row_blocks);
  plan.cluster = clusters && plan.splits <= kMaxClusterSplits;
  return plan;
}

std::size_t partial_bytes(const AwqDeviceWeights& w, int m, const Plan& plan, bool silu = false) {
  return !plan.cluster && (plan.splits > 1 || silu) ? std::size_t(plan.splits) * m * w.out_features * sizeof(float)
                                                    : 0;
}
// SiLU-and-multiply rides on the decode kernel: its CTA's 128 columns split
// into 64 gate and 64 up ones.
bool fuses_silu_mul(const AwqDeviceWeights& w, int m) {
  return m >= 1 && takes_gemv(w, m) && w.out_features % kGemvColumns == 0;
}
int counters_needed(const Plan& plan) {
  return plan.splits > 1 && !plan.cluster ? int(plan.grid.x * plan.grid.z) : 0;
}

template <typename T, int kMTiles, int kGroup>
cudaError_t launch_gemm(const GemmParams& params, const Plan& plan, cudaStream_t stream) {
  constexpr auto kernel = awq_gemm_kernel<T, kMTiles, kGroup>;
  constexpr int smem = kStages<kMTiles> * Stage<T, kMTiles, kGroup>::kBytes;
  if (const cudaError_t e = allow_dynamic_smem<kernel>(smem); e != cudaSuccess) return e;
  return launch_dependent(kernel, plan.grid, dim3(kThreads), std::size_t(smem), stream, params);
}

// Shared memory of the decode kernel: two staged blocks of x (four and
// eight row groups), and the sums of the cluster's reduction after them
// (they reuse the same bytes: the staging is over by then).
constexpr int gemv_smem_bytes(int row_groups, bool cluster) {
  const int staged = row_groups < kStagedRowGroups ? 0 : 2 * row_groups * kGemvGroupRows * kXPitch;
  const int sums = cluster ? row_groups * kGemvGroupRows * kReducePitch * int(sizeof(float)) : 0;
  return std::max(staged, sums);
}
static_assert(gemv_smem_bytes(kGemvMaxRowGroups, true) <= 48 * 1024, "the decode kernel needs no opt-in shared memory");

template <typename T, int kGroup, int R>
cudaError_t launch_gemv_rows(const GemmParams& params, const Plan& plan, cudaStream_t stream) {
  static const bool pdl = device_has_pdl();
  cudaLaunchAttribute attributes[2] = {};
  int count = 0;
  if (pdl) {
    attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[count++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (params.cluster_reduce && plan.splits > 1) {
    attributes[count].id = cudaLaunchAttributeClusterDimension;
    attributes[count++].val.clusterDim = {1u, unsigned(plan.splits), 1u};
  }
  cudaLaunchConfig_t config{};
  config.gridDim = plan.grid;
  config.blockDim = dim3(kGemvWarps * 32);
  config.dynamicSmemBytes = gemv_smem_bytes(R, params.cluster_reduce);
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = count;
  return cudaLaunchKernelEx(&config, awq_gemv_kernel<T, kGroup, R>, params);
}

template <typename T, int kGroup>
cudaError_t launch_gemv(const GemmParams& params, const Plan& plan, cudaStream_t stream) {
  if (plan.row_groups == 1) return launch_gemv_rows<T, kGroup, 1>(params, plan, stream);
  if (plan.row_groups == 2 || kGroup != 128) return launch_gemv_rows<T, kGroup, 2>(params, plan, stream);
  if constexpr (kGroup == 128) {
    if (plan.row_groups == 4) return launch_gemv_rows<T, kGroup, 4>(params, plan, stream);
    return launch_gemv_rows<T, kGroup, 8>(params, plan, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename T, int kMTiles>
cudaError_t launch_group(const GemmParams& params, const Plan& plan, cudaStream_t stream) {
  switch (params.w.group_size) {
    case 32: return launch_gemm<T, kMTiles, 32>(params, plan, stream);
    case 64: return launch_gemm<T, kMTiles, 64>(params, plan, stream);
    default: return launch_gemm<T, kMTiles, 128>(params, plan, stream);
  }
}

template <typename T>
cudaError_t launch(const GemmParams& params, const Plan& plan, cudaStream_t stream) {
  if (plan.gemv)
    return params.w.group_size == 128 ? launch_gemv<T, 128>(params, plan, stream)
                                      : launch_gemv<T, 64>(params, plan, stream);
  return plan.m_tiles == 1   ? launch_group<T, 1>(params, plan, stream)
         : plan.m_tiles == 2 ? launch_group<T, 2>(params, plan, stream)
                             : launch_group<T, 4>(params, plan, stream);
}

bool weights_valid(const AwqDeviceWeights& w) {
  return w.codes != nullptr && w.zeros != nullptr && w.scales != nullptr && w.in_features > 0 &&
         w.in_features % 8 == 0 && w.out_features > 0 && w.out_features % 8 == 0 &&
         (w.group_size == 32 || w.group_size == 64 || w.group_size == 128) && w.in_features % w.group_size == 0 &&
         w.padded_in == (w.in_features + awq_k_block - 1) / awq_k_block * awq_k_block;
}

// The largest need(m, plan) over the row counts 1..max_rows.
template <typename Need>
auto most_over_rows(const AwqDeviceWeights& weights, int max_rows, Need need) {
  decltype(need(1, Plan{})) most = 0;
  if (!weights_valid(weights)) return most;
  static const int sms = device_sms();
  for (int m = 1; m <= max_rows; ++m) most = std::max(most, need(m, plan_for(weights, m, sms)));
  return most;
}

}  // namespace

std::size_t awq_gemm_workspace_bytes(const AwqDeviceWeights& weights, int max_rows) {
  return most_over_rows(weights, max_rows, [&](int m, const Plan& plan) {
    return partial_bytes(weights, m, plan, fuses_silu_mul(weights, m));
  });
}

int awq_gemm_direct_rows(const AwqDeviceWeights& weights) {
  return weights.group_size == 128 ? kGemvMaxCallRows : 64;
}

bool awq_gemm_fuses_silu_mul(const AwqDeviceWeights& weights, int m) {
  return weights_valid(weights) && fuses_silu_mul(weights, m);
}

int awq_gemm_counters(const AwqDeviceWeights& weights, int max_rows) {
  return most_over_rows(weights, max_rows, [](int, const Plan& plan) { return counters_needed(plan); });
}

namespace {

cudaError_t checked_launch(const AwqDeviceWeights& weights, const void* x, std::int64_t x_stride, DType dtype, int m,
                           void* y, std::int64_t y_stride, void* workspace, std::size_t workspace_bytes,
                           std::uint32_t* counters, int counter_count, bool silu, cudaStream_t stream) {
  if ((dtype != DType::bf16 && dtype != DType::f16) || !weights_valid(weights) || m < 0) return cudaErrorInvalidValue;
  if (m == 0) return cudaSuccess;
  const int y_columns = silu ? weights.out_features / 2 : weights.out_features;
  if (x == nullptr || y == nullptr || reinterpret_cast<std::uintptr_t>(x) % 16 != 0 || x_stride % 8 != 0 ||
      x_stride < weights.in_features || reinterpret_cast<std::uintptr_t>(y) % 4 != 0 || y_stride % 2 != 0 ||
      y_stride < y_columns || (silu && !fuses_silu_mul(weights, m)))
    return cudaErrorInvalidValue;
  static const int sms = device_sms();
  const Plan plan = plan_for(weights, m, sms);
  const std::size_t needed = partial_bytes(weights, m, plan, silu);
  if (needed > 0 && (workspace == nullptr || workspace_bytes < needed ||
                     reinterpret_cast<std::uintptr_t>(workspace) % 8 != 0 ||
                     (counters == nullptr && counters_needed(plan) > 0) || counter_count < counters_needed(plan)))
    return cudaErrorInvalidValue;
  const GemmParams params{weights, x,         x_stride, m, y, y_stride, static_cast<float*>(workspace), counters,
                          plan.blocks_per_split, silu ? weights.out_features / 2 : 0,
                          plan.cluster && (plan.splits > 1 || silu)};
  return dtype == DType::bf16 ? launch<__nv_bfloat16>(params, plan, stream) : launch<__half>(params, plan, stream);
}

}  // namespace

cudaError_t awq_gemm(const AwqDeviceWeights& weights, const void* x, std::int64_t x_stride, DType dtype, int m,
                     void* y, std::int64_t y_stride, void* workspace, std::size_t workspace_bytes,
                     std::uint32_t* counters, int counter_count, cudaStream_t stream) {
  return checked_launch(weights, x, x_stride, dtype, m, y, y_stride, workspace, workspace_bytes, counters,
                        counter_count, false, stream);
}

cudaError_t awq_gemm_silu_mul(const AwqDeviceWeights& weights, const void* x, std::int64_t x_stride, DType dtype,
                              int m, void* out, std::int64_t out_stride, void* workspace, std::size_t workspace_bytes,
                              std::uint32_t* counters, int counter_count, cudaStream_t stream) {
  return checked_launch(weights, x, x_stride, dtype, m, out, out_stride, workspace, workspace_bytes, counters,
                        counter_count, true, stream);
}

cudaError_t awq_dequantize(const AwqDeviceWeights& weights, DType dtype, void* weight, cudaStream_t stream) {
  if ((dtype != DType::bf16 && dtype != DType::f16) || !weights_valid(weights) || weight == nullptr ||
      reinterpret_cast<std::uintptr_t>(weight) % 8 != 0 || weights.in_features % 4 != 0)
    return cudaErrorInvalidValue;
  static const int sms = device_sms();
  const std::size_t threads =
      std::size_t(awq_padded_tiles(weights.out_features / 8)) * (weights.padded_in / awq_k_block) * 32;
  const int blocks = int(std::min<std::size_t>((threads + 255) / 256, std::size_t(sms) * 16));
  if (dtype == DType::bf16)
    awq_dequantize_kernel<<<blocks, 256, 0, stream>>>(weights, static_cast<__nv_bfloat16*>(weight));
  else
    awq_dequantize_kernel<<<blocks, 256, 0, stream>>>(weights, static_cast<__half*>(weight));
  return cudaGetLastError();
}

cudaError_t awq_gemm_sweep(const AwqDeviceWeights& weights, const void* x, int m, void* y, void* workspace,
                           std::size_t workspace_bytes, std::uint32_t* counters, int counter_count, int splits,
                           bool cluster_reduce, cudaStream_t stream) {
  if (!weights_valid(weights) || !takes_gemv(weights, m) || weights.group_size != 128 || splits < 0)
    return cudaErrorInvalidValue;
  static const int sms = device_sms();
  Plan plan = plan_for(weights, m, sms, splits);
  plan.cluster = plan.cluster && cluster_reduce;
  if (partial_bytes(weights, m, plan) > workspace_bytes || counter_count < counters_needed(plan))
    return cudaErrorInvalidValue;
  const GemmParams params{weights, x, weights.in_features, m, y, weights.out_features, static_cast<float*>(workspace),
                          counters, plan.blocks_per_split, 0, plan.cluster && plan.splits > 1};
  return launch_gemv<__nv_bfloat16, 128>(params, plan, stream);
}

}  // namespace hostrun::cuda
