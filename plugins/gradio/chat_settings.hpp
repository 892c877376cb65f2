// What the page and the Gradio API share: the plugin's defaults and how one
// chat turn becomes a GenerationRequest.
#pragma once

#include <hostrun/engine.hpp>
#include <string>
#include <vector>

namespace hostrun::gradio {

struct ChatDefaults {
  std::string title;
  std::string system;  // empty: the chat template's own
  double temperature = 0.8;
  double top_p = 0.8;
  int64_t top_k = 40;
  double repetition_penalty = 1.0;
  int64_t max_new_tokens = 512;
};

// The turn's sampling: the caller's temperature/top-p/max tokens over the defaults.
inline SamplingParams chat_sampling(const ChatDefaults& defaults, double temperature, double top_p,
                                    int64_t max_tokens) {
  SamplingParams s;
  s.temperature = float(temperature);
  s.top_p = float(top_p);
  s.top_k = int32_t(defaults.top_k);
  s.repetition_penalty = float(defaults.repetition_penalty);
  s.max_tokens = int32_t(max_tokens);
  return s;
}

}  // namespace hostrun::gradio
