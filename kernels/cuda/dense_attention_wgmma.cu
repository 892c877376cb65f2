// Dense attention's attend step on Hopper's warpgroup MMA (sm_90a only; built
// in hostrun_kernels_cuda_sm90a and picked by dense_attention.cu on compute
// capability 9.0 for heads of 33 to 64, attended as 64).
//
// CTA = two warpgroups, the same 128 query rows of one (batch, head) as the
// mma.sync kernel, warpgroup g owning rows 64g .. 64g + 63. K and V tiles of
// 64 keys are copied by cp.async into wgmma's 128-byte swizzle (one column
// block: a head of 64 is one 128-byte row) and attended with the prefill's
// software pipeline (attention_tile_wgmma.cuh): S(n + 1) = Q K(n + 1)^T and
// O += P(n) V(n) in flight together while the warps run tile n + 1's
// softmax. K is fetched two tiles ahead and V one, two buffers each.
//
// Why: the mma.sync kernel issues every product from one warp's registers and
// every K/V fragment by ldmatrix, and ran CLIP ViT-L's attention at ~110
// TFLOP/s at batch 8 (H100), a quarter of the encoder's time at ~870 images/s;
// a warpgroup reads B straight from shared memory and overlaps the softmax
// with the tensor cores (kernels/cuda/NOTES.md, dense attention on wgmma).
//
// Keys past a multiple of 64 (CLIP's 577 = 9 x 64 + 1): a last tile of up to
// 16 keys is attended after the pipeline as one m64n16k16 step, not as a
// masked 64-key one; one of 17 to 63 keys is the pipeline's last, masked.
// Query rows come in 64s per warpgroup; one whose rows all lie past the end
// copies and meets the barriers, nothing else.
#include "cuda/attention_tile_wgmma.cuh"
#include "cuda/common.cuh"
#include "cuda/dense_attention.cuh"

