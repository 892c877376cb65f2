#include "ref/write_kv.hpp"

#include "ref/kv_quant.hpp"

#include <algorithm>
#include <vector>

namespace hostrun::ref {

Status write_kv(const KvCacheLayer& cache, const PagedKvStep& step, const float* k, const float* v) {
  const std::size_t num_tokens = step.num_tokens();
  const std::int64_t num_slots = static_cast<std::int64_t>(cache.num_blocks * cache.block_tokens);
  for (std::size_t t = 0; t < num_tokens; ++t) {
    if (step.slot_mapping[t] < 0 || step.slot_mapping[t] >= num_slots) return Status::slot_out_of_range;
  }
  if (cache.quant_bits != 0 && !valid_kv_bits(cache.quant_bits)) return Status::invalid_argument;
  const std::size_t token_elements = cache.kv_heads * cache.head_dim;
  const bool rotate_keys = kv_keys_rotated(cache.quant_bits);
  std::vector<float> rotated(rotate_keys ? cache.head_dim : 0);
  for (std::size_t t = 0; t < num_tokens; ++t) {
    const auto slot = static_cast<std::size_t>(step.slot_mapping[t]);
    for (std::size_t head = 0; head < cache.kv_heads; ++head) {
      const float* key = k + t * token_elements + head * cache.head_dim;
      if (rotate_keys) {
        std::copy_n(key, cache.head_dim, rotated.begin());
        rotate_kv_row(rotated.data(), cache.head_dim);
        key = rotated.data();
      }
      store_kv_head(cache, cache.k_pages, slot, head, key);
      store_kv_head(cache, cache.v_pages, slot, head, v + t * token_elements + head * cache.head_dim);
    }
  }
  return Status::ok;
}

}  // namespace hostrun::ref
