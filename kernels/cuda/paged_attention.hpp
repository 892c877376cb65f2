// Causal attention over the paged KV cache on the GPU (twin of
// ref/paged_attention.hpp), GQA-aware, for mixed batches of prefill chunks
// (with a cached prefix) and decode tokens:
//
//   new token j of sequence i at position p = cached_i + j, q head h,
//   kv head g = h / group:
//     out[t, h] = softmax_s(scale * q[t, h] . K_i[s, g]) . V_i[s, g],  s = 0 .. p
//
//   q, out  [num_tokens, q_heads, head_dim] rows (row strides given, so q can
//           be read straight out of the fused QKV buffer)   bf16 / f16
//   pools   [num_blocks, block_tokens, kv_heads, head_dim]   same dtype, or
//           int8 / int4 blocks (kv_bits 8 / 4, ref::KvQuantBlockLayout),
//           dequantized tile by tile in shared memory (attention_common.cuh)
//
// Two kernels (README.md has the design):
//   decode_split  sequences with exactly one new token. grid (splits, kv_heads,
//                 sequences): each CTA owns one (sequence, kv head) and a chunk
//                 of split_tokens positions, all `group` (<= 8) q heads of the
//                 kv head as the 8 columns of m16n8k16 tiles whose rows are K
//                 positions and V dims (S^T = K Q^T, O^T = V^T P^T), so each
//                 K/V row is read once per group. A chunk's partial (normalised output, log2
//                 sum-exp) goes to the workspace and decode_reduce merges the
//                 chunks; a sequence that fits one chunk is written directly.
//   prefill       sequences with > 1 new token (and every sequence when group
//                 > 8). grid (q tiles, kv_heads, sequences): 64 rows per CTA,
//                 a row being a (token, q head of the group) pair, FA2-style
//                 online softmax over 64-position K/V tiles, causal mask only
//                 on the tiles that cross the diagonal.
// Both use mma.sync.m16n8k16 (f32 accumulate) with ldmatrix from padded
// shared memory and cp.async double buffering of the K/V pages; on compute
// capability 9.0 prefill at head_dim 128 runs on wgmma over most page
// formats (PrefillKernelChoice).
//
// Plan/launch split (FlashInfer style): plan_paged_attention() turns the
// host-known sizes into an AttentionPlan (which kernels, split count, grid,
// workspace size); paged_attention() runs it. plan.describe() says which
// kernel variants ran, for logs and tests. A plan made from an upper bound of
// max_context_len (and num_sequences) stays valid for smaller steps, so a CUDA
// graph can be captured once per batch bucket.
#pragma once

#include <cstddef>
#include <string>

#include "cuda/dtype.hpp"

