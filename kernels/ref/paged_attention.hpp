// Causal attention of one step's new query tokens over the paged KV cache,
// with grouped-query attention (paged_kv.hpp describes the step):
//
//   for new token j of sequence i at position p = cached_i + j, q head h,
//   kv head g = h / (q_heads / kv_heads):
//     score[s] = softmax_scale * dot(q[t, h], K_i[s, g])       s = 0 .. p
//     out[t, h] = sum_s softmax(score)[s] * V_i[s, g]
//
//   q, out  [num_tokens, q_heads, head_dim] f32
//
// The softmax subtracts the row maximum before exp (exp never overflows), and
// all arithmetic is f32 on values loaded from the pools as f32 (converted
// from the float dtype, or dequantized with one FMA a value, kv_quant.hpp). The K/V of
// this step's tokens must already be written (write_kv) — position p sees
// itself and every earlier position of its sequence, never a later one.
// Over int4 pages, whose keys are stored rotated (kv_quant.hpp), q must be
// rotated the same way by the caller (the KV policies do it).
#pragma once

#include <cstddef>

#include "ref/paged_kv.hpp"

namespace hostrun::ref {

// Validates the step first (validate_paged_kv_step) and returns its status
// without touching out on failure; invalid_argument if q_heads is not a
// positive multiple of cache.kv_heads.
Status paged_attention(const KvCacheLayer& cache, const PagedKvStep& step, const float* q, std::size_t q_heads,
                       float softmax_scale, float* out);

}  // namespace hostrun::ref
