#include <algorithm>
#include <cstdio>

#include "cuda/attention_common.cuh"
#include "cuda/kv_quant.hpp"
#include "cuda/paged_attention.hpp"

namespace hostrun::cuda {

namespace {

constexpr int decode_block_n = 64;    // attention_decode.cuh
constexpr int prefill_block_n = 64;
constexpr int max_decode_group = 8;   // q heads in the decode kernel's 8 mma columns (attention_decode.cuh);
                                      // larger groups' decode tokens go through the prefill kernel
// Shortest chunk of a split decode: one K/V tile. A small batch has too few
// (sequence, kv head) CTAs to fill the GPU, and its time is one CTA's walk
// over the whole context; cutting that walk into one-tile chunks spreads it
// over the SMs for one extra merge launch (batch 1, 8 kv heads, 384 positions:
// 48 CTAs instead of 16). Large batches get one split anyway.
constexpr int min_split_tokens = 64;
constexpr int max_splits = 128;
// The warp-specialized wgmma prefill from this context on, over every page
// format. On the H100, persistent and longest first, against the best grid
// kernel of the format (kernels/cuda/NOTES.md): 16-bit pages +8% at 8k
// positions, +7% at 2k after 6k cached, +29% at 2k, +6% at 512; int8 +12% /
// +16% / +36% / +11%, int4 +54% / +58% / +70% / +25%. Shorter was not
// measured.
constexpr int ws_min_context = 512;
#if defined(HOSTRUN_KERNELS_SM90A)
constexpr bool kHaveWgmmaPrefill = true;  // attention_prefill_wgmma_*.cu are built
#else
constexpr bool kHaveWgmmaPrefill = false;
#endif

std::size_t align256(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

const char* dtype_label(DType dtype) {
  switch (dtype) {
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::f32: return "f32";
  }
  return "?";
}

const char* kv_label(int kv_bits) { return kv_bits == 8 ? ",kv int8" : kv_bits == 4 ? ",kv int4" : ""; }

// Merges the chunks of one (decode sequence, q head): out = sum_i w_i o_i /
// sum_i w_i with w_i = exp2(lse_i - max lse). grid (q_heads, sequences).
template <typename T>
__global__ void decode_reduce_kernel(const detail::AttentionKernelParams p, int head_dim) {
  detail::wait_for_previous_grid();  // a programmatic dependent (launch_dependent)
  detail::allow_next_grid_to_launch();  // the output projection may start streaming its weights
  const int head = blockIdx.x;
  const int sequence = blockIdx.y;
  const int q_heads = gridDim.x;
  const int q_begin = p.query_start[sequence];
  if (p.query_start[sequence + 1] - q_begin != 1) return;
  const int context = p.context_lens[sequence];
  const int active = min(p.splits, (context + p.split_tokens - 1) / p.split_tokens);
  if (active <= 1) return;  // decode_split wrote this one directly
  const std::int64_t base = (static_cast<std::int64_t>(sequence) * q_heads + head) * p.splits;
  float max_lse = -INFINITY;
  for (int i = 0; i < active; ++i) max_lse = fmaxf(max_lse, p.partial_lse[base + i]);
  T* out = static_cast<T*>(p.out) + static_cast<std::int64_t>(q_begin) * p.out_row_stride +
           static_cast<std::int64_t>(head) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float weight_sum = 0.0f, acc = 0.0f;
    for (int i = 0; i < active; ++i) {
      const float w = exp2f(p.partial_lse[base + i] - max_lse);
      weight_sum += w;
      acc += w * p.partial_out[(base + i) * head_dim + d];
    }
    out[d] = detail::from_f32<T>(acc / weight_sum);
  }
}

// The prefill kernel's work list: tile_start[s] = the first of sequence s's
// block_m-row query tiles in the step's flat list (exclusive prefix sum of
// ceil(query_len * group / block_m), 0 for decode tokens left to decode_split),
// tile_start[num_sequences] = the total. One block; a block-wide scan per
// 1024 sequences.
__global__ void __launch_bounds__(1024)
    prefill_schedule_kernel(const std::int32_t* query_start, int num_sequences, int group, int block_m,
                            bool skip_decode, std::int32_t* tile_start) {
  __shared__ int warp_totals[32];
  __shared__ int carry;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int base = 0; base < num_sequences; base += blockDim.x) {
    const int s = base + threadIdx.x;
    int tiles = 0;
    if (s < num_sequences) {
      const int q_len = query_start[s + 1] - query_start[s];
      if (q_len > 0 && !(skip_decode && q_len == 1)) tiles = (q_len * group + block_m - 1) / block_m;
    }
    int inclusive = tiles;  // within the warp
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += other;
    }
    if (lane == 31) warp_totals[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
      int total = lane < warps ? warp_totals[lane] : 0;
#pragma unroll
      for (int offset = 1; offset < 32; offset <<= 1) {
        const int other = __shfl_up_sync(0xffffffffu, total, offset);
        if (lane >= offset) total += other;
      }
      warp_totals[lane] = total;  // inclusive over warps
    }
    __syncthreads();
    const int before_warp = warp > 0 ? warp_totals[warp - 1] : 0;
    if (s < num_sequences) tile_start[s] = carry + before_warp + inclusive - tiles;
    __syncthreads();
    if (threadIdx.x == 0) carry += warp_totals[warps - 1];
    __syncthreads();
  }
  if (threadIdx.x == 0) tile_start[num_sequences] = carry;
}