namespace hostrun::cuda {

// One layer's K/V pools, on the device.
struct PagedKvPools {
  const void* k_pages = nullptr;
  const void* v_pages = nullptr;
  DType dtype = DType::bf16;  // of q and out, and of the pages when kv_bits == 0
  int num_blocks = 0;
  int block_tokens = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int kv_bits = 0;  // 0: pages of dtype; 8 or 4: quantized blocks (kv_quant.hpp)
};

// The step's index arrays, on the device (same meaning as ref::PagedKvStep and
// the SDK's PagedKvBatch; context_lens include this step's tokens, which must
// already be written).
struct PagedAttentionBatch {
  int num_sequences = 0;
  const std::int32_t* query_start = nullptr;   // [num_sequences + 1]
  const std::int32_t* context_lens = nullptr;  // [num_sequences]
  const std::int32_t* block_tables = nullptr;  // [num_sequences * max_blocks_per_sequence]
  int max_blocks_per_sequence = 0;
};

// Which prefill kernel a plan runs. automatic picks what measured fastest
// (--bench-prefill, docs/cuda.md): at head_dim 128 on compute capability 9.0
// (with the sm_90a objects built), the warp-specialized wgmma kernel (a
// producer warpgroup copying K/V, and dequantizing int8 / int4 pages, for two
// consumer warpgroups) from 512 context positions on (paged_attention.cu,
// ws_min_context), over every page format, and below that wgmma with 128
// query rows a CTA (two warpgroups); mma.sync with 128 rows on 9.0 without
// wgmma and with 64 rows elsewhere (head_dim 64, other devices: not measured
// at 128). mma_sync is automatic without wgmma (kv_cuda's wgmma_prefill =
// false); the rest force one form (tests, benches) and fail to plan where it
// cannot run.
enum class PrefillKernelChoice : std::uint8_t { automatic, mma_sync, mma_sync_64, mma_sync_128, wgmma_128, wgmma_ws };

// What the plan needs to know, all of it known on the host before the step.
struct AttentionProblem {
  DType dtype = DType::bf16;
  int head_dim = 128;  // 64 or 128
  int q_heads = 0;
  int kv_heads = 0;
  int num_sequences = 0;     // upper bound is fine
  int max_query_len = 1;     // longest new-token chunk of the step (1 = all decode)
  int max_context_len = 0;   // longest context (cached + new), upper bound is fine
  int max_tokens = 0;        // new tokens of the whole step, upper bound is fine; 0: unknown
  int num_sms = 132;         // cudaDevAttrMultiProcessorCount
  int force_splits = 0;      // > 0: exactly this many decode chunks (tests); 0: automatic
  int kv_bits = 0;           // the pools' format: 0 (dtype), 8 or 4
  // The device's compute capability, major * 10 + minor: the prefill kernel
  // depends on it (PrefillKernelChoice). 0: unknown.
  int compute_capability = 0;
  PrefillKernelChoice prefill_kernel = PrefillKernelChoice::automatic;
};

enum class AttentionKernel : std::uint8_t { decode_split, prefill };

// One kernel variant, as chosen by the plan; prints itself.
struct AttentionKernelDesc {
  AttentionKernel kind = AttentionKernel::prefill;
  DType dtype = DType::bf16;
  int head_dim = 0;
  int group = 0;        // q heads per kv head
  int block_m = 0;      // query rows per CTA tile
  int block_n = 0;      // K/V positions per shared-memory stage
  int warps = 0;
  int splits = 1;       // decode: chunks per sequence
  int split_tokens = 0; // decode: positions per chunk
  int kv_bits = 0;      // pages read: 0 (dtype), 8 or 4
  bool wgmma = false;   // prefill: warpgroup MMA (sm_90a) instead of mma.sync
  bool warp_specialized = false;  // prefill, wgmma: a producer warpgroup beside the two that multiply
  std::string to_string() const;
};

struct AttentionPlan {
  AttentionProblem problem;
  bool run_decode = false;   // decode_split (+ decode_reduce when splits > 1)
  bool run_prefill = false;  // prefill (also takes decode tokens when !run_decode)
  AttentionKernelDesc decode;
  AttentionKernelDesc prefill;
  int prefill_q_tiles = 0;          // grid.x of prefill: a bound on the step's 64-row query tiles
  std::size_t workspace_bytes = 0;  // decode partials (when split) + prefill's tile schedule
  std::size_t prefill_schedule_offset = 0;  // where in the workspace the schedule starts
  bool valid = false;
  std::string error;  // why !valid
  std::string describe() const;
};

AttentionPlan plan_paged_attention(const AttentionProblem& problem);

// A second stream for a mixed step's prefill kernels, so they run beside
// decode_split instead of after it: decode streams K/V (bandwidth-bound),
// prefill multiplies (tensor-core-bound), and a short prompt's prefill alone
// fills a few SMs for tens of microseconds. `fork` and `join` are events the
// caller owns (cudaEventDisableTiming); the call records `fork` on the main
// stream, makes `side` wait for it, and makes the main stream wait for
// `join` after both kernels, so to the caller the main stream is ordered as
// before. Legal under CUDA graph capture (the side stream joins the capture).
struct SideStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t fork = nullptr;
  cudaEvent_t join = nullptr;
};

// q_row_stride / out_row_stride: elements between consecutive tokens' rows
// (q_heads * head_dim when packed). workspace: plan.workspace_bytes of device
// memory, 256-byte aligned (may be null when the size is 0). Never allocates,
// never synchronizes. cudaErrorInvalidValue if the plan is invalid or does not
// match the pools. `side` (may be null): where a plan that runs both kernels
// runs prefill.
cudaError_t paged_attention(const AttentionPlan& plan, const PagedKvPools& pools, const PagedAttentionBatch& batch,
                            const void* q, std::int64_t q_row_stride, float softmax_scale, void* out,
                            std::int64_t out_row_stride, void* workspace, std::size_t workspace_bytes,
                            cudaStream_t stream, const SideStream* side = nullptr);

}  // namespace hostrun::cuda
