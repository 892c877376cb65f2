// Dense attention in up to two kernels:
//
//  1. gather (only for operands not read in place): q, k or v, f32 or bf16
//     through their strides, rounded to bf16 into contiguous rows
//     [batch * heads][tokens][kDim] of the workspace (kDim: the head size
//     padded with zeros to 32 or 64), one 16-byte store per thread and step;
//     with the head dimension contiguous (the ViT layouts) the reads are
//     16-byte vectors.
//  2. attend: CTA = 4 warps, 128 query rows of one (batch, head), each warp
//     two 16-row m-tiles that share every K and V fragment it reads. 64-key
//     K/V tiles stream through shared memory by cp.async, double-buffered:
//     tile n + 1 is in flight while tile n is attended (attention_tile.cuh's
//     softmax).
//     Rows come from the gathered copy or, for a bf16 operand whose rows are
//     contiguous and aligned (a bf16 GEMM's output seen through the head
//     split), straight from the operand. out = O / l, written through its
//     strides as f32 or bf16.
//
// Why gather f32 first: loading f32 through strides inside the attention loop
// meant every one of a head's query tiles converted the same K/V again with
// 64-bit index math per element, and the loads could not overlap the
// products (ViT-L/14-336 ran at ~24 TFLOP/s, a third of the encoder's time).
// Gathered once, a tile is a run of 16-byte copies; a bf16 operand in place
// is that already, and skips the gather's read and write.
//
// Sequence lengths past a multiple of 64 (CLIP's 577 = 9 x 64 + 1): a warp
// whose 32 query rows all lie past the end skips the products (it still
// copies and meets the barriers), and a last key tile of up to 16 keys is
// attended as one 16-key step, not over 64 (more step sizes cost registers:
// ptxas spilled 40 bytes with 32- and 48-key steps beside these two).
#include <cuda_bf16.h>

#include <atomic>

#include "cuda/dense_attention.cuh"
#include "cuda/dense_attention.hpp"

