// What a request asks of generation and what a model reports back: sampling
// parameters, the images a message carries, and per-token log-probabilities.
// Shared by the engine handle (frontends) and the Model interface, so neither
// includes the other.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "hostrun/tokenizer.hpp"

namespace hostrun {

struct SamplingParams {
  float temperature = 1.0f;  // 0 means greedy
  float top_p = 1.0f;
  int32_t top_k = 0;  // 0 means no top-k cut
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::optional<uint64_t> seed;
  int32_t max_tokens = -1;  // -1: up to the session length
  int32_t min_tokens = 0;
  bool ignore_eos = false;
  std::vector<std::string> stop;         // stop strings, matched on decoded text
  std::vector<TokenId> stop_token_ids;   // in addition to the model's eos ids
  int32_t top_logprobs = -1;             // -1: no logprobs; 0: the chosen token's; n: plus top n
  bool skip_special_tokens = true;

  // Whether sampling reads the request's token history (repetition, presence
  // or frequency penalty).
  bool has_penalties() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
};

// An image as a client sent it: the encoded file, decoded by the vision encoder.
struct ImageData {
  std::string mime_type;       // "image/png", "image/jpeg"
  std::vector<uint8_t> bytes;  // the encoded file
};

struct TokenLogprob {
  TokenId id = -1;
  float logprob = 0.0f;
  std::vector<std::pair<TokenId, float>> top;  // most likely first
};

}  // namespace hostrun