namespace hostrun::cuda::detail::dense {

namespace {

constexpr int kThreads = 256;  // two warpgroups
constexpr int kDim = 64;
constexpr int kShortKeys = 16;                      // the last tile's step when it holds at most this many keys
constexpr int kQRow = smem_row<kDim>;               // padded query rows, read by ldmatrix
constexpr int kQBytes = kRows * kQRow * 2;          // 18,432
constexpr int kTileElements = kKeys * kDim;         // one K or V tile: 64 rows of 128 bytes, swizzled
constexpr int kSmemBytes = kQBytes + 4 * kTileElements * 2;  // Q, K[2], V[2]: 51,200
static_assert(kQBytes % 1024 == 0, "swizzled tiles start 1024-byte aligned");

// `count` keys from `first` into a swizzled tile: row r's 16-byte piece c at
// piece c ^ (r % 8). Rows past kv_len are zero: P is 0 there, but 0 times a
// stale NaN would not be.
__device__ __forceinline__ void load_swizzled(bf16* tile, const bf16* src, std::int64_t token, int first, int count,
                                              int kv_len) {
  for (int e = threadIdx.x; e < count * 8; e += kThreads) {
    const int r = e / 8, c = e % 8, t = first + r;
    const bool valid = t < kv_len;
    cp_async_16(tile + r * kDim + (c ^ (r % 8)) * 8, src + (valid ? t : 0) * token + c * 8, valid);
  }
}

template <typename Out>
__global__ void __launch_bounds__(kThreads, 2) attend_wgmma_kernel(const AttendParams p) {
  extern __shared__ __align__(1024) unsigned char smem[];
  bf16* const q_rows = reinterpret_cast<bf16*>(smem);  // [kRows][kQRow]
  bf16* const k_tiles = q_rows + kRows * kQRow;        // [2][kTileElements]
  bf16* const v_tiles = k_tiles + 2 * kTileElements;   // [2][kTileElements]
  const auto k_tile = [&](int buffer) { return k_tiles + buffer * kTileElements; };
  const auto v_tile = [&](int buffer) { return v_tiles + buffer * kTileElements; };

  const int bh = int(blockIdx.x) / p.q_tiles, row0 = (int(blockIdx.x) % p.q_tiles) * kRows;
  const int b = bh / p.heads, h = bh % p.heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kv_len = p.kv_len;
  const bf16* k = p.k.of(b, h);
  const bf16* v = p.v.of(b, h);

  // Tiles 0 .. wide - 1 take 64-key steps (the last masked when partial); a
  // tile of up to 16 keys after them takes the short step.
  const int rest = kv_len % kKeys;
  const bool short_tail = rest != 0 && rest <= kShortKeys;
  const int wide = kv_len / kKeys + (rest > kShortKeys ? 1 : 0);
  const int tiles = wide + (short_tail ? 1 : 0);
  const auto keys_of = [&](int tile) { return tile < wide ? kKeys : kShortKeys; };
  const auto fetch_k = [&](int buffer, int tile) {
    load_swizzled(k_tile(buffer), k, p.k.token, tile * kKeys, keys_of(tile), kv_len);
  };
  const auto fetch_v = [&](int buffer, int tile) {
    load_swizzled(v_tile(buffer), v, p.v.token, tile * kKeys, keys_of(tile), kv_len);
  };
  const auto needs_mask = [&](int tile) { return (tile + 1) * kKeys > kv_len; };
  const auto past_end = [&](int key, bool) { return key >= kv_len; };

  load_rows<kDim, kRows, kThreads>(q_rows, p.q.of(b, h), p.q.token, row0, p.q_len);
  fetch_k(0, 0);
  fetch_v(0, 0);
  cp_async_commit();
  if (tiles > 1) fetch_k(1, 1);
  cp_async_commit();
  cp_async_wait<1>();
  fence_shared_to_async_proxy();
  __syncthreads();
  std::uint32_t q_frag[kDim / 16][4];
#pragma unroll
  for (int kk = 0; kk < kDim / 16; ++kk)
    ldmatrix_x4(q_frag[kk], q_rows + (warp * 16 + lane % 16) * kQRow + kk * 16 + (lane / 16) * 8);

  const bool has_rows = row0 + (warp / 4) * 64 < p.q_len;  // uniform across a warpgroup, as wgmma needs
  float o[kDim / 8][4];
#pragma unroll
  for (int d = 0; d < kDim / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  RowSoftmax softmax;

  if (wide > 0) {
    float s[kKeys / 8][4];
    std::uint32_t p_frag[kKeys / 16][4];
    if (has_rows)
      pipelined_first_scores<bf16, kDim, kKeys>(q_frag, k_tile(0), p.scale_log2, needs_mask(0), past_end, s, p_frag,
                                                softmax);
    for (int n = 0; n + 1 < wide; ++n) {
      // Every warp is past S(n) and P(n - 1) V(n - 1): their buffers refill.
      cp_async_wait<0>();
      fence_shared_to_async_proxy();
      __syncthreads();
      if (n + 2 < tiles) fetch_k(n & 1, n + 2);
      fetch_v((n + 1) & 1, n + 1);
      cp_async_commit();
      if (has_rows)
        pipelined_step<bf16, kDim, kKeys>(q_frag, k_tile((n + 1) & 1), v_tile(n & 1), (n + 1) * kKeys, p.scale_log2,
                                          needs_mask(n + 1), past_end, s, p_frag, o, softmax);
    }
    cp_async_wait<0>();
    fence_shared_to_async_proxy();
    __syncthreads();
    // The short tile's V into the buffer tile wide - 2's left, while the
    // last wide tile's P V runs (its K came two tiles ahead).
    if (short_tail) fetch_v(wide & 1, wide);
    cp_async_commit();
    if (has_rows) pipelined_last_values<bf16, kDim, kKeys>(p_frag, v_tile((wide - 1) & 1), o);
  }
  if (short_tail) {
    cp_async_wait<0>();
    fence_shared_to_async_proxy();
    __syncthreads();
    if (has_rows)
      attend_tile_wgmma<bf16, kDim, kShortKeys>(q_frag, k_tile(wide & 1), v_tile(wide & 1), wide * kKeys,
                                                p.scale_log2, rest < kShortKeys, past_end, o, softmax);
  }
  if (!has_rows) return;
  store_rows<kDim, Out>(p, b, h, row0 + warp * 16, o, softmax);
}

template <typename Out>
cudaError_t launch(const AttendParams& p, unsigned grid, cudaStream_t stream) {
  if (const cudaError_t e = allow_dynamic_smem<attend_wgmma_kernel<Out>>(kSmemBytes); e != cudaSuccess) return e;
  attend_wgmma_kernel<Out><<<grid, kThreads, kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_attend_wgmma(const AttendParams& p, unsigned grid, DType out_dtype, cudaStream_t stream) {
  return out_dtype == DType::f32 ? launch<float>(p, grid, stream) : launch<bf16>(p, grid, stream);
}

}  // namespace hostrun::cuda::detail::dense