// Calls f.template operator()<head_dim, kv_bits>() for the problem's shape.
template <typename F>
auto for_format(const AttentionProblem& problem, F&& f) {
  const auto with_bits = [&]<int kHeadDim>() {
    switch (problem.kv_bits) {
      case 8: return f.template operator()<kHeadDim, 8>();
      case 4: return f.template operator()<kHeadDim, 4>();
      default: return f.template operator()<kHeadDim, 0>();
    }
  };
  return problem.head_dim == 64 ? with_bits.template operator()<64>() : with_bits.template operator()<128>();
}

int decode_ctas_per_sm(const AttentionProblem& problem) {
  const auto of = [&]<typename T>() {
    return for_format(problem, []<int kHeadDim, int kKvBits>() {
      return detail::decode_ctas_per_sm<T, kHeadDim, kKvBits>();
    });
  };
  return problem.dtype == DType::f16 ? of.template operator()<__half>() : of.template operator()<__nv_bfloat16>();
}

template <typename T>
cudaError_t enqueue_prefill(const AttentionPlan& plan, const detail::AttentionKernelParams& params, int num_sequences,
                           cudaStream_t stream) {
  prefill_schedule_kernel<<<1, 1024, 0, stream>>>(params.query_start, num_sequences, params.group,
                                                 plan.prefill.block_m,
                                                 params.prefill_skips_decode,
                                                 const_cast<std::int32_t*>(params.prefill_tile_start));
  if (const cudaError_t r = cudaGetLastError(); r != cudaSuccess) return r;
  return for_format(plan.problem, [&]<int kHeadDim, int kKvBits>() {
#if defined(HOSTRUN_KERNELS_SM90A)
    if constexpr (kHeadDim == 128) {
      if (plan.prefill.warp_specialized) {
        const long long pairs = static_cast<long long>(plan.prefill_q_tiles) * plan.problem.kv_heads;
        const int ctas = static_cast<int>(std::clamp<long long>(pairs, 1, std::max(plan.problem.num_sms, 1)));
        return detail::launch_prefill_ws<T, kHeadDim, kKvBits>(params, ctas, stream);
      }
      if (plan.prefill.wgmma)
        return detail::launch_prefill<T, kHeadDim, kKvBits, true, 128>(params, plan.prefill_q_tiles, stream);
    }
#endif
    if (plan.prefill.block_m == 128)
      return detail::launch_prefill<T, kHeadDim, kKvBits, false, 128>(params, plan.prefill_q_tiles, stream);
    return detail::launch_prefill<T, kHeadDim, kKvBits>(params, plan.prefill_q_tiles, stream);
  });
}

