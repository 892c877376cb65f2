// An EngineHandle over HTTP: any OpenAI-compatible server (hostrun's own
// api_server, vLLM, LMDeploy) becomes an engine a Frontend can talk to, so
// `serve api_client URL` and `serve gradio URL` reuse the chat and web
// frontends unchanged.
//
// One io thread runs every request's connection (Boost.Beast on Asio); there
// is no thread per request. Each request has its own connection, so cancel()
// simply closes it, which is how OpenAI-compatible servers learn that a
// client gave up. Stream callbacks run on the io thread.
//
// What maps to what:
//  - chat messages -> POST /v1/chat/completions (images as data: URLs);
//    text or token ids -> POST /v1/completions; always stream=true with
//    stream_options.include_usage, so the last event carries the server's
//    token counts when it sends them (0 when it does not);
//  - SamplingParams -> OpenAI fields; the fields OpenAI itself lacks but
//    vLLM/LMDeploy/hostrun accept (top_k, min_p, repetition_penalty,
//    ignore_eos, min_tokens, skip_special_tokens, stop_token_ids) are sent
//    only when they differ from their neutral value;
//  - a non-200 answer or an error object in the stream -> a final event with
//    finish == error and the server's own message (a StreamEvent has no
//    error code); what the server would refuse for certain (max_tokens at or
//    over its max_model_len) fails at submit with context_length_exceeded;
//  - GET /v1/models failing -> a Status whose code is the answer's kind:
//    OpenAI's error code where it is one the SDK has, else the HTTP status
//    (401/403 permission_denied, 429 resource_exhausted, 503 unavailable,
//    ...); a server that cannot be reached is unavailable, one that times
//    out deadline_exceeded;
//  - info() -> the model named by GET /v1/models (the first, unless one is
//    asked for) and its max_model_len when the server reports one.
// Logprobs are not mapped: a remote server reports tokens as text, and
// StreamEvent carries ids.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "hostrun/engine.hpp"

namespace hostrun::core {

struct ServerUrl {
  bool tls = false;
  std::string host;       // without brackets for IPv6
  std::string port;       // "80"/"443" when the URL names none
  std::string base_path;  // "" or "/prefix"; a trailing "/v1" is removed
  std::string text() const;  // scheme://host:port/base_path, for messages
};

// True when `text` starts with http:// or https:// (what `serve gradio`
// uses to tell a server from a model folder).
bool looks_like_url(std::string_view text) noexcept;

// "http://localhost:23333", "https://example.org/openai/v1", "http://[::1]:8000".
Result<ServerUrl> parse_server_url(std::string_view text);

struct RemoteEngineOptions {
  std::string url;
  std::string api_key;  // sent as "Authorization: Bearer KEY" when not empty
  std::string model;    // empty: the first model GET /v1/models lists
  // https:// only: PEM certificates of CAs trusted besides the system's (a
  // private CA). The certificate must name the URL's host either way.
  std::string ca_file;
  std::chrono::milliseconds connect_timeout{10'000};
  // The most time a request may wait for the next byte of its answer; a
  // prefill of a long prompt on a busy server is the slowest honest case.
  std::chrono::milliseconds idle_timeout{600'000};
};

class RemoteEngine final : public EngineHandle {
 public:
  // Starts the io thread and asks the server for its models; fails with the
  // server's answer when it cannot be reached or lists no model.
  static Result<std::unique_ptr<RemoteEngine>> open(RemoteEngineOptions options);
  ~RemoteEngine() override;  // cancels what is still running (each gets its final event)

  Result<uint64_t> submit(GenerationRequest request, StreamCallback on_event) noexcept override;
  void cancel(uint64_t request_id) noexcept override;
  EngineInfo info() const noexcept override;
  EngineCounters counters() const noexcept override;
  const Tokenizer* tokenizer() const noexcept override { return nullptr; }

  const ServerUrl& url() const noexcept;

  struct Impl;

 private:
  RemoteEngine() = default;
  std::shared_ptr<Impl> impl_;
};

}  // namespace hostrun::core
