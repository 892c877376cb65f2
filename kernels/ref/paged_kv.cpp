#include "ref/paged_kv.hpp"

#include <cstring>

#include "ref/kv_quant.hpp"

namespace hostrun::ref {

namespace {

// Where one token's one head lives in a quantized pool.
struct QuantizedHead {
  std::size_t codes;   // byte offset of its codes
  std::size_t params;  // byte offset of its KvQuantParams
};

KvQuantBlockLayout quant_layout(const KvCacheLayer& cache) {
  return {cache.block_tokens, cache.kv_heads, cache.head_dim, cache.quant_bits};
}

QuantizedHead quantized_head(const KvCacheLayer& cache, std::size_t slot, std::size_t head) {
  const std::size_t block = slot / cache.block_tokens, offset = slot % cache.block_tokens;
  const KvQuantBlockLayout layout = quant_layout(cache);
  const std::size_t start = block * layout.block_bytes();
  return {start + layout.codes_at(offset, head), start + layout.params_at(offset, head)};
}

}  // namespace

std::size_t kv_pool_block_bytes(const KvCacheLayer& cache) {
  if (cache.quant_bits == 0) return cache.block_tokens * cache.kv_heads * cache.head_dim * dtype_size(cache.dtype);
  return quant_layout(cache).block_bytes();
}

void load_kv_head(const KvCacheLayer& cache, const void* pool, std::size_t slot, std::size_t head, float* out) {
  const auto* bytes = static_cast<const unsigned char*>(pool);
  if (cache.quant_bits == 0) {
    const std::size_t element = (slot * cache.kv_heads + head) * cache.head_dim;
    for (std::size_t d = 0; d < cache.head_dim; ++d) out[d] = load_as_f32(pool, cache.dtype, element + d);
    return;
  }
  const QuantizedHead where = quantized_head(cache, slot, head);
  KvQuantParams params;
  std::memcpy(&params, bytes + where.params, sizeof params);
  dequantize_kv_row(bytes + where.codes, cache.head_dim, cache.quant_bits, params, out);
}

void store_kv_head(const KvCacheLayer& cache, void* pool, std::size_t slot, std::size_t head, const float* in) {
  auto* bytes = static_cast<unsigned char*>(pool);
  if (cache.quant_bits == 0) {
    const std::size_t element = (slot * cache.kv_heads + head) * cache.head_dim;
    convert_from_f32(in, cache.head_dim, bytes + element * dtype_size(cache.dtype), cache.dtype);
    return;
  }
  const QuantizedHead where = quantized_head(cache, slot, head);
  const KvQuantParams params = quantize_kv_row(in, cache.head_dim, cache.quant_bits, bytes + where.codes);
  std::memcpy(bytes + where.params, &params, sizeof params);
}

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
