// Internal to kernels/cuda: what the attention kernels share — their
// parameter block, the tensor-core and async-copy wrappers (inline PTX), and
// the paged K/V tile loader.
//
// Why mma.sync (m16n8k16) through inline PTX rather than WMMA or wgmma:
//  - WMMA hides the accumulator layout, and FlashAttention's online softmax
//    needs it: the S = QK^T accumulators of two n8 tiles are, register for
//    register, the A operand of the P.V product, so P never touches shared
//    memory. With mma.sync the layout is documented (PTX ISA, "Matrix fragments
//    for mma.m16n8k16") and that reuse is free.
//  - wgmma (sm_90a) is faster for large GEMMs but wants 64-row warpgroup tiles,
//    TMA-friendly dense layouts and the sm_90a target; paged K/V gathers rows
//    from scattered pages, decode tiles have <= 16 useful rows, and attention at
//    these sizes is bound by K/V bandwidth, not by mma issue rate. mma.sync
//    keeps one code path for sm_80..sm_90.
#pragma once

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"

namespace hostrun::cuda::detail {

struct AttentionKernelParams {
  const void* q = nullptr;
  std::int64_t q_row_stride = 0;
  void* out = nullptr;
  std::int64_t out_row_stride = 0;
  const void* k_pages = nullptr;
  const void* v_pages = nullptr;
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

template <typename T, int kHeadDim>
cudaError_t launch_decode_split(const AttentionKernelParams& params, int num_sequences, cudaStream_t stream);
template <typename T, int kHeadDim>
cudaError_t launch_prefill(const AttentionKernelParams& params, int grid_tiles, cudaStream_t stream);

// Raises a kernel's dynamic shared-memory limit once per device (the call
// costs microseconds of host time, too much for every decode launch).
template <auto kKernel>
cudaError_t allow_dynamic_smem(int bytes) {
  static std::atomic<std::uint64_t> done_devices{0};
  int device = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const std::uint64_t bit = device < 64 ? (1ull << device) : 0;
  if (bit != 0 && (done_devices.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess) done_devices.fetch_or(bit, std::memory_order_acq_rel);
  return e;
}

// ---- PTX wrappers -------------------------------------------------------

__device__ __forceinline__ std::uint32_t smem_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses registers; when !valid the
// destination is zero-filled (src-size 0) and nothing is read.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem)));
}

// d += a * b, 16x8x16, f32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                          std::uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two f32 -> one register of two 16-bit values, `lo` in the low half (the
// lower column of an mma fragment).
template <typename T>
__device__ __forceinline__ std::uint32_t pack2(float lo, float hi) {
  union {
    T halves[2];
    std::uint32_t word;
  } u;
  u.halves[0] = from_f32<T>(lo);
  u.halves[1] = from_f32<T>(hi);
  return u.word;
}

// ---- shared-memory tiles ------------------------------------------------

// Rows are padded by 16 bytes: with head_dim*2 bytes per row (a multiple of
// 128) the 8 row addresses of one ldmatrix phase would all hit the same four
// banks; the pad shifts each row by four banks, so the 8 rows cover all 32.
template <int kHeadDim>
inline constexpr int smem_row = kHeadDim + 8;  // elements

// Issues the cp.async copies of positions [first, first + kRows) of one
// sequence's K and V (one kv head) into k_tile / v_tile. Positions >= limit
// are zero-filled: their probabilities are 0, but 0 * garbage could be NaN.
template <typename T, int kHeadDim, int kRows, int kThreads>
__device__ __forceinline__ void load_kv_tile(T* k_tile, T* v_tile, const AttentionKernelParams& p,
                                             const std::int32_t* block_table, int kv_head, int first, int limit) {
  constexpr int chunks_per_row = kHeadDim / 8;  // 16-byte chunks
  constexpr int rows_per_pass = kThreads / chunks_per_row;
  static_assert(kThreads % chunks_per_row == 0 && kRows % rows_per_pass == 0);
  const int chunk = threadIdx.x % chunks_per_row;
  const T* k_pages = static_cast<const T*>(p.k_pages);
  const T* v_pages = static_cast<const T*>(p.v_pages);
#pragma unroll
  for (int pass = 0; pass < kRows / rows_per_pass; ++pass) {
    const int row = pass * rows_per_pass + threadIdx.x / chunks_per_row;
    const int position = first + row;
    const bool valid = position < limit;
    std::int64_t element = 0;
    if (valid) {
      const int block = block_table[position / p.block_tokens];
      const std::int64_t slot = static_cast<std::int64_t>(block) * p.block_tokens + position % p.block_tokens;
      element = (slot * p.kv_heads + kv_head) * kHeadDim + chunk * 8;
    }
    cp_async_16(k_tile + row * smem_row<kHeadDim> + chunk * 8, k_pages + element, valid);
    cp_async_16(v_tile + row * smem_row<kHeadDim> + chunk * 8, v_pages + element, valid);
  }
}

}  // namespace hostrun::cuda::detail
