// Log-probabilities reported to the user:
//
//   logprob[i] = l[i] - max(l) - log(sum_j exp(l[j] - max(l)))      (log_softmax)
//
// computed on the RAW logits of the model — before penalties, temperature
// and top-k/top-p/min-p — like vLLM's default (logprobs_mode "raw_logprobs")
// and OpenAI's description of logprobs as the model's own distribution. So
// the reported numbers do not change with sampling settings, and a greedy and
// a sampled request report the same logprob for the same token. The sum is
// accumulated in double.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ref/status.hpp"

namespace hostrun::ref {

struct TokenLogprob {
  std::int32_t token_id = 0;
  float logprob = 0.0f;
};

// logprobs may alias logits.
void log_softmax(const float* logits, std::size_t vocab_size, float* logprobs);

// The chosen token's logprob and rank (1 + number of ids with a strictly
// larger logprob, vLLM's definition), and the num_top most likely ids in
// descending logprob order (ties to the lower id) written to top[0..num_top).
// Status::token_id_out_of_range if chosen_token is outside the vocabulary,
// invalid_argument if num_top > vocab_size.
Status token_logprobs(const float* logits, std::size_t vocab_size, std::int32_t chosen_token, std::size_t num_top,
                      TokenLogprob* chosen, std::size_t* chosen_rank, TokenLogprob* top);

}  // namespace hostrun::ref
