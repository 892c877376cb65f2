#include "ref/paged_attention.hpp"

#include "ref/kv_quant.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace hostrun::ref {

Status paged_attention(const KvCacheLayer& cache, const PagedKvStep& step, const float* q, std::size_t q_heads,
                       float softmax_scale, float* out) {
  if (cache.kv_heads == 0 || q_heads == 0 || q_heads % cache.kv_heads != 0) return Status::invalid_argument;
  if (cache.quant_bits != 0 && !valid_kv_bits(cache.quant_bits)) return Status::invalid_argument;
  if (const Status status = validate_paged_kv_step(cache, step); status != Status::ok) return status;

  const std::size_t head_dim = cache.head_dim;
  const std::size_t kv_heads = cache.kv_heads;
  const std::size_t group = q_heads / kv_heads;

  std::size_t longest_context = 0;
  for (std::size_t i = 0; i < step.num_sequences; ++i) {
    longest_context = std::max(longest_context, static_cast<std::size_t>(step.context_lens[i]));
  }
  // Scores of the `group` query heads that share one kv head, so each K/V row
  // is loaded (and converted from 16 bits) once per group, not once per head.
  std::vector<float> scores(group * longest_context);
  std::vector<float> kv_row(head_dim);
  std::vector<float> accumulated(group * head_dim);

  for (std::size_t i = 0; i < step.num_sequences; ++i) {
    const std::size_t first_token = static_cast<std::size_t>(step.query_start[i]);
    const std::size_t new_tokens = static_cast<std::size_t>(step.query_start[i + 1]) - first_token;
    const std::size_t cached = static_cast<std::size_t>(step.context_lens[i]) - new_tokens;
    const std::int32_t* block_table = step.block_tables + i * step.max_blocks_per_sequence;

    for (std::size_t j = 0; j < new_tokens; ++j) {
      const std::size_t t = first_token + j;
      const std::size_t visible = cached + j + 1;  // positions 0 .. cached + j
      for (std::size_t kv_head = 0; kv_head < kv_heads; ++kv_head) {
        const float* q_group = q + (t * q_heads + kv_head * group) * head_dim;

        for (std::size_t position = 0; position < visible; ++position) {
          const std::size_t slot = static_cast<std::size_t>(block_table[position / cache.block_tokens]) * cache.block_tokens +
                                   position % cache.block_tokens;
          load_kv_head(cache, cache.k_pages, slot, kv_head, kv_row.data());
          for (std::size_t h = 0; h < group; ++h) {
            const float* q_head = q_group + h * head_dim;
            float dot = 0.0f;
            for (std::size_t d = 0; d < head_dim; ++d) dot += q_head[d] * kv_row[d];
            scores[h * visible + position] = dot * softmax_scale;
          }
        }

        for (std::size_t h = 0; h < group; ++h) {
          float* head_scores = scores.data() + h * visible;
          const float max_score = *std::max_element(head_scores, head_scores + visible);
          float denominator = 0.0f;
          for (std::size_t position = 0; position < visible; ++position) {
            head_scores[position] = std::exp(head_scores[position] - max_score);
            denominator += head_scores[position];
          }
          // denominator >= 1 (the max contributes exp(0)), so this is safe.
          const float inv_denominator = 1.0f / denominator;
          for (std::size_t position = 0; position < visible; ++position) head_scores[position] *= inv_denominator;
        }

        std::fill(accumulated.begin(), accumulated.end(), 0.0f);
        for (std::size_t position = 0; position < visible; ++position) {
          const std::size_t slot = static_cast<std::size_t>(block_table[position / cache.block_tokens]) * cache.block_tokens +
                                   position % cache.block_tokens;
          load_kv_head(cache, cache.v_pages, slot, kv_head, kv_row.data());
          for (std::size_t h = 0; h < group; ++h) {
            const float weight = scores[h * visible + position];
            float* acc = accumulated.data() + h * head_dim;
            for (std::size_t d = 0; d < head_dim; ++d) acc[d] += weight * kv_row[d];
          }
        }
        std::copy(accumulated.begin(), accumulated.end(), out + (t * q_heads + kv_head * group) * head_dim);
      }
    }
  }
  return Status::ok;
}

}  // namespace hostrun::ref
