#include "ref/write_kv.hpp"

namespace hostrun::ref {

Status write_kv(const KvCacheLayer& cache, const PagedKvStep& step, const float* k, const float* v) {
  const std::size_t num_tokens = step.num_tokens();
  const std::int64_t num_slots = static_cast<std::int64_t>(cache.num_blocks * cache.block_tokens);
  for (std::size_t t = 0; t < num_tokens; ++t) {
    if (step.slot_mapping[t] < 0 || step.slot_mapping[t] >= num_slots) return Status::slot_out_of_range;
  }
  const std::size_t token_elements = cache.kv_heads * cache.head_dim;
  const std::size_t element_bytes = dtype_size(cache.dtype);
  for (std::size_t t = 0; t < num_tokens; ++t) {
    const std::size_t offset_bytes = static_cast<std::size_t>(step.slot_mapping[t]) * token_elements * element_bytes;
    convert_from_f32(k + t * token_elements, token_elements, static_cast<unsigned char*>(cache.k_pages) + offset_bytes,
                     cache.dtype);
    convert_from_f32(v + t * token_elements, token_elements, static_cast<unsigned char*>(cache.v_pages) + offset_bytes,
                     cache.dtype);
  }
  return Status::ok;
}

}  // namespace hostrun::ref
