#include "ref/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "ref/rng.hpp"

namespace hostrun::ref {

namespace {

bool ids_in_range(const std::int32_t* ids, std::size_t count, std::size_t vocab_size) {
  for (std::size_t i = 0; i < count; ++i) {
    if (ids[i] < 0 || static_cast<std::size_t>(ids[i]) >= vocab_size) return false;
  }
  return true;
}

}  // namespace

Status apply_penalties(float* logits, std::size_t vocab_size, const SamplingParams& params,
                       const TokenHistory& history) {
  if (!ids_in_range(history.prompt_ids, history.num_prompt_ids, vocab_size) ||
      !ids_in_range(history.generated_ids, history.num_generated_ids, vocab_size)) {
    return Status::token_id_out_of_range;
  }
  // Sorted copies make "each distinct id once" and "count per id" cheap
  // without a vocabulary-sized table.
  std::vector<std::int32_t> generated(history.generated_ids, history.generated_ids + history.num_generated_ids);
  std::sort(generated.begin(), generated.end());

  if (params.repetition_penalty != 1.0f) {
    std::vector<std::int32_t> seen(history.prompt_ids, history.prompt_ids + history.num_prompt_ids);
    seen.insert(seen.end(), generated.begin(), generated.end());
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (const std::int32_t id : seen) {
      float& logit = logits[id];
      logit = logit > 0.0f ? logit / params.repetition_penalty : logit * params.repetition_penalty;
    }
  }
  if (params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f) {
    for (std::size_t run_start = 0; run_start < generated.size();) {
      std::size_t run_end = run_start;
      while (run_end < generated.size() && generated[run_end] == generated[run_start]) ++run_end;
      const auto count = static_cast<float>(run_end - run_start);
      logits[generated[run_start]] -= params.frequency_penalty * count + params.presence_penalty;
      run_start = run_end;
    }
  }
  return Status::ok;
}

std::int32_t greedy_argmax(const float* logits, std::size_t vocab_size) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < vocab_size; ++i) {
    if (logits[i] > logits[best]) best = i;  // strict: the first of equal maxima wins
  }
  return static_cast<std::int32_t>(best);
}

std::size_t filter_candidates(const float* scaled_logits, std::size_t vocab_size, std::int32_t top_k, float top_p,
                              float min_p, std::int32_t* candidate_ids) {
  if (vocab_size == 0) return 0;
  const bool use_top_k = top_k > 0 && static_cast<std::size_t>(top_k) < vocab_size;
  const bool use_top_p = top_p < 1.0f;
  const bool use_min_p = min_p > 0.0f;

  std::iota(candidate_ids, candidate_ids + vocab_size, 0);
  std::size_t kept = vocab_size;
  // Descending logit, ascending id on ties: a total order, so the kept set is
  // the same whatever sort a twin uses.
  const auto more_likely = [scaled_logits](std::int32_t a, std::int32_t b) {
    return scaled_logits[a] > scaled_logits[b] || (scaled_logits[a] == scaled_logits[b] && a < b);
  };
  // candidate_ids[0 .. sorted) hold the most likely ids in order; the rest
  // are all less likely, in no order.
  std::size_t sorted = 0;
  if (use_top_k) {
    kept = static_cast<std::size_t>(top_k);
    std::partial_sort(candidate_ids, candidate_ids + kept, candidate_ids + vocab_size, more_likely);
    sorted = kept;
  }
  const float max_logit = scaled_logits[use_top_k ? candidate_ids[0] : greedy_argmax(scaled_logits, vocab_size)];

  if (use_top_p) {
    // Probabilities relative to the max, so nothing overflows; normalised by
    // the sum over what top-k kept. Accumulated in double.
    double total = 0.0;
    for (std::size_t i = 0; i < kept; ++i) total += std::exp(static_cast<double>(scaled_logits[candidate_ids[i]]) - max_logit);
    const double target = static_cast<double>(top_p) * total;
    double cumulative = 0.0;
    std::size_t prefix = 0;
    while (prefix < kept) {
      if (prefix == sorted) {
        // The nucleus is usually a small part of a large vocabulary: order
        // only as many more ids as the walk reaches, growing 8x each time.
        const std::size_t next = std::min(kept, std::max<std::size_t>(256, sorted * 8));
        std::nth_element(candidate_ids + sorted, candidate_ids + next - 1, candidate_ids + kept, more_likely);
        std::sort(candidate_ids + sorted, candidate_ids + next - 1, more_likely);
        sorted = next;
      }
      cumulative += std::exp(static_cast<double>(scaled_logits[candidate_ids[prefix]]) - max_logit);
      ++prefix;
      if (cumulative >= target) break;
    }
    kept = prefix;
  }
  if (use_min_p) {
    // Probability ratios do not depend on the normalisation, so min-p after
    // top-k/top-p is the same as min-p on their renormalised distribution.
    std::size_t survivors = 0;
    for (std::size_t i = 0; i < kept; ++i) {
      const std::int32_t id = candidate_ids[i];
      if (std::exp(static_cast<double>(scaled_logits[id]) - max_logit) >= static_cast<double>(min_p)) {
        candidate_ids[survivors++] = id;
      }
    }
    kept = survivors;  // the max itself always survives (ratio 1 >= min_p unless min_p > 1)
    if (kept == 0) {  // min_p > 1: keep the most likely id rather than nothing
      candidate_ids[0] = greedy_argmax(scaled_logits, vocab_size);
      kept = 1;
    }
  }
  std::sort(candidate_ids, candidate_ids + kept);
  return kept;
}

std::int32_t draw_from_candidates(const float* scaled_logits, const std::int32_t* candidate_ids,
                                  std::size_t num_candidates, std::uint64_t seed, std::uint64_t step) {
  std::int32_t best_id = candidate_ids[0];
  double best_score = -INFINITY;
  // One Philox call yields the words of 4 consecutive ids; candidates come in
  // increasing id order, so remembering the last group saves 3 calls in 4.
  std::uint32_t cached_group = 0;
  PhiloxCounter cached_words{};
  bool have_cached = false;
  for (std::size_t i = 0; i < num_candidates; ++i) {
    const std::int32_t id = candidate_ids[i];
    const auto group = static_cast<std::uint32_t>(id) / 4;
    if (!have_cached || group != cached_group) {
      cached_words = sampling_random_group(seed, step, group);
      cached_group = group;
      have_cached = true;
    }
    const double score = static_cast<double>(scaled_logits[id]) + gumbel_from_word(cached_words[id % 4]);
    if (score > best_score || (score == best_score && id < best_id)) {
      best_score = score;
      best_id = id;
    }
  }
  return best_id;
}

Status sample_token(const float* logits, std::size_t vocab_size, const SamplingParams& params,
                    const TokenHistory& history, std::uint64_t step, std::int32_t* token_out) {
  std::vector<float> working(logits, logits + vocab_size);
  if (const Status status = apply_penalties(working.data(), vocab_size, params, history); status != Status::ok) {
    return status;
  }
  if (params.temperature < greedy_temperature_threshold) {
    *token_out = greedy_argmax(working.data(), vocab_size);
    return Status::ok;
  }
  for (float& logit : working) logit /= params.temperature;
  std::vector<std::int32_t> candidate_ids(vocab_size);
  const std::size_t num_candidates =
      filter_candidates(working.data(), vocab_size, params.top_k, params.top_p, params.min_p, candidate_ids.data());
  *token_out = draw_from_candidates(working.data(), candidate_ids.data(), num_candidates, params.seed, step);
  return Status::ok;
}

}  // namespace hostrun::ref