template <typename T>
cudaError_t enqueue_decode(const AttentionPlan& plan, const detail::AttentionKernelParams& params, int num_sequences,
                          cudaStream_t stream) {
  const int head_dim = plan.problem.head_dim;
  const cudaError_t e = for_format(plan.problem, [&]<int kHeadDim, int kKvBits>() {
    return detail::launch_decode_split<T, kHeadDim, kKvBits>(params, num_sequences, stream);
  });
  if (e != cudaSuccess) return e;
  if (params.splits > 1) {
    const dim3 grid(plan.problem.q_heads, num_sequences);
    return detail::launch_dependent(decode_reduce_kernel<T>, grid, dim3(head_dim), 0, stream, params, head_dim);
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t run(const AttentionPlan& plan, const detail::AttentionKernelParams& params, int num_sequences,
                cudaStream_t stream, const SideStream* side) {
  if (plan.run_decode && plan.run_prefill && side != nullptr && side->stream != nullptr) {
    // Prefill first on the side stream (its few CTAs start before decode's
    // thousands take the SMs), decode on the main stream, then join. The two
    // write disjoint rows of `out` and disjoint parts of the workspace.
    if (cudaError_t e = cudaEventRecord(side->fork, stream); e != cudaSuccess) return e;
    if (cudaError_t e = cudaStreamWaitEvent(side->stream, side->fork, 0); e != cudaSuccess) return e;
    const cudaError_t prefill = enqueue_prefill<T>(plan, params, num_sequences, side->stream);
    const cudaError_t decode = enqueue_decode<T>(plan, params, num_sequences, stream);
    // Join even after a failed launch, so the side stream never holds work the main stream does not wait for.
    if (cudaError_t e = cudaEventRecord(side->join, side->stream); e != cudaSuccess) return e;
    if (cudaError_t e = cudaStreamWaitEvent(stream, side->join, 0); e != cudaSuccess) return e;
    return prefill != cudaSuccess ? prefill : decode;
  }
  if (plan.run_decode)
    if (const cudaError_t e = enqueue_decode<T>(plan, params, num_sequences, stream); e != cudaSuccess) return e;
  if (plan.run_prefill) return enqueue_prefill<T>(plan, params, num_sequences, stream);
  return cudaSuccess;
}

}  // namespace

std::string AttentionKernelDesc::to_string() const {
  char text[256];
  if (kind == AttentionKernel::decode_split) {
    std::snprintf(text, sizeof text,
                  "decode_split<%s,hd%d%s> group=%d heads=8 block_n=%d warps=%d splits=%d x %d positions "
                  "mma.m16n8k16%s",
                  dtype_label(dtype), head_dim, kv_label(kv_bits), group, block_n, warps, splits, split_tokens,
                  splits > 1 ? " +decode_reduce" : "");
  } else {
    std::snprintf(text, sizeof text, "prefill<%s,hd%d%s> group=%d block_m=%d block_n=%d warps=%d %s",
                  dtype_label(dtype), head_dim, kv_label(kv_bits), group, block_m, block_n, warps,
                  warp_specialized ? "wgmma.m64nNk16 +producer warpgroup"
                  : wgmma            ? "wgmma.m64nNk16"
                                     : "mma.m16n8k16");
  }
  return text;
}

std::string AttentionPlan::describe() const {
  if (!valid) return "paged_attention[invalid: " + error + "]";
  std::string text = "paged_attention[";
  if (run_decode) text += decode.to_string();
  if (run_decode && run_prefill) text += " | ";
  if (run_prefill) {
    text += prefill.to_string() + " tiles<=" + std::to_string(prefill_q_tiles) + " +schedule";
    if (!run_decode) text += " (also decode tokens)";
  }
  return text + "]";
}

AttentionPlan plan_paged_attention(const AttentionProblem& problem) {
  AttentionPlan plan;
  plan.problem = problem;
  const auto fail = [&plan](const char* why) {
    plan.valid = false;
    plan.error = why;
    return plan;
  };
  if (problem.dtype != DType::bf16 && problem.dtype != DType::f16) return fail("dtype must be bf16 or f16");
  if (problem.head_dim != 64 && problem.head_dim != 128) return fail("head_dim must be 64 or 128");
  if (problem.kv_bits != 0 && problem.kv_bits != 8 && problem.kv_bits != 4) return fail("kv_bits must be 0, 8 or 4");
  if (problem.kv_heads <= 0 || problem.q_heads <= 0 || problem.q_heads % problem.kv_heads != 0) {
    return fail("q_heads must be a positive multiple of kv_heads");
  }
  if (problem.num_sequences < 0 || problem.num_sequences > 65535 || problem.max_query_len < 0 ||
      problem.max_context_len < 0) {
    return fail("sizes out of range (num_sequences <= 65535)");
  }
  const int group = problem.q_heads / problem.kv_heads;

  plan.run_decode = group <= max_decode_group;
  plan.run_prefill = problem.max_query_len > 1 || !plan.run_decode;
  if (plan.run_decode) {
    int splits = 1;
    const int context = std::max(problem.max_context_len, 1);
    if (problem.force_splits > 0) {
      splits = problem.force_splits;
    } else {
      // Two CTAs an SM already take what an SM gives this kernel, and a
      // split's partials and reduce cost more than idle slots (the sweep in
      // docs/cuda-results/bench-decode-params-ab-h100.txt). So: one chunk a
      // (sequence, kv head) once the CTAs give every SM two (128 x 1k over
      // int4 pages: 7% faster than two chunks); two while they give it one
      // (32 x 2k: 24% faster than three, 7% slower than one, but a batch of
      // unequal contexts keeps a shorter longest chunk); and where those
      // chunks spill thinly past one wave of resident CTAs, enough splits for
      // two waves (bf16 pages at 64 x 4k on the H200: 329 us in 1.29 waves,
      // 286 in two chunks). Fewer CTAs than SMs: about four an SM (bf16 pages
      // hold 3 an SM at head_dim 128, int8 / int4 ones 5), short chunks
      // spreading one long context over the SMs. Never a chunk under
      // min_split_tokens.
      const int sms = std::max(problem.num_sms, 1);
      const int ctas = std::max(problem.num_sequences, 1) * problem.kv_heads;
      const int slots = sms * std::max(decode_ctas_per_sm(problem), 1);
      int wanted = 1;
      if (ctas < sms) {
        wanted = (4 * sms + ctas - 1) / ctas;
      } else {
        wanted = ctas < 2 * sms ? 2 : 1;
        const int grid = ctas * wanted;
        if (grid > slots && grid < 2 * slots && grid % slots < 2 * sms) wanted = (2 * slots + ctas - 1) / ctas;
      }
      splits = std::clamp(std::min(wanted, (context + min_split_tokens - 1) / min_split_tokens), 1, max_splits);
    }
    int split_tokens = (context + splits - 1) / splits;
    split_tokens = std::max(decode_block_n, (split_tokens + decode_block_n - 1) / decode_block_n * decode_block_n);
    splits = (context + split_tokens - 1) / split_tokens;
    plan.decode = {AttentionKernel::decode_split, problem.dtype, problem.head_dim, group, 8, decode_block_n, 4,
                   splits, split_tokens, problem.kv_bits};
    if (splits > 1) {
      const std::size_t partials = static_cast<std::size_t>(std::max(problem.num_sequences, 1)) *
                                   static_cast<std::size_t>(problem.q_heads) * static_cast<std::size_t>(splits);
      plan.workspace_bytes = align256(partials * problem.head_dim * sizeof(float)) + align256(partials * sizeof(float));
    }
  }
  plan.prefill_schedule_offset = plan.workspace_bytes;
  if (plan.run_prefill) {
    const bool wgmma_possible = kHaveWgmmaPrefill && problem.compute_capability == 90 && problem.head_dim == 128;
    bool wgmma = false, warp_specialized = false;
    int block_m = 64;
    switch (problem.prefill_kernel) {
      case PrefillKernelChoice::automatic:
      case PrefillKernelChoice::mma_sync:
        wgmma = wgmma_possible && problem.prefill_kernel == PrefillKernelChoice::automatic;
        warp_specialized = wgmma && problem.max_context_len >= ws_min_context;
        block_m = problem.compute_capability == 90 && problem.head_dim == 128 ? 128 : 64;
        break;
      case PrefillKernelChoice::mma_sync_64: block_m = 64; break;
      case PrefillKernelChoice::mma_sync_128: block_m = 128; break;
      case PrefillKernelChoice::wgmma_128:
      case PrefillKernelChoice::wgmma_ws:
        if (!wgmma_possible) return fail("the wgmma prefill needs compute capability 9.0, head_dim 128 and sm_90a objects");
        wgmma = true;
        warp_specialized = problem.prefill_kernel == PrefillKernelChoice::wgmma_ws;
        block_m = 128;
        break;
    }
    plan.prefill = {AttentionKernel::prefill, problem.dtype, problem.head_dim, group, block_m,
                    prefill_block_n, block_m / 16, 1, 0, problem.kv_bits};
    plan.prefill.wgmma = wgmma;
    plan.prefill.warp_specialized = warp_specialized;
    if (warp_specialized) plan.prefill.warps = 12;
    // A bound on the step's query tiles: every sequence at max_query_len, or,
    // when the step's token count is known, its tiles plus one partial tile
    // per sequence. The kernel loops if the real list is longer.
    const long long sequences = std::max(problem.num_sequences, 1);
    const long long per_sequence = (static_cast<long long>(std::max(problem.max_query_len, 1)) * group +
                                    block_m - 1) / block_m;
    long long tiles = sequences * per_sequence;
    if (problem.max_tokens > 0)
      tiles = std::min(tiles, (static_cast<long long>(problem.max_tokens) * group + block_m - 1) /
                                      block_m + sequences);
    plan.prefill_q_tiles = static_cast<int>(std::clamp<long long>(tiles, 1, 1 << 30));
    plan.workspace_bytes += align256(static_cast<std::size_t>(sequences + 1) * sizeof(std::int32_t));
  }
  plan.valid = true;
  return plan;
}

cudaError_t paged_attention(const AttentionPlan& plan, const PagedKvPools& pools, const PagedAttentionBatch& batch,
                            const void* q, std::int64_t q_row_stride, float softmax_scale, void* out,
                            std::int64_t out_row_stride, void* workspace, std::size_t workspace_bytes,
                            cudaStream_t stream, const SideStream* side) {
  const AttentionProblem& problem = plan.problem;
  if (!plan.valid || pools.dtype != problem.dtype || pools.head_dim != problem.head_dim ||
      pools.kv_heads != problem.kv_heads || pools.block_tokens <= 0 || batch.num_sequences > problem.num_sequences ||
      workspace_bytes < plan.workspace_bytes || (plan.workspace_bytes > 0 && workspace == nullptr) ||
      q_row_stride % 8 != 0 || reinterpret_cast<std::uintptr_t>(q) % 16 != 0 ||
      reinterpret_cast<std::uintptr_t>(pools.k_pages) % 16 != 0 ||
      reinterpret_cast<std::uintptr_t>(pools.v_pages) % 16 != 0 || out_row_stride % 2 != 0 ||
      pools.kv_bits != problem.kv_bits ||
      (pools.kv_bits != 0 && !quantized_kv_supported(pools.kv_bits, pools.head_dim, pools.block_tokens, pools.kv_heads))) {
    return cudaErrorInvalidValue;
  }
  if (batch.num_sequences == 0) return cudaSuccess;

  detail::AttentionKernelParams params;
  params.q = q;
  params.q_row_stride = q_row_stride;
  params.out = out;
  params.out_row_stride = out_row_stride;
  params.k_pages = pools.k_pages;
  if (pools.kv_bits != 0)
    params.kv_block_bytes = static_cast<std::int64_t>(
        ref::KvQuantBlockLayout{static_cast<std::size_t>(pools.block_tokens), static_cast<std::size_t>(pools.kv_heads),
                                static_cast<std::size_t>(pools.head_dim), pools.kv_bits}
            .block_bytes());
  params.v_pages = pools.v_pages;
  params.kv_heads = pools.kv_heads;
  params.block_tokens = pools.block_tokens;
  params.query_start = batch.query_start;
  params.context_lens = batch.context_lens;
  params.block_tables = batch.block_tables;
  params.max_blocks_per_sequence = batch.max_blocks_per_sequence;
  params.group = problem.q_heads / problem.kv_heads;
  params.scale_log2 = softmax_scale * 1.4426950408889634f;
  params.split_tokens = plan.decode.split_tokens;
  params.splits = plan.run_decode ? plan.decode.splits : 1;
  if (plan.workspace_bytes > 0) {
    const std::size_t partials = static_cast<std::size_t>(std::max(problem.num_sequences, 1)) *
                                 static_cast<std::size_t>(problem.q_heads) * static_cast<std::size_t>(params.splits);
    params.partial_out = static_cast<float*>(workspace);
    params.partial_lse = reinterpret_cast<float*>(static_cast<char*>(workspace) +
                                                  align256(partials * problem.head_dim * sizeof(float)));
  }
  params.prefill_skips_decode = plan.run_decode;
  params.num_sequences = batch.num_sequences;
  params.prefill_tile_start =
      reinterpret_cast<const std::int32_t*>(static_cast<char*>(workspace) + plan.prefill_schedule_offset);
  return problem.dtype == DType::bf16 ? run<__nv_bfloat16>(plan, params, batch.num_sequences, stream, side)
                                      : run<__half>(plan, params, batch.num_sequences, stream, side);
}

}  // namespace hostrun::cuda
