// The engine handle a Frontend talks to: submit a request, stream its tokens, cancel it.
//
// The same handle fronts a local engine (scheduler + Model in this process) and
// a remote one (an OpenAI-compatible server reached over HTTP), so a frontend
// such as the terminal chat or the web page works against either unchanged.
// A request therefore carries chat messages or text, not only token ids: a
// remote engine has no tokenizer of its own.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "hostrun/generation.hpp"
#include "hostrun/status.hpp"
#include "hostrun/tokenizer.hpp"

namespace hostrun {

struct ChatMessage {
  std::string role;  // system, user, assistant
  std::string content;
  std::vector<ImageData> images;
};

struct GenerationRequest {
  // Chat messages are rendered through the chat template; text is tokenized
  // as is (with BOS per the tokenizer); ids are used as they are.
  std::variant<std::vector<ChatMessage>, std::string, std::vector<TokenId>> input;
  SamplingParams sampling;
  std::string user;  // free-form tag for logs and metrics
  // Refuse at submit (context_length_exceeded) a request whose prompt plus
  // sampling.max_tokens exceeds the session length, as OpenAI's API does,
  // instead of cutting its reply at the session length (LMDeploy's way).
  bool refuse_over_session_len = false;
};

enum class FinishReason : uint8_t { none, stop, length, cancelled, error };

constexpr const char* finish_reason_name(FinishReason r) noexcept {
  switch (r) {
    case FinishReason::none: return "none";
    case FinishReason::stop: return "stop";
    case FinishReason::length: return "length";
    case FinishReason::cancelled: return "cancelled";
    case FinishReason::error: return "error";
  }
  return "?";
}

// One delivery to the frontend. Tokens arrive in order; the last event of a
// request has finish != none and is the only one with it.
struct StreamEvent {
  uint64_t request_id = 0;
  std::string text;               // newly final text (never a broken UTF-8 sequence)
  std::vector<TokenId> token_ids; // the ids behind it (empty from a remote engine)
  std::vector<TokenLogprob> logprobs;
  FinishReason finish = FinishReason::none;
  std::string error;              // when finish == error
  ErrorCode error_code = ErrorCode::ok;  // when finish == error: what kind (frontends map it, never the text)
  int32_t prompt_tokens = 0;      // set on the last event
  int32_t completion_tokens = 0;  // set on the last event
};

// Called from the engine's own thread; it must return quickly and must not
// call back into the engine except cancel().
using StreamCallback = std::function<void(const StreamEvent&)>;

struct EngineInfo {
  std::string model_name;
  int32_t session_len = 0;  // prompt + completion tokens a request may hold
  bool remote = false;
  bool accepts_images = false;  // chat messages may carry images (the model has a vision encoder)
};

struct EngineCounters {
  uint64_t requests_submitted = 0;
  uint64_t requests_finished = 0;
  uint64_t requests_cancelled = 0;
  uint64_t requests_rejected = 0;   // refused at submit because the queue was full
  uint64_t requests_timed_out = 0;  // ended by the per-request time limit
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
  uint32_t running = 0;
  uint32_t waiting = 0;
  uint32_t kv_blocks_total = 0;
  uint32_t kv_blocks_used = 0;
};

class EngineHandle {
 public:
  virtual ~EngineHandle() = default;
  // Queues a request; its events go to `on_event`. Fails at once (and calls
  // nothing) when the request can never run, e.g. a prompt over session_len.
  virtual Result<uint64_t> submit(GenerationRequest request, StreamCallback on_event) noexcept = 0;
  // Stops a request at any time; its final event says cancelled and its KV
  // blocks are free by the time the engine's next step starts.
  virtual void cancel(uint64_t request_id) noexcept = 0;
  virtual EngineInfo info() const noexcept = 0;
  virtual EngineCounters counters() const noexcept = 0;
  // Token counting for clients that need usage numbers before generating.
  // nullptr for a remote engine.
  virtual const Tokenizer* tokenizer() const noexcept = 0;
};

}  // namespace hostrun
