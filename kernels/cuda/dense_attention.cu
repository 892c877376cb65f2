// Dense attention in two kernels:
//
//  1. gather: q, k and v, f32 through their strides, rounded to bf16 into
//     contiguous rows [batch * heads][tokens][kDim] of the workspace (kDim:
//     the head size padded with zeros to 32 or 64), one 16-byte store per
//     thread and step; with the head dimension contiguous (the ViT layouts)
//     the reads are float4s.
//  2. attend: CTA = 4 warps, 64 query rows of one (batch, head). 64-key K/V
//     tiles stream through shared memory by cp.async, double-buffered: tile
//     n + 1 is in flight while tile n is attended (attention_tile.cuh's step;
//     keys past kv_len masked on the last tile). out = O / l, written through
//     its strides as f32 or bf16.
//
// Why gather first: loading f32 through strides inside the attention loop
// meant every one of a head's query tiles converted the same K/V again with
// 64-bit index math per element, and the loads could not overlap the
// products (ViT-L/14-336 ran at ~24 TFLOP/s, a third of the encoder's time).
// Gathered once, a tile is a run of 16-byte copies.
#include <cuda_bf16.h>

#include "cuda/attention_common.cuh"
#include "cuda/attention_tile.cuh"
#include "cuda/dense_attention.hpp"

