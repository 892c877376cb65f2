// Reading OpenAI request bodies into engine requests, with OpenAI's errors.
//
// Everything a client can get wrong is checked here, before the engine sees
// it, so every mistake gets a 4xx naming the parameter, what was expected and
// what was found. Unknown fields are ignored (clients send extras), but fields
// we cannot honour (tools, a JSON response format, image parts) are refused
// rather than silently dropped.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <hostrun/engine.hpp>
#include <nlohmann/json.hpp>

namespace hostrun::api {

// An error a client receives: {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;
  std::string code;
};

// Thrown by the parsers and caught by the handlers.
struct ApiException {
  ApiError error;
};

[[noreturn]] void fail(int status, std::string message, std::string param = {}, std::string code = {},
                       std::string type = "invalid_request_error");

// One prompt of /v1/completions: text, or token ids.
using PromptInput = std::variant<std::string, std::vector<TokenId>>;

struct ParsedRequest {
  bool chat = true;
  std::string model;  // as sent; empty when absent
  std::vector<ChatMessage> messages;       // chat
  std::vector<PromptInput> prompts;        // completions: one choice group per prompt
  SamplingParams sampling;
  bool max_tokens_given = false;
  int n = 1;
  bool stream = false;
  bool include_usage = false;
  bool echo = false;             // completions
  bool logprobs = false;         // chat: logprobs=true; completions: logprobs is a number
  std::string user;
};

// `body` is the raw request body. Without max_tokens, a chat reply may run to
// the session length; a completion gets 16 tokens (OpenAI's legacy default).
ParsedRequest parse_chat_request(const std::string& body);
ParsedRequest parse_completion_request(const std::string& body);

// Parses a body that must be a JSON object.
nlohmann::json parse_json_object(const std::string& body);

}  // namespace hostrun::api
