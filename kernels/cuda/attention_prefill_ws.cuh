// Prefill attention on Hopper with a producer warpgroup (sm_90a, head_dim
// 128): FlashAttention-3's warp specialization over the paged cache, 16-bit,
// int8 or int4 pages. Included only by attention_prefill_wgmma_*.cu and
// attention_prefill_ws_kv_*.cu.
//
// CTA = three warpgroups, 128 query rows (attention_prefill.cuh's rows: a
// (new token, q head) pair of the CTA's kv head):
//
//   warpgroup 0, producer: for each (query tile, kv head) of the persistent
//     grid's walk (WsWalk), the Q rows, then every K/V tile (64 positions,
//     128-byte swizzle) into a ring of ws_stages 16-bit buffers. A buffer
//     is reused once the consumers have released it.
//       16-bit pages: cp.async gathers from the pages into the ring.
//       int8 / int4 pages: cp.async gathers of the codes and (scale, zero)
//       words into ws_staging buffers of their own, which the producer then
//       dequantizes into the ring, so the consumers run the 16-bit loop
//       unchanged and the dequantization overlaps their products instead of
//       stalling them (the two-warpgroup kernel dequantizes between its
//       products: over int8 pages at 8k 189 against 236 TFLOP/s here, H100).
//   warpgroups 1 and 2, consumers: 64 query rows each, attention_prefill.cuh's
//     software-pipelined step (S of tile n + 1 and P V of tile n issued
//     together, softmax of n + 1 while P V runs).
//
// The two kernels differ in what the consumers wait for: here only for the
// buffer they read (a phase of its "full" barrier), never for a block-wide
// barrier, so copies run ahead of the products instead of between them.
//
// Handing a buffer over: wgmma reads shared memory through the async proxy,
// cp.async and ordinary stores write it through the generic one, so the
// writing thread must fence (fence.proxy.async) after its writes and before
// it signals. Over 16-bit pages a producer thread therefore publishes a
// buffer two copy groups late: cp.async.wait_group 2, fence, arrive on the
// buffer's "full" barrier, and all of them before it waits for the Q rows to
// be free. Two groups stay in flight a thread and the gather latency is
// hidden; at most four buffers are held (two by the consumers' step, two in
// flight), which is why ws_stages is 4: a producer waiting for buffer t to be
// free has published t - 3, all the consumers need to free it.
#pragma once

#include "cuda/attention_prefill.cuh"
#include "cuda/mbarrier.cuh"

