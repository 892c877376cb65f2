// Writing one step's new keys and values into their pages (paged_kv.hpp):
//
//   k_pages[slot_mapping[t]] = k[t]      v_pages[slot_mapping[t]] = v[t]
//
//   k, v  [num_tokens, kv_heads, head_dim] f32, rounded to the pool dtype, or
//         quantized row by row (kv_quant.hpp) when cache.quant_bits is 8 or 4;
//         int4 keys are rotated first (kv_keys_rotated)
#pragma once

#include "ref/paged_kv.hpp"

namespace hostrun::ref {

// All slots are checked before anything is written: a slot < 0 or >=
// num_blocks * block_tokens gives Status::slot_out_of_range and leaves the
// pools untouched; quant_bits other than 0, 8 or 4 gives invalid_argument. Only step.slot_mapping and step.num_tokens() are used.
Status write_kv(const KvCacheLayer& cache, const PagedKvStep& step, const float* k, const float* v);

}  // namespace hostrun::ref
