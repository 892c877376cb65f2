#include "ref/logprobs.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace hostrun::ref {

namespace {

// max(l) + log(sum exp(l - max)), the normaliser of log_softmax.
double log_sum_exp(const float* logits, std::size_t vocab_size) {
  const float max_logit = *std::max_element(logits, logits + vocab_size);
  double sum = 0.0;
  for (std::size_t i = 0; i < vocab_size; ++i) sum += std::exp(static_cast<double>(logits[i]) - max_logit);
  return static_cast<double>(max_logit) + std::log(sum);
}

}  // namespace

void log_softmax(const float* logits, std::size_t vocab_size, float* logprobs) {
  if (vocab_size == 0) return;
  const double normaliser = log_sum_exp(logits, vocab_size);
  for (std::size_t i = 0; i < vocab_size; ++i) logprobs[i] = static_cast<float>(logits[i] - normaliser);
}

Status token_logprobs(const float* logits, std::size_t vocab_size, std::int32_t chosen_token, std::size_t num_top,
                      TokenLogprob* chosen, std::size_t* chosen_rank, TokenLogprob* top) {
  if (chosen_token < 0 || static_cast<std::size_t>(chosen_token) >= vocab_size) return Status::token_id_out_of_range;
  if (num_top > vocab_size) return Status::invalid_argument;
  const double normaliser = log_sum_exp(logits, vocab_size);
  const float chosen_logit = logits[chosen_token];
  chosen->token_id = chosen_token;
  chosen->logprob = static_cast<float>(chosen_logit - normaliser);
  // Ranked on logits: log_softmax is a shift, so the order is the same and
  // no f32 rounding of the shift can create or break ties.
  std::size_t larger = 0;
  for (std::size_t i = 0; i < vocab_size; ++i) larger += logits[i] > chosen_logit ? 1 : 0;
  *chosen_rank = larger + 1;

  if (num_top > 0) {
    std::vector<std::int32_t> ids(vocab_size);
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(num_top), ids.end(),
                      [logits](std::int32_t a, std::int32_t b) {
                        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
                      });
    for (std::size_t i = 0; i < num_top; ++i) top[i] = {ids[i], static_cast<float>(logits[ids[i]] - normaliser)};
  }
  return Status::ok;
}

}  // namespace hostrun::ref
