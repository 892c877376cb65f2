// Reading OpenAI request bodies into engine requests, with OpenAI's errors.
//
// Everything a client can get wrong is checked here, before the engine sees
// it, so every mistake gets a 4xx naming the parameter, what was expected and
// what was found. Unknown fields are ignored (clients send extras), but fields
// we cannot honour (tools, a JSON response format, images from hosts the
// operator did not list) are refused rather than silently dropped. Images
// come as image_url parts holding data: URLs, or http(s) URLs the server
// fetches when their host is listed (ImageFetcher); the chat template puts
// each before its message's text ("<image>\n" + text for LLaVA), whatever
// the parts' order.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <hostrun/engine.hpp>
#include <hostrun/json_bounds.hpp>
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

// The most bytes one image of a request may have (OpenAI's limit too).
inline constexpr size_t kMaxImageBytes = 20u << 20;

// One prompt of /v1/completions: text, or token ids.
using PromptInput = std::variant<std::string, std::vector<TokenId>>;

struct ParsedRequest {
  bool chat = true;
  std::string model;  // as sent; empty when absent
  std::vector<ChatMessage> messages;       // chat
  std::vector<PromptInput> prompts;        // completions: one choice group per prompt
  SamplingParams sampling;
  int n = 1;
  bool stream = false;
  bool include_usage = false;
  bool echo = false;             // completions
  bool logprobs = false;         // chat: logprobs=true; completions: logprobs is a number
  std::string user;
};

// What the server does with an image_url that is an http(s) URL: nothing
// (an empty function: refused, 400), or fetch it when its host is listed
// (http::fetch_url with the server's image_url_hosts).
struct ImageFetcher {
  std::function<bool(const std::string& url)> allowed;
  std::function<Result<std::vector<uint8_t>>(const std::string& url)> fetch;
};

// `body` is the raw request body, parsed within `limits` (the server passes
// network_json_limits of its body limit). Without max_tokens, a chat reply
// may run to the session length; a completion gets 16 tokens (OpenAI's legacy
// default).
ParsedRequest parse_chat_request(const std::string& body, const JsonLimits& limits = {},
                                 const ImageFetcher& images = {});
ParsedRequest parse_completion_request(const std::string& body, const JsonLimits& limits = {});

// Parses a body that must be a JSON object: 400 when it is not JSON, not an
// object or nested too deep, 413 when it would take more memory than
// `limits` allow once parsed.
nlohmann::json parse_json_object(const std::string& body, const JsonLimits& limits);

// Refuses (400, context_length_exceeded) a completion with a text prompt of
// more bytes than `session_len` tokens can stand for, none of them over
// `longest_token_bytes` (tokenizer.hpp), before anything is tokenized: a
// megabyte prompt for a small session costs no tokenizer time. Chat messages
// get the same check from the engine. 0 for either checks nothing.
void refuse_unfittable_prompts(int32_t session_len, size_t longest_token_bytes, const ParsedRequest& request);

// What the engine gets for each prompt of a completion. A text prompt is
// tokenized here, once, as the engine would (its tokenizer, BOS by the
// tokenizer's rule, special tokens spelled out parsed), so its length is
// exact and the engine takes the ids as they are. Without a tokenizer (a
// remote engine) the text goes on and whoever tokenizes it judges it; so does
// a text the tokenizer refuses, for the engine to refuse with its reason.
std::vector<PromptInput> engine_prompts(const Tokenizer* tokenizer, const ParsedRequest& request);

// OpenAI refuses a request whose prompt + max_tokens exceed the context
// (400, code context_length_exceeded); this throws that refusal. A
// completion's prompts are counted exactly (`engine_prompts`, ids by now). A
// chat prompt exists only once the engine applies the chat template, so it
// is refused here only when max_tokens alone leaves no room; one that alone
// does not fit is refused by the engine (engine_refusal), and one that fits
// has its reply capped at the session length (finish "length").
// `session_len` <= 0 (unknown) checks nothing.
void check_context_length(int32_t session_len, const ParsedRequest& request,
                          const std::vector<PromptInput>& engine_prompts);

// What a client sees when the engine refuses a request, chosen by the code
// alone (the message is the engine's and may change). `chat` says which
// parameter a length refusal is about.
ApiError engine_refusal(const Status& refusal, bool chat);

}  // namespace hostrun::api
