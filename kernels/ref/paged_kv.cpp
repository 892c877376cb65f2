#include "ref/paged_kv.hpp"

namespace hostrun::ref {

Status validate_paged_kv_step(const KvCacheLayer& cache, const PagedKvStep& step) {
  if (step.block_tokens == 0 || step.block_tokens != cache.block_tokens) return Status::bad_step_layout;
  if (step.num_sequences == 0) return Status::ok;
  if (step.query_start[0] != 0) return Status::bad_step_layout;
  for (std::size_t i = 0; i < step.num_sequences; ++i) {
    const std::int64_t new_tokens = static_cast<std::int64_t>(step.query_start[i + 1]) - step.query_start[i];
    const std::int64_t context = step.context_lens[i];
    if (new_tokens < 0 || context < new_tokens) return Status::bad_step_layout;
    const std::size_t blocks_needed = (static_cast<std::size_t>(context) + step.block_tokens - 1) / step.block_tokens;
    if (blocks_needed > step.max_blocks_per_sequence) return Status::bad_step_layout;
    const std::int32_t* block_table = step.block_tables + i * step.max_blocks_per_sequence;
    for (std::size_t b = 0; b < blocks_needed; ++b) {
      if (block_table[b] < 0 || static_cast<std::size_t>(block_table[b]) >= cache.num_blocks) {
        return Status::block_out_of_range;
      }
    }
    const std::int64_t cached = context - new_tokens;
    for (std::int64_t j = 0; j < new_tokens; ++j) {
      const auto position = static_cast<std::size_t>(cached + j);
      const std::int64_t expected_slot =
          static_cast<std::int64_t>(block_table[position / step.block_tokens]) * static_cast<std::int64_t>(step.block_tokens) +
          static_cast<std::int64_t>(position % step.block_tokens);
      if (step.slot_mapping[step.query_start[i] + j] != expected_slot) return Status::slot_out_of_range;
    }
  }
  return Status::ok;
}

}  // namespace hostrun::ref
