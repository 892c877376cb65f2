// Sampling one token from one row of logits, in the order vLLM and HF apply
// the steps:
//
//   1. repetition penalty (HF / CTRL semantics), once per distinct id in
//      prompt + generated:          l = l > 0 ? l / r : l * r
//   2. presence and frequency penalties (OpenAI semantics), over generated ids
//      only, c = times the id was generated:
//                                   l = l - frequency * c - presence * (c > 0)
//   3. temperature: temperature < 1e-5 means greedy: argmax of the penalised
//      logits, ties to the lowest id (steps 4-6 cannot change it). Otherwise
//      l = l / temperature (one f32 IEEE division).
//   4. top-k: keep the k largest (ties broken toward the lower id).
//   5. top-p: with p = softmax over the kept ids, in descending order, keep the
//      shortest prefix whose cumulative probability is >= top_p (at least one).
//   6. min-p: drop ids whose probability is < min_p * (largest probability),
//      i.e. exp(l - l_max) < min_p.
//   7. draw: argmax over the kept ids of  l + gumbel(seed, step, id)  (ties to
//      the lower id), with gumbel from rng.hpp. This is an exact sample from
//      softmax(l) restricted to the kept ids (the Gumbel-max trick) and needs
//      neither a normalising sum nor an ordered prefix sum, so a parallel
//      twin picks the same token: its random numbers are bit-identical and
//      only the final comparison is in floating point.
//
// Disabled values: top_k <= 0 or >= vocab, top_p >= 1, min_p <= 0,
// repetition_penalty == 1, presence/frequency == 0.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ref/status.hpp"

namespace hostrun::ref {

// Below this temperature sampling is greedy (vLLM's threshold).
inline constexpr float greedy_temperature_threshold = 1e-5f;

struct SamplingParams {
  float temperature = 1.0f;
  std::int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::uint64_t seed = 0;
};

// The ids a request has seen so far. The repetition penalty uses both, the
// presence/frequency penalties only generated_ids.
struct TokenHistory {
  const std::int32_t* prompt_ids = nullptr;
  std::size_t num_prompt_ids = 0;
  const std::int32_t* generated_ids = nullptr;
  std::size_t num_generated_ids = 0;
};

// Steps 1-2, in place. Status::token_id_out_of_range (logits untouched) if a
// history id is outside [0, vocab_size).
Status apply_penalties(float* logits, std::size_t vocab_size, const SamplingParams& params,
                       const TokenHistory& history);

// The index of the largest logit, the lowest such index on ties. vocab_size > 0.
std::int32_t greedy_argmax(const float* logits, std::size_t vocab_size);

// Steps 4-6 on temperature-scaled logits. Writes the surviving ids to
// candidate_ids (capacity vocab_size), in increasing id order, and returns
// how many survived (>= 1 when vocab_size > 0).
std::size_t filter_candidates(const float* scaled_logits, std::size_t vocab_size, std::int32_t top_k, float top_p,
                              float min_p, std::int32_t* candidate_ids);

// Step 7. num_candidates > 0.
std::int32_t draw_from_candidates(const float* scaled_logits, const std::int32_t* candidate_ids,
                                  std::size_t num_candidates, std::uint64_t seed, std::uint64_t step);

// All steps. logits are not modified (logprobs are reported from the raw row,
// see logprobs.hpp). `step` is the index of the token being generated within
// its request (rng.hpp). Returns the status of apply_penalties.
Status sample_token(const float* logits, std::size_t vocab_size, const SamplingParams& params,
                    const TokenHistory& history, std::uint64_t step, std::int32_t* token_out);

}  // namespace hostrun::ref
