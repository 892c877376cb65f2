// What the page and the Gradio API share: the plugin's defaults, how one
// chat turn becomes a GenerationRequest, and how a refused turn reads.
#pragma once

#include <hostrun/engine.hpp>
#include <hostrun/status.hpp>
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

// What a person reads when the engine refuses a turn: its reason and, when
// the conversation has outgrown the session (told by the code, whatever the
// wording), what to do about it.
inline std::string refusal_text(const Status& refusal) {
  if (refusal.code() == ErrorCode::context_length_exceeded)
    return refusal.message() + " (the conversation no longer fits the model's context: start a new one)";
  return refusal.message();
}

}  // namespace hostrun::gradio