namespace hostrun::cuda::detail {

constexpr int ws_stages = 4;
constexpr int ws_threads = 384;
// Quantized pages: code buffers, so that two tiles' gathers are in flight
// while the producer dequantizes a third.
constexpr int ws_staging = 3;
// setmaxnreg.inc takes only what the CTA's warpgroups released with .dec, so
// the split must fit what the launch allocates, 168 a thread at 384 threads
// (65,536 / 384 rounded down to 8), not the SM's file: past it the consumers
// wait for registers forever (a 64 / 224 split over quantized pages hung on
// the H100). 40 / 232 fits exactly. The dequantizing producer needs 56 over
// int4 pages; over int8 ones (16-byte (scale, zero) copies) it spilled 60
// bytes at 56, and 72 / 208 is the split where ptxas spills in neither
// warpgroup (64 / 216: 36 bytes, 80 / 200: 20).
template <int kKvBits>
constexpr int ws_producer_registers = kKvBits == 0 ? 40 : kKvBits == 8 ? 72 : 56;
template <int kKvBits>
constexpr int ws_consumer_registers = kKvBits == 0 ? 232 : kKvBits == 8 ? 208 : 224;
static_assert(128 * ws_producer_registers<0> + 256 * ws_consumer_registers<0> <= ws_threads * 168);
static_assert(128 * ws_producer_registers<8> + 256 * ws_consumer_registers<8> <= ws_threads * 168);
static_assert(128 * ws_producer_registers<4> + 256 * ws_consumer_registers<4> <= ws_threads * 168);

template <typename T, int kHeadDim>
using WsTiles = KvTileStream<T, kHeadDim, 0, prefill_block_n, 128, true, ws_stages, TileLayout::swizzled_128>;
// The producer's code buffers over quantized pages; dequantize() writes the
// ring's layout (the same rows and swizzle as WsTiles).
template <typename T, int kHeadDim, int kKvBits>
using WsStaging =
    KvTileStream<T, kHeadDim, kKvBits, prefill_block_n, 128, false, ws_staging, TileLayout::swizzled_128>;

// Shared memory: Q rows, the K/V ring, the code buffers (quantized pages),
// then the barriers.
template <typename T, int kHeadDim, int kKvBits>
struct WsLayout {
  static constexpr int kQBytes = 128 * smem_row<kHeadDim> * static_cast<int>(sizeof(T));
  static constexpr int kTilesBytes = WsTiles<T, kHeadDim>::kSmemBytes;
  static constexpr int kStagingBytes = kKvBits == 0 ? 0 : WsStaging<T, kHeadDim, kKvBits>::kSmemBytes;
  static constexpr int kBarriers = 2 * ws_stages + 2;  // full and empty a buffer; Q full and Q empty
  static constexpr int kBarriersOffset = kQBytes + kTilesBytes + kStagingBytes;
  static constexpr int kBytes = kBarriersOffset + kBarriers * 8;
  static_assert(kQBytes % 1024 == 0, "the swizzled ring starts 1024-byte aligned");
  static_assert(kTilesBytes % 16 == 0 && kStagingBytes % 16 == 0);
  static_assert(kBytes <= 227 * 1024, "an sm_90 CTA's shared memory");
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// The persistent grid's walk: a CTA an SM, each taking (query tile, kv head)
// pairs of the step round by round, longest first. Pairs are numbered tile *
// kv_heads + kv_head and walked from the last: a sequence's later query
// tiles see more keys, so the step's longest work starts first and its tail
// is short tiles (longest-processing-time order). In round r the G CTAs take
// the r-th G of them, CTA b the b-th in even rounds and the (G - 1 - b)-th in
// odd ones, which evens the CTAs' sums. Measured on the H100 against the
// hardware grid's order (kernels/cuda/NOTES.md): +29% at 2k tokens, +4% at
// 8k, +6% for a 2k chunk over 6k cached.
struct WsWalk {
  int total = 0;  // pairs in the step
  int round = 0;
  int taken = 0;  // pairs before this one in the walk's order
  __device__ __forceinline__ explicit WsWalk(const AttentionKernelParams& p)
      : total(p.prefill_tile_start[p.num_sequences] * p.kv_heads), taken(static_cast<int>(blockIdx.x)) {}
  __device__ __forceinline__ bool valid() const { return taken < total; }
  __device__ __forceinline__ void advance() {
    ++round;
    const int g = static_cast<int>(gridDim.x), b = static_cast<int>(blockIdx.x);
    taken = round * g + ((round & 1) ? g - 1 - b : b);
  }
  __device__ __forceinline__ int pair() const { return total - 1 - taken; }
  __device__ __forceinline__ int item(const AttentionKernelParams& p) const { return pair() / p.kv_heads; }
  __device__ __forceinline__ int kv_head(const AttentionKernelParams& p) const { return pair() % p.kv_heads; }
};

// The producer's copy groups and the barriers they will complete: a barrier
// is arrived on once its group and the one after it have been committed and
// the group two back has landed.
struct WsPublisher {
  std::uint64_t* oldest = nullptr;
  std::uint64_t* newer = nullptr;
  __device__ __forceinline__ void committed(std::uint64_t* barrier) {
    if (oldest != nullptr) {
      cp_async_wait<2>();
      fence_shared_to_async_proxy();
      mbarrier_arrive(oldest);
    }
    oldest = newer;
    newer = barrier;
  }
  __device__ __forceinline__ void flush() {
    cp_async_wait<0>();
    fence_shared_to_async_proxy();
    if (oldest != nullptr) mbarrier_arrive(oldest);
    if (newer != nullptr) mbarrier_arrive(newer);
    oldest = newer = nullptr;
  }
};

template <typename T, int kHeadDim>
__device__ __forceinline__ void ws_produce(const AttentionKernelParams& p, T* q_tile, const WsTiles<T, kHeadDim>& tiles,
                                           std::uint64_t* full, std::uint64_t* empty, std::uint64_t* q_full,
                                           std::uint64_t* q_empty) {
  constexpr int BN = prefill_block_n;
  const T* q = static_cast<const T*>(p.q);
  const int thread = threadIdx.x;  // 0..127: warpgroup 0
  WsPublisher publisher;
  std::uint32_t buffer_uses = 0;  // K/V buffers filled so far: buffer uses % ws_stages, round uses / ws_stages
  std::uint32_t query_tiles = 0;
  for (WsWalk walk(p); walk.valid(); walk.advance(), ++query_tiles) {
    const PrefillQueryTile tile = locate_query_tile<128>(p, walk.item(p));
    const int kv_head = walk.kv_head(p);
    // The consumers free the Q rows only after reading the last ones, which
    // may not be published yet (a one-tile query tile): publish everything
    // before waiting for them.
    publisher.flush();
    mbarrier_wait(q_empty, (query_tiles & 1) ^ 1);
    copy_query_tile<T, kHeadDim, 128, 128>(p, tile, kv_head, q, q_tile, thread);
    cp_async_commit();
    publisher.committed(q_full);
    const int limit = tile.max_position + 1;
    TileWalk<BN> pages(p, 0);
    for (int n = 0; n < tile.num_tiles; ++n, ++buffer_uses) {
      const int buffer = static_cast<int>(buffer_uses % ws_stages);
      mbarrier_wait(&empty[buffer], ((buffer_uses / ws_stages) & 1) ^ 1);
      tiles.template copy_swizzled_rows<true, true>(buffer, buffer, p, tile.block_table, kv_head, n * BN, limit,
                                                    pages.next(p, tile.block_table));
      cp_async_commit();
      publisher.committed(&full[buffer]);
    }
  }
  publisher.flush();
}

// The producer warpgroup's own barrier (barrier 0 is __syncthreads').
__device__ __forceinline__ void producer_barrier() { asm volatile("bar.sync 1, 128;\n" ::: "memory"); }

// The producer over int8 / int4 pages. Tile uses are numbered across query
// tiles; use u's codes go to code buffer u % ws_staging, its 16-bit rows to
// ring buffer u % ws_stages. Issuing use u needs use u - ws_staging
// dequantized by every producer thread (its code buffer is reused), which the
// barrier in retiring use u - ws_staging + 1 guarantees: each thread reaches
// that barrier only after finishing the dequantization before it. The Q rows
// travel in the copy group of their query tile's first use, and are published
// with it.
template <typename T, int kHeadDim, int kKvBits>
__device__ __forceinline__ void ws_produce_quantized(const AttentionKernelParams& p, T* q_tile,
                                                     const WsTiles<T, kHeadDim>& tiles,
                                                     const WsStaging<T, kHeadDim, kKvBits>& staging,
                                                     std::uint64_t* full, std::uint64_t* empty,
                                                     std::uint64_t* q_full, std::uint64_t* q_empty) {
  constexpr int BN = prefill_block_n;
  const T* q = static_cast<const T*>(p.q);
  const int thread = threadIdx.x;  // 0..127: warpgroup 0
  std::uint32_t issued = 0;        // uses whose codes were issued
  std::uint32_t retired = 0;       // uses dequantized into the ring and published
  std::uint32_t q_in_group = 0;    // bit b: the use in code buffer b carries its query tile's Q rows
  // Dequantizes and publishes the oldest issued use; kPending: the copy
  // groups that may stay in flight (newer than it).
  const auto retire = [&]<int kPending>() {
    cp_async_wait<kPending>();
    producer_barrier();  // every thread's copies of it have landed
    const int code_buffer = static_cast<int>(retired % ws_staging);
    const int buffer = static_cast<int>(retired % ws_stages);
    mbarrier_wait(&empty[buffer], ((retired / ws_stages) & 1) ^ 1);
    staging.dequantize(code_buffer, tiles.k(buffer), tiles.v(buffer), thread);
    fence_shared_to_async_proxy();
    if ((q_in_group >> code_buffer) & 1) {
      q_in_group &= ~(1u << code_buffer);
      mbarrier_arrive(q_full);
    }
    mbarrier_arrive(&full[buffer]);
    ++retired;
  };
  std::uint32_t query_tiles = 0;
  for (WsWalk walk(p); walk.valid(); walk.advance(), ++query_tiles) {
    const PrefillQueryTile tile = locate_query_tile<128>(p, walk.item(p));
    const int kv_head = walk.kv_head(p);
    // The consumers free the Q rows once they have read them, which needs the
    // previous query tile's first use published (a short query tile's may
    // still be pending).
    while (q_in_group != 0) retire.template operator()<0>();
    mbarrier_wait(q_empty, (query_tiles & 1) ^ 1);
    const int limit = tile.max_position + 1;
    TileWalk<BN> pages(p, 0);
    for (int n = 0; n < tile.num_tiles; ++n) {
      if (issued - retired == ws_staging - 1) retire.template operator()<ws_staging - 2>();
      const int code_buffer = static_cast<int>(issued % ws_staging);
      if (n == 0) {
        copy_query_tile<T, kHeadDim, 128, 128>(p, tile, kv_head, q, q_tile, thread);
        q_in_group |= 1u << code_buffer;
      }
      staging.issue(code_buffer, p, tile.block_table, kv_head, n * BN, limit, pages.next(p, tile.block_table));
      cp_async_commit();
      ++issued;
    }
  }
  while (retired != issued) retire.template operator()<0>();
}

// kQuantizedPages: the producer dequantizes, and binds (pipelined_step's kSkipSettledRescale).
template <typename T, int kHeadDim, bool kQuantizedPages>
__device__ __forceinline__ void ws_consume(const AttentionKernelParams& p, const T* q_tile,
                                           const WsTiles<T, kHeadDim>& tiles, std::uint64_t* full,
                                           std::uint64_t* empty, std::uint64_t* q_full, std::uint64_t* q_empty) {
  constexpr int BN = prefill_block_n;
  const int warp = threadIdx.x / 32 - 4;  // 0..7 over the two consumer warpgroups
  const int lane = threadIdx.x % 32;
  std::uint32_t buffer_uses = 0;
  std::uint32_t query_tiles = 0;
  for (WsWalk walk(p); walk.valid(); walk.advance(), ++query_tiles) {
    const PrefillQueryTile tile = locate_query_tile<128>(p, walk.item(p));
    const int kv_head = walk.kv_head(p);
    const RowPositions positions = row_positions(tile, warp, lane);
    const auto masked = [&](int key, bool hi) { return positions.masked(key, hi); };
    const auto needs_mask = [&](int n) { return n * BN + BN - 1 > tile.min_position; };
    const auto wait_full = [&](std::uint32_t use) {
      mbarrier_wait(&full[use % ws_stages], (use / ws_stages) & 1);
    };

    mbarrier_wait(q_full, query_tiles & 1);
    std::uint32_t q_frag[kHeadDim / 16][4];
    load_q_fragments<kHeadDim>(q_frag, q_tile, warp, lane);
    mbarrier_arrive(q_empty);

    float o[kHeadDim / 8][4];
#pragma unroll
    for (int d = 0; d < kHeadDim / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    RowSoftmax softmax;
    float s[BN / 8][4];
    std::uint32_t p_frag[BN / 16][4];

    // Tile 0's scores and softmax; then each step reads buffer n + 1's K and
    // buffer n's V and releases buffer n; the last tile's P V releases it.
    wait_full(buffer_uses);
    pipelined_first_scores<T, kHeadDim, BN>(q_frag, tiles.k(static_cast<int>(buffer_uses % ws_stages)), p.scale_log2,
                                            needs_mask(0), masked, s, p_frag, softmax);
    for (int n = 0; n + 1 < tile.num_tiles; ++n, ++buffer_uses) {
      const int current = static_cast<int>(buffer_uses % ws_stages);
      const int next = static_cast<int>((buffer_uses + 1) % ws_stages);
      wait_full(buffer_uses + 1);
      const bool mask_next = needs_mask(n + 1);
      pipelined_step<T, kHeadDim, BN, kQuantizedPages>(q_frag, tiles.k(next), tiles.v(current), (n + 1) * BN,
                                                       p.scale_log2, mask_next, masked, s, p_frag, o, softmax);
      mbarrier_arrive(&empty[current]);
    }
    const int last = static_cast<int>(buffer_uses % ws_stages);
    pipelined_last_values<T, kHeadDim, BN>(p_frag, tiles.v(last), o);
    mbarrier_arrive(&empty[last]);
    ++buffer_uses;
    store_output_rows<T, kHeadDim>(p, tile, kv_head, positions.row_lo, o, softmax);
  }
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <typename T, int kHeadDim, int kKvBits>
__global__ void __launch_bounds__(ws_threads, 1) prefill_ws_kernel(const AttentionKernelParams p) {
  static_assert(kHeadDim == 128, "consumers hold m64n128 accumulators");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  allow_next_grid_to_launch();
  using Layout = WsLayout<T, kHeadDim, kKvBits>;
  extern __shared__ __align__(1024) unsigned char smem[];  // the prefill kernels' declaration: one symbol a file
  T* q_tile = reinterpret_cast<T*>(smem);
  const WsTiles<T, kHeadDim> tiles{smem + Layout::kQBytes};
  auto* full = reinterpret_cast<std::uint64_t*>(smem + Layout::kBarriersOffset);
  std::uint64_t* empty = full + ws_stages;
  std::uint64_t* q_full = empty + ws_stages;
  std::uint64_t* q_empty = q_full + 1;
  if (threadIdx.x == 0) {
    for (int i = 0; i < ws_stages; ++i) {
      mbarrier_init(&full[i], 128);   // every producer thread, once its writes have landed
      mbarrier_init(&empty[i], 256);  // every consumer thread, once its products have read the buffer
    }
    mbarrier_init(q_full, 128);
    mbarrier_init(q_empty, 256);
    mbarrier_init_fence();
  }
  __syncthreads();
  if (threadIdx.x < 128) {
    setmaxnreg_dec<ws_producer_registers<kKvBits>>();
    if constexpr (kKvBits == 0) {
      ws_produce<T, kHeadDim>(p, q_tile, tiles, full, empty, q_full, q_empty);
    } else {
      const WsStaging<T, kHeadDim, kKvBits> staging{smem + Layout::kQBytes + Layout::kTilesBytes};
      ws_produce_quantized<T, kHeadDim, kKvBits>(p, q_tile, tiles, staging, full, empty, q_full, q_empty);
    }
  } else {
    setmaxnreg_inc<ws_consumer_registers<kKvBits>>();
    ws_consume<T, kHeadDim, kKvBits != 0>(p, q_tile, tiles, full, empty, q_full, q_empty);
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // an instance built without sm_90a; the plan never picks it
#endif
}

// ctas: the persistent grid, at most one CTA an SM (one fits an SM).
template <typename T, int kHeadDim, int kKvBits>
cudaError_t launch_prefill_ws(const AttentionKernelParams& params, int ctas, cudaStream_t stream) {
  constexpr int smem = WsLayout<T, kHeadDim, kKvBits>::kBytes;
  if (const cudaError_t e = allow_dynamic_smem<prefill_ws_kernel<T, kHeadDim, kKvBits>>(smem); e != cudaSuccess)
    return e;
  const dim3 grid(ctas);
  prefill_ws_kernel<T, kHeadDim, kKvBits><<<grid, ws_threads, smem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace hostrun::cuda::detail