namespace hostrun::cuda {

namespace {

using detail::cp_async_16;
using detail::ldmatrix_x4;
using detail::ldmatrix_x4_trans;
using detail::pack2;
using detail::dense::AttendParams;
using detail::dense::kKeys;
using detail::dense::kRows;  // query rows per CTA: 4 warps of two 16-row m-tiles
using detail::dense::Rows;
using bf16 = __nv_bfloat16;

constexpr int kThreads = 128;
constexpr int kGatherThreads = 256;

int padded_dim(int head_dim) { return head_dim <= 32 ? 32 : 64; }
std::size_t round_up_256(std::size_t bytes) { return (bytes + 255) / 256 * 256; }
// The workspace's room for one operand's gathered rows: [batch * heads][tokens][padded head] bf16.
std::size_t gathered_bytes(const ref::DenseAttentionShape& s, int tokens) {
  return round_up_256(std::size_t(std::max(s.batch, 0)) * std::size_t(std::max(s.heads, 0)) *
                      std::size_t(std::max(tokens, 0)) * std::size_t(padded_dim(s.head_dim)) * 2);
}

// ---- gather -------------------------------------------------------------

struct GatherSource {
  const void* data = nullptr;  // null: read in place, nothing to gather
  bool bf16_in = false;
  ref::AttentionStrides strides;
  int tokens = 0;
  bf16* rows = nullptr;  // [batch * heads][tokens][kDim]
  bool vector_reads = false;  // dim contiguous, every row 16-byte aligned
};
struct GatherParams {
  GatherSource q, k, v;
  int batch = 0, heads = 0, head_dim = 0;
};

// Eight values of a row from column d0, zeros past head_dim.
template <typename In>
__device__ __forceinline__ void load8(const In* src, int d0, int head_dim, std::int64_t dim_stride, bool vector,
                                      float (&x)[8]) {
  if (vector && d0 + 8 <= head_dim) {
    if constexpr (std::is_same_v<In, float>) {
      const float4 lo = *reinterpret_cast<const float4*>(src + d0), hi = *reinterpret_cast<const float4*>(src + d0 + 4);
      x[0] = lo.x, x[1] = lo.y, x[2] = lo.z, x[3] = lo.w, x[4] = hi.x, x[5] = hi.y, x[6] = hi.z, x[7] = hi.w;
    } else {
      const uint4 w = *reinterpret_cast<const uint4*>(src + d0);
      const std::uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        x[2 * j] = __uint_as_float(words[j] << 16);
        x[2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
      }
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) x[j] = d0 + j < head_dim ? detail::to_f32(src[(d0 + j) * dim_stride]) : 0.0f;
}

// grid.y picks q, k or v; each thread fills 8 columns of a row at a time.
template <int kDim>
__global__ void __launch_bounds__(kGatherThreads) gather_kernel(const GatherParams p) {
  const GatherSource g = blockIdx.y == 0 ? p.q : blockIdx.y == 1 ? p.k : p.v;
  if (g.data == nullptr) return;
  constexpr unsigned kChunks = kDim / 8;
  const unsigned rows = unsigned(p.batch) * unsigned(p.heads) * unsigned(g.tokens);
  const unsigned total = rows * kChunks;  // < 2^31, checked by the launch
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const unsigned row = i / kChunks, t = row % unsigned(g.tokens), bh = row / unsigned(g.tokens);
    const int d0 = int(i % kChunks) * 8;
    const int h = int(bh % unsigned(p.heads)), b = int(bh / unsigned(p.heads));
    const std::int64_t at = b * g.strides.batch + h * g.strides.head + std::int64_t(t) * g.strides.token;
    float x[8];
    if (g.bf16_in) load8(static_cast<const bf16*>(g.data) + at, d0, p.head_dim, g.strides.dim, g.vector_reads, x);
    else load8(static_cast<const float*>(g.data) + at, d0, p.head_dim, g.strides.dim, g.vector_reads, x);
    const uint4 packed{pack2<bf16>(x[0], x[1]), pack2<bf16>(x[2], x[3]), pack2<bf16>(x[4], x[5]),
                       pack2<bf16>(x[6], x[7])};
    *reinterpret_cast<uint4*>(g.rows + std::size_t(row) * kDim + d0) = packed;
  }
}

// ---- attend ---------------------------------------------------------------

// One K/V tile of kTileKeys keys for a warp's two 16-row m-tiles
// (attention_tile.cuh's step, twice over): each K and V fragment read from
// shared memory feeds both m-tiles' products, so a product costs half the
// ldmatrix traffic of one m-tile a warp (FlashAttention-2's shape for small
// heads).
template <int kDim, int kTileKeys, int kRow, typename Masked>
__device__ __forceinline__ void attend_tile_pair(const std::uint32_t (&q_frag)[2][kDim / 16][4], const bf16* k_tile,
                                                 const bf16* v_tile, int key0, float scale_log2, bool needs_mask,
                                                 const Masked& masked, float (&o)[2][kDim / 8][4],
                                                 detail::RowSoftmax (&rows)[2]) {
  constexpr int KSTEPS = kDim / 16, DTILES = kDim / 8, NTILES = kTileKeys / 8;
  const int lane = threadIdx.x % 32;
  float s[2][NTILES][4];
#pragma unroll
  for (int nt = 0; nt < NTILES; ++nt) {
#pragma unroll
    for (int m = 0; m < 2; ++m) s[m][nt][0] = s[m][nt][1] = s[m][nt][2] = s[m][nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk += 2) {
      std::uint32_t b[4];
      ldmatrix_x4(b, k_tile + (nt * 8 + lane % 8) * kRow + kk * 16 + (lane / 8) * 8);
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        detail::mma_16816<bf16>(s[m][nt], q_frag[m][kk], b[0], b[1]);
        detail::mma_16816<bf16>(s[m][nt], q_frag[m][kk + 1], b[2], b[3]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < 2; ++m)
    detail::online_softmax<kTileKeys, kDim>(s[m], key0, scale_log2, needs_mask, masked, o[m], rows[m]);
#pragma unroll
  for (int kt = 0; kt < kTileKeys / 16; ++kt) {
    std::uint32_t a[2][4];
    detail::p_fragment<bf16>(s[0], kt, a[0]);
    detail::p_fragment<bf16>(s[1], kt, a[1]);
#pragma unroll
    for (int d = 0; d < DTILES; d += 2) {
      std::uint32_t b[4];
      ldmatrix_x4_trans(b, v_tile + (kt * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kRow + d * 8 + (lane / 16) * 8);
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        detail::mma_16816<bf16>(o[m][d], a[m], b[0], b[1]);
        detail::mma_16816<bf16>(o[m][d + 1], a[m], b[2], b[3]);
      }
    }
  }
}

template <int kDim, typename Out>
__global__ void __launch_bounds__(kThreads) attend_kernel(const AttendParams p) {
  constexpr int kRow = detail::smem_row<kDim>, kTile = kKeys * kRow;
  constexpr int KSTEPS = kDim / 16, DTILES = kDim / 8;
  // K and V of two tiles: [K0][V0][K1][V1]. The 128 query rows are first
  // loaded over K1 and V1 (the same bytes), read into fragments, and the
  // space handed to tile 1: the CTA fits in 37 KB (kDim 64) of static memory.
  __shared__ __align__(16) bf16 tiles[4 * kTile];
  static_assert(kRows * kRow == 2 * kTile, "the query rows fill the second buffer");
  bf16* const q_rows = tiles + 2 * kTile;

  const int bh = int(blockIdx.x) / p.q_tiles, row0 = (int(blockIdx.x) % p.q_tiles) * kRows;
  const int b = bh / p.heads, h = bh % p.heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q_len = p.q_len, kv_len = p.kv_len;
  const bf16* k = p.k.of(b, h);
  const bf16* v = p.v.of(b, h);
  using detail::dense::load_rows;
  load_rows<kDim, kRows, kThreads>(q_rows, p.q.of(b, h), p.q.token, row0, q_len);
  load_rows<kDim, kKeys, kThreads>(tiles, k, p.k.token, 0, kv_len);
  load_rows<kDim, kKeys, kThreads>(tiles + kTile, v, p.v.token, 0, kv_len);
  detail::cp_async_commit();
  detail::cp_async_wait<0>();
  __syncthreads();
  std::uint32_t q_frag[2][KSTEPS][4];
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk)
      ldmatrix_x4(q_frag[m][kk], q_rows + (warp * 32 + m * 16 + lane % 16) * kRow + kk * 16 + (lane / 16) * 8);
  __syncthreads();  // the query rows' space now takes tile 1

  // A warp with no query row left copies and meets the barriers, nothing
  // else (one whose second m-tile alone is empty computes it anyway).
  const bool has_rows = row0 + warp * 32 < q_len;
  float o[2][DTILES][4];
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int d = 0; d < DTILES; ++d) o[m][d][0] = o[m][d][1] = o[m][d][2] = o[m][d][3] = 0.0f;
  detail::RowSoftmax softmax[2];
  const int kv_tiles = (kv_len + kKeys - 1) / kKeys;
  const auto past_end = [&](int key, bool) { return key >= kv_len; };
  for (int n = 0; n < kv_tiles; ++n) {
    bf16* const kt = tiles + (n & 1) * 2 * kTile;
    bf16* const vt = kt + kTile;
    if (n + 1 < kv_tiles) {
      bf16* const next = tiles + ((n + 1) & 1) * 2 * kTile;
      load_rows<kDim, kKeys, kThreads>(next, k, p.k.token, (n + 1) * kKeys, kv_len);
      load_rows<kDim, kKeys, kThreads>(next + kTile, v, p.v.token, (n + 1) * kKeys, kv_len);
    }
    detail::cp_async_commit();  // an empty group on the last tile keeps wait<1> uniform
    detail::cp_async_wait<1>();
    __syncthreads();
    const int key0 = n * kKeys, keys = kv_len - key0;
    if (!has_rows) {
    } else if (keys > 16) {
      attend_tile_pair<kDim, kKeys, kRow>(q_frag, kt, vt, key0, p.scale_log2, keys < kKeys, past_end, o, softmax);
    } else {  // a last tile of up to 16 keys (CLIP's 577 = 9 x 64 + 1) in one 16-key step
      attend_tile_pair<kDim, 16, kRow>(q_frag, kt, vt, key0, p.scale_log2, keys < 16, past_end, o, softmax);
    }
    __syncthreads();  // the next iteration's copies overwrite this buffer
  }
  if (!has_rows) return;

#pragma unroll
  for (int m = 0; m < 2; ++m) detail::dense::store_rows<kDim, Out>(p, b, h, row0 + warp * 32 + m * 16, o[m], softmax[m]);
}

bool aligned(const void* p, std::size_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

#if defined(HOSTRUN_KERNELS_SM90A)
constexpr bool kHaveWgmma = true;  // dense_attention_wgmma.cu is built
#else
constexpr bool kHaveWgmma = false;
#endif

// The current device's compute capability (major * 10 + minor), asked once
// per device: the executor calls dense_attention while capturing CUDA graphs.
int device_compute_capability() {
  static std::atomic<int> known[64] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  if (device < 64) {
    if (const int cc = known[device].load(std::memory_order_relaxed); cc != 0) return cc;
  }
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
    return 0;
  if (device < 64) known[device].store(major * 10 + minor, std::memory_order_relaxed);
  return major * 10 + minor;
}

// Heads of 33 to 64 attend as 64 (padded with zeros by the gather).
bool wgmma_runs(int head_dim) {
  return kHaveWgmma && padded_dim(head_dim) == 64 && device_compute_capability() == 90;
}

template <int kDim>
cudaError_t launch(const ref::DenseAttentionShape& s, const GatherParams& gather, const AttendParams& attend,
                   DType out_dtype, bool wgmma, cudaStream_t stream) {
  if (gather.q.data != nullptr || gather.k.data != nullptr || gather.v.data != nullptr) {
    const std::int64_t most_rows = std::int64_t(s.batch) * s.heads * std::max(s.q_len, s.kv_len);
    const int blocks =
        int(std::min<std::int64_t>((most_rows * (kDim / 8) + kGatherThreads - 1) / kGatherThreads, 4096));
    gather_kernel<kDim><<<dim3(unsigned(blocks), 3), kGatherThreads, 0, stream>>>(gather);
  }
  const unsigned grid = unsigned(std::int64_t(s.batch) * s.heads * attend.q_tiles);
  if constexpr (kHaveWgmma) {
    if (wgmma) return detail::dense::launch_attend_wgmma(attend, grid, out_dtype, stream);
  }
  if (out_dtype == DType::f32) attend_kernel<kDim, float><<<grid, kThreads, 0, stream>>>(attend);
  else attend_kernel<kDim, bf16><<<grid, kThreads, 0, stream>>>(attend);
  return cudaGetLastError();
}

}  // namespace

bool dense_attention_supports(int head_dim) { return head_dim >= 1 && head_dim <= 64; }

bool dense_attention_kernel_available(DenseAttentionKernel kernel, int head_dim) {
  if (!dense_attention_supports(head_dim)) return false;
  switch (kernel) {
    case DenseAttentionKernel::mma_sync: return true;
    case DenseAttentionKernel::wgmma: return wgmma_runs(head_dim);
    case DenseAttentionKernel::automatic: return true;
  }
  return false;
}

bool dense_attention_reads_in_place(const ref::DenseAttentionShape& shape, const DenseAttentionInput& input) {
  const ref::AttentionStrides& s = input.strides;
  return input.dtype == DType::bf16 && dense_attention_supports(shape.head_dim) &&
         shape.head_dim == padded_dim(shape.head_dim) && s.dim == 1 && s.batch % 8 == 0 && s.head % 8 == 0 &&
         s.token % 8 == 0 && aligned(input.data, 16);
}

std::size_t dense_attention_workspace_bytes(const ref::DenseAttentionShape& s) {
  return gathered_bytes(s, s.q_len) + 2 * gathered_bytes(s, s.kv_len);
}

cudaError_t dense_attention(const ref::DenseAttentionShape& shape, const DenseAttentionInput& q,
                            const DenseAttentionInput& k, const DenseAttentionInput& v, void* out, DType out_dtype,
                            const ref::AttentionStrides& out_strides, void* workspace, cudaStream_t stream,
                            DenseAttentionKernel kernel) {
  const auto input_dtype_ok = [](const DenseAttentionInput& x) {
    return x.dtype == DType::f32 || x.dtype == DType::bf16;
  };
  if (!dense_attention_supports(shape.head_dim) || shape.q_len < 1 || shape.kv_len < 1 || shape.batch < 1 ||
      shape.heads < 1 || (out_dtype != DType::f32 && out_dtype != DType::bf16) || !input_dtype_ok(q) ||
      !input_dtype_ok(k) || !input_dtype_ok(v) || workspace == nullptr)
    return cudaErrorInvalidValue;
  if (!dense_attention_kernel_available(kernel, shape.head_dim)) return cudaErrorNotSupported;
  const bool wgmma = kernel == DenseAttentionKernel::wgmma ||
                     (kernel == DenseAttentionKernel::automatic && wgmma_runs(shape.head_dim));
  const int dim = padded_dim(shape.head_dim);
  const std::int64_t rows = std::int64_t(shape.batch) * shape.heads * std::max(shape.q_len, shape.kv_len);
  const int q_tiles = (shape.q_len + kRows - 1) / kRows;
  if (rows * dim >= (std::int64_t(1) << 31) || std::int64_t(shape.batch) * shape.heads * q_tiles >= (std::int64_t(1) << 31))
    return cudaErrorInvalidValue;

  auto* base = static_cast<unsigned char*>(workspace);
  const std::size_t q_bytes = gathered_bytes(shape, shape.q_len), kv_bytes = gathered_bytes(shape, shape.kv_len);
  // Each operand: read in place, or gathered into its part of the workspace.
  const auto plan = [&](const DenseAttentionInput& x, int tokens, unsigned char* room, GatherSource& g, Rows& r) {
    if (dense_attention_reads_in_place(shape, x)) {
      r = Rows{static_cast<const bf16*>(x.data), x.strides.batch, x.strides.head, x.strides.token};
      return;
    }
    const ref::AttentionStrides& s = x.strides;
    const std::size_t bytes = x.dtype == DType::bf16 ? 2 : 4, per_vector = 16 / bytes;
    const bool rows_aligned = s.batch % std::int64_t(per_vector) == 0 && s.head % std::int64_t(per_vector) == 0 &&
                              s.token % std::int64_t(per_vector) == 0;
    auto* gathered = reinterpret_cast<bf16*>(room);
    g = GatherSource{x.data, x.dtype == DType::bf16, s, tokens, gathered, s.dim == 1 && rows_aligned && aligned(x.data, 16)};
    r = Rows{gathered, std::int64_t(shape.heads) * tokens * dim, std::int64_t(tokens) * dim, dim};
  };
  GatherParams gather;
  gather.batch = shape.batch;
  gather.heads = shape.heads;
  gather.head_dim = shape.head_dim;
  AttendParams attend;
  plan(q, shape.q_len, base, gather.q, attend.q);
  plan(k, shape.kv_len, base + q_bytes, gather.k, attend.k);
  plan(v, shape.kv_len, base + q_bytes + kv_bytes, gather.v, attend.v);
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
  return dim == 32 ? launch<32>(shape, gather, attend, out_dtype, false, stream)
                   : launch<64>(shape, gather, attend, out_dtype, wgmma, stream);
}

}  // namespace hostrun::cuda