namespace hostrun::cuda {

namespace {

using detail::cp_async_16;
using detail::ldmatrix_x4;
using detail::pack2;
using bf16 = __nv_bfloat16;

constexpr int kRows = 64;  // query rows per CTA, and keys per tile
constexpr int kThreads = 128;
constexpr int kGatherThreads = 256;

int padded_dim(int head_dim) { return head_dim <= 32 ? 32 : 64; }
std::size_t round_up_256(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

// ---- gather -------------------------------------------------------------

struct GatherSource {
  const float* data = nullptr;
  ref::AttentionStrides strides;
  int tokens = 0;
  bf16* rows = nullptr;  // [batch * heads][tokens][kDim]
  bool float4_reads = false;  // dim contiguous, every row 16-byte aligned
};
struct GatherParams {
  GatherSource q, k, v;
  int batch = 0, heads = 0, head_dim = 0;
};

// grid.y picks q, k or v; each thread fills 8 columns of a row at a time.
template <int kDim>
__global__ void __launch_bounds__(kGatherThreads) gather_kernel(const GatherParams p) {
  const GatherSource g = blockIdx.y == 0 ? p.q : blockIdx.y == 1 ? p.k : p.v;
  constexpr unsigned kChunks = kDim / 8;
  const unsigned rows = unsigned(p.batch) * unsigned(p.heads) * unsigned(g.tokens);
  const unsigned total = rows * kChunks;  // < 2^31, checked by the launch
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const unsigned row = i / kChunks, t = row % unsigned(g.tokens), bh = row / unsigned(g.tokens);
    const int d0 = int(i % kChunks) * 8;
    const int h = int(bh % unsigned(p.heads)), b = int(bh / unsigned(p.heads));
    const float* src = g.data + (b * g.strides.batch + h * g.strides.head + std::int64_t(t) * g.strides.token);
    float x[8];
    if (g.float4_reads && d0 + 8 <= p.head_dim) {
      const float4 lo = *reinterpret_cast<const float4*>(src + d0), hi = *reinterpret_cast<const float4*>(src + d0 + 4);
      x[0] = lo.x, x[1] = lo.y, x[2] = lo.z, x[3] = lo.w, x[4] = hi.x, x[5] = hi.y, x[6] = hi.z, x[7] = hi.w;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) x[j] = d0 + j < p.head_dim ? src[(d0 + j) * g.strides.dim] : 0.0f;
    }
    const uint4 packed{pack2<bf16>(x[0], x[1]), pack2<bf16>(x[2], x[3]), pack2<bf16>(x[4], x[5]),
                       pack2<bf16>(x[6], x[7])};
    *reinterpret_cast<uint4*>(g.rows + std::size_t(row) * kDim + d0) = packed;
  }
}

// ---- attend ---------------------------------------------------------------

struct AttendParams {
  const bf16 *q = nullptr, *k = nullptr, *v = nullptr;  // gathered rows
  void* out = nullptr;
  ref::AttentionStrides os;
  bool pair_writes = false;  // dim contiguous and every row's start even: two columns per store
  int heads = 0, q_len = 0, kv_len = 0, head_dim = 0, q_tiles = 0;
  float scale_log2 = 0.0f;
};

// 64 rows of `src` from `first` into a [64][kRow] tile, zeros from `count` on.
template <int kDim>
__device__ __forceinline__ void load_rows(bf16* tile, const bf16* src, int first, int count) {
  constexpr int kChunks = kDim / 8, kRow = detail::smem_row<kDim>;
  for (int e = threadIdx.x; e < kRows * kChunks; e += kThreads) {
    const int r = e / kChunks, c = e % kChunks, t = first + r;
    const bool valid = t < count;
    cp_async_16(tile + r * kRow + c * 8, src + std::size_t(valid ? t : 0) * kDim + c * 8, valid);
  }
}

template <int kDim, typename Out>
__global__ void __launch_bounds__(kThreads) attend_kernel(const AttendParams p) {
  constexpr int kRow = detail::smem_row<kDim>;
  constexpr int KSTEPS = kDim / 16, DTILES = kDim / 8;
  __shared__ __align__(16) bf16 q_tile[kRows * kRow];
  __shared__ __align__(16) bf16 k_tiles[2][kRows * kRow];
  __shared__ __align__(16) bf16 v_tiles[2][kRows * kRow];

  const int bh = int(blockIdx.x) / p.q_tiles, row0 = (int(blockIdx.x) % p.q_tiles) * kRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q_len = p.q_len, kv_len = p.kv_len;
  const bf16* k = p.k + std::size_t(bh) * kv_len * kDim;
  const bf16* v = p.v + std::size_t(bh) * kv_len * kDim;
  load_rows<kDim>(q_tile, p.q + std::size_t(bh) * q_len * kDim, row0, q_len);
  load_rows<kDim>(k_tiles[0], k, 0, kv_len);
  load_rows<kDim>(v_tiles[0], v, 0, kv_len);
  detail::cp_async_commit();

  std::uint32_t q_frag[KSTEPS][4];
  float o[DTILES][4];
#pragma unroll
  for (int d = 0; d < DTILES; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  detail::RowSoftmax softmax;
  const int tiles = (kv_len + kRows - 1) / kRows;
  for (int n = 0; n < tiles; ++n) {
    const int buffer = n & 1;
    if (n + 1 < tiles) {
      load_rows<kDim>(k_tiles[buffer ^ 1], k, (n + 1) * kRows, kv_len);
      load_rows<kDim>(v_tiles[buffer ^ 1], v, (n + 1) * kRows, kv_len);
    }
    detail::cp_async_commit();  // an empty group on the last tile keeps wait<1> uniform
    detail::cp_async_wait<1>();
    __syncthreads();
    if (n == 0) {
#pragma unroll
      for (int kk = 0; kk < KSTEPS; ++kk)
        ldmatrix_x4(q_frag[kk], q_tile + (warp * 16 + lane % 16) * kRow + kk * 16 + (lane / 16) * 8);
    }
    const int key0 = n * kRows;
    detail::attend_tile<bf16, kDim, kRows, kRow>(
        q_frag, k_tiles[buffer], v_tiles[buffer], key0, p.scale_log2, key0 + kRows > kv_len,
        [&](int key, bool) { return key >= kv_len; }, o, softmax);
    __syncthreads();  // the next iteration's copies overwrite this buffer
  }

  float inv[2];
  softmax.finish(inv[0], inv[1]);
  const int b = bh / p.heads, h = bh % p.heads;
  const int quad_col = (lane % 4) * 2;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + warp * 16 + lane / 4 + half * 8;
    if (row >= q_len) continue;
    Out* base = static_cast<Out*>(p.out) + (b * p.os.batch + h * p.os.head + std::int64_t(row) * p.os.token);
#pragma unroll
    for (int d = 0; d < DTILES; ++d) {
      const int col = d * 8 + quad_col;
      const float x0 = o[d][2 * half] * inv[half], x1 = o[d][2 * half + 1] * inv[half];
      if (p.pair_writes && col + 1 < p.head_dim) {
        if constexpr (std::is_same_v<Out, float>) *reinterpret_cast<float2*>(base + col) = float2{x0, x1};
        else *reinterpret_cast<std::uint32_t*>(base + col) = pack2<bf16>(x0, x1);
      } else {
        if (col < p.head_dim) base[col * p.os.dim] = detail::from_f32<Out>(x0);
        if (col + 1 < p.head_dim) base[(col + 1) * p.os.dim] = detail::from_f32<Out>(x1);
      }
    }
  }
}

bool aligned(const void* p, std::size_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

template <int kDim>
cudaError_t launch(const ref::DenseAttentionShape& s, const GatherParams& gather, const AttendParams& attend,
                   DType out_dtype, cudaStream_t stream) {
  const std::int64_t most_rows = std::int64_t(s.batch) * s.heads * std::max(s.q_len, s.kv_len);
  const int blocks = int(std::min<std::int64_t>((most_rows * (kDim / 8) + kGatherThreads - 1) / kGatherThreads, 4096));
  gather_kernel<kDim><<<dim3(unsigned(blocks), 3), kGatherThreads, 0, stream>>>(gather);
  const unsigned grid = unsigned(std::int64_t(s.batch) * s.heads * attend.q_tiles);
  if (out_dtype == DType::f32) attend_kernel<kDim, float><<<grid, kThreads, 0, stream>>>(attend);
  else attend_kernel<kDim, bf16><<<grid, kThreads, 0, stream>>>(attend);
  return cudaGetLastError();
}

}  // namespace

bool dense_attention_supports(int head_dim) { return head_dim >= 1 && head_dim <= 64; }

std::size_t dense_attention_workspace_bytes(const ref::DenseAttentionShape& s) {
  const auto rows = [&](int tokens) {
    return round_up_256(std::size_t(std::max(s.batch, 0)) * std::size_t(std::max(s.heads, 0)) *
                        std::size_t(std::max(tokens, 0)) * std::size_t(padded_dim(s.head_dim)) * 2);
  };
  return rows(s.q_len) + 2 * rows(s.kv_len);
}

cudaError_t dense_attention(const ref::DenseAttentionShape& shape, const float* q, const ref::AttentionStrides& q_strides,
                            const float* k, const ref::AttentionStrides& k_strides, const float* v,
                            const ref::AttentionStrides& v_strides, void* out, DType out_dtype,
                            const ref::AttentionStrides& out_strides, void* workspace, cudaStream_t stream) {
  if (!dense_attention_supports(shape.head_dim) || shape.q_len < 1 || shape.kv_len < 1 || shape.batch < 1 ||
      shape.heads < 1 || (out_dtype != DType::f32 && out_dtype != DType::bf16) || workspace == nullptr)
    return cudaErrorInvalidValue;
  const int dim = padded_dim(shape.head_dim);
  const std::int64_t rows = std::int64_t(shape.batch) * shape.heads * std::max(shape.q_len, shape.kv_len);
  const int q_tiles = (shape.q_len + kRows - 1) / kRows;
  if (rows * dim >= (std::int64_t(1) << 31) || std::int64_t(shape.batch) * shape.heads * q_tiles >= (std::int64_t(1) << 31))
    return cudaErrorInvalidValue;

  auto* base = static_cast<unsigned char*>(workspace);
  const std::size_t q_bytes = round_up_256(std::size_t(shape.batch) * shape.heads * shape.q_len * dim * 2);
  const std::size_t kv_bytes = round_up_256(std::size_t(shape.batch) * shape.heads * shape.kv_len * dim * 2);
  auto* q_rows = reinterpret_cast<bf16*>(base);
  auto* k_rows = reinterpret_cast<bf16*>(base + q_bytes);
  auto* v_rows = reinterpret_cast<bf16*>(base + q_bytes + kv_bytes);
  const auto source = [](const float* data, const ref::AttentionStrides& s, int tokens, bf16* rows_out) {
    const bool rows_aligned = s.batch % 4 == 0 && s.head % 4 == 0 && s.token % 4 == 0;
    return GatherSource{data, s, tokens, rows_out, s.dim == 1 && rows_aligned && aligned(data, 16)};
  };
  const GatherParams gather{source(q, q_strides, shape.q_len, q_rows), source(k, k_strides, shape.kv_len, k_rows),
                            source(v, v_strides, shape.kv_len, v_rows), shape.batch, shape.heads, shape.head_dim};
  AttendParams attend;
  attend.q = q_rows;
  attend.k = k_rows;
  attend.v = v_rows;
  attend.out = out;
  attend.os = out_strides;
  const std::size_t pair_bytes = out_dtype == DType::f32 ? 8 : 4;
  attend.pair_writes = out_strides.dim == 1 && out_strides.batch % 2 == 0 && out_strides.head % 2 == 0 &&
                       out_strides.token % 2 == 0 && aligned(out, pair_bytes);
  attend.heads = shape.heads;
  attend.q_len = shape.q_len;
  attend.kv_len = shape.kv_len;
  attend.head_dim = shape.head_dim;
  attend.q_tiles = q_tiles;
  attend.scale_log2 = shape.scale * 1.4426950408889634f;  // log2(e): the kernel's exp2
  return dim == 32 ? launch<32>(shape, gather, attend, out_dtype, stream)
                   : launch<64>(shape, gather, attend, out_dtype, stream);
}

}  // namespace hostrun::cuda
