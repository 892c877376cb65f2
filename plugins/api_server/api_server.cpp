// Frontend "api_server": an OpenAI-compatible HTTP server over the engine handle.
//
//   GET  /v1/models            the one served model
//   POST /v1/chat/completions  chat, streaming (SSE) or not, n choices
//   POST /v1/completions       raw prompts (string, list, token ids), echo, logprobs
//   GET  /health               200 while serving
//   GET  /metrics              Prometheus text
//
// Threads: the HTTP server's few io threads, a few worker threads that parse,
// tokenize and submit each generation request, and the engine's own thread. An
// engine callback only stamps the time and posts the event to the request's
// connection strand; everything else about a request (formatting, writing,
// counting) happens there, so a request's state needs no lock and a slow client
// never slows the engine. A client that goes away cancels its engine requests
// from the strand, and the engine frees their KV blocks before its next step.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <hostrun/sdk.hpp>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <unordered_set>

#include "fetch.hpp"
#include "http_server.hpp"
#include "worker_pool.hpp"
#include "metrics.hpp"
#include "openai_request.hpp"
#include "request_rules.hpp"

namespace {

using namespace hostrun;
using namespace hostrun::api;
using json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

std::string dump(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string random_id(std::string_view prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:016x}{:08x}", prefix, rng(), uint32_t(rng()));
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// What every request of one server shares. Held by shared_ptr from each
// request, so an engine event that arrives late finds it alive.
struct Shared {
  EngineHandle* engine = nullptr;  // valid while run() runs; run() waits for in-flight requests before returning
  const Tokenizer* tokenizer = nullptr;
  size_t longest_token_bytes = 0;  // of `tokenizer`; 0 without one
  std::string model_name;
  int32_t session_len = 0;
  int64_t started = 0;
  std::vector<std::string> api_keys;
  http::WorkerPool* workers = nullptr;  // parsing and tokenizing; outlives the server's threads
  JsonLimits body_limits;  // request bodies: depth and memory once parsed (network_json_limits of max_body_bytes)
  ImageFetcher image_fetcher;  // image_url http(s) URLs on image_url_hosts; empty: none fetched
  Metrics metrics;
  std::atomic<int64_t> in_flight{0};
  Logger log;
  // Engine requests not yet finished, so a stopping server can cancel them
  // and still tell their clients why (503 or an error event) before closing.
  std::mutex live_mutex;
  std::unordered_set<uint64_t> live;

  void cancel_all() {
    std::vector<uint64_t> ids;
    {
      std::lock_guard lock(live_mutex);
      ids.assign(live.begin(), live.end());
    }
    for (uint64_t id : ids) engine->cancel(id);
  }

  // One token's text, for logprobs.
  std::string token_text(TokenId id) const {
    std::string text;
    if (!tokenizer) return fmt::format("<{}>", id);
    TokenId one[1] = {id};
    if (!tokenizer->decode(one, {.skip_special_tokens = false}, text)) return fmt::format("<{}>", id);
    return text;
  }
};

void reply_error(Shared& shared, http::Exchange& exchange, const ApiError& e) {
  shared.metrics.count_error(e.status);
  http::Response response = http::json_error(e.status, e.message, e.type, e.param, e.code);
  // A full queue (429) or a stopping engine (503) is worth retrying: say when,
  // as TGI and the OpenAI clients' backoff expect.
  if (e.status == 429 || e.status == 503) response.headers.push_back({"Retry-After", "1"});
  exchange.respond(std::move(response));
}

const char* finish_reason_text(FinishReason r) {
  switch (r) {
    case FinishReason::stop: return "stop";
    case FinishReason::length: return "length";
    default: return "abort";
  }
}

struct ChoiceState {
  size_t prompt_index = 0;
  uint64_t engine_id = 0;
  bool submitted = false;
  bool done = false;
  std::string text;                    // non-streaming: the whole reply
  std::vector<TokenLogprob> logprobs;  // non-streaming: every token's
  size_t text_length = 0;              // completions' text_offset
  FinishReason finish = FinishReason::none;
  std::string error;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  std::optional<Clock::time_point> last_token;
};

// One HTTP request: n x prompts engine requests, answered as one response.
// Touched by one worker thread until submit_all() posts open(), then only on
// its connection's strand.
class Job : public std::enable_shared_from_this<Job> {
 public:
  // `engine_prompts`: what the engine gets for each of a completion's prompts
  // (openai_request.hpp); unused for chat.
  Job(std::shared_ptr<Shared> shared, std::shared_ptr<http::Exchange> exchange, ParsedRequest request,
      std::vector<PromptInput> engine_prompts)
      : shared_(std::move(shared)),
        exchange_(std::move(exchange)),
        request_(std::move(request)),
        engine_prompts_(std::move(engine_prompts)) {
    id_ = random_id(request_.chat ? "chatcmpl-" : "cmpl-");
    created_ = unix_now();
    size_t groups = request_.chat ? 1 : request_.prompts.size();
    for (size_t p = 0; p < groups; ++p)
      for (int k = 0; k < request_.n; ++k) {
        ChoiceState choice;
        choice.prompt_index = p;
        choices_.push_back(std::move(choice));
      }
  }

  // On a worker thread: submits every choice (the engine renders and
  // tokenizes a chat's messages here, off the I/O threads), then hands the
  // rest to the strand. Events that arrive before that wait for it.
  void submit_all() {
    auto self = shared_from_this();
    for (size_t i = 0; i < choices_.size(); ++i) {
      if (exchange_->aborted()) break;  // the client left (or the server stopped) while this waited
      GenerationRequest r;
      if (request_.chat)
        r.input = request_.messages;
      else
        std::visit([&](const auto& prompt) { r.input = prompt; }, engine_prompts_[choices_[i].prompt_index]);
      r.sampling = request_.sampling;
      // OpenAI refuses prompt + max_tokens over the context instead of cutting the reply.
      r.refuse_over_session_len = true;
      // Choices of one request differ, yet a seeded request is reproducible.
      if (r.sampling.seed) *r.sampling.seed += uint64_t(i % size_t(request_.n));
      r.user = request_.user;
      ++shared_->in_flight;
      auto submitted = shared_->engine->submit(std::move(r), [self, i](const StreamEvent& event) {
        Clock::time_point at = Clock::now();
        if (event.finish != FinishReason::none) --self->shared_->in_flight;
        self->exchange_->post([self, i, event, at]() mutable { self->on_event(i, std::move(event), at); });
      });
      if (!submitted) {
        --shared_->in_flight;
        cancel_submitted();
        refused_ = true;
        reply_error(*shared_, *exchange_, engine_refusal(submitted.status(), request_.chat));
        break;
      }
      choices_[i].engine_id = *submitted;
      choices_[i].submitted = true;
      {
        // Erased by on_event when the choice finishes.
        std::lock_guard lock(shared_->live_mutex);
        shared_->live.insert(*submitted);
      }
    }
    // Posted after every submit, so open() sees what this thread wrote.
    exchange_->post([self] { self->open(); });
  }

 private:
  // On the strand, once: from here on the client's hang-up cancels, the
  // stream's head goes out, and the events that came early are handled.
  void open() {
    auto self = shared_from_this();
    opened_ = true;
    remaining_ = size_t(std::count_if(choices_.begin(), choices_.end(), [](const ChoiceState& c) { return c.submitted; }));
    if (refused_) {
      aborted_ = true;  // answered with the refusal already; the cancelled choices only need their ends counted
    } else {
      exchange_->on_abort([self] { self->on_abort(); });  // runs at once when the client has already gone
      if (request_.stream) {
        exchange_->begin_stream(200, "text/event-stream");
        for (size_t i = 0; i < choices_.size(); ++i) {
          if (request_.chat) {
            write_chunk(i, json{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr);
          } else if (request_.echo) {
            write_chunk(i, prompt_text(choices_[i].prompt_index), nullptr, nullptr);
          }
        }
      }
    }
    for (auto& early : std::exchange(early_events_, {})) on_event(early.choice, std::move(early.event), early.at);
  }

  void cancel_submitted() {
    for (auto& c : choices_)
      if (c.submitted && !c.done) shared_->engine->cancel(c.engine_id);
  }

  void on_abort() {
    if (aborted_) return;
    aborted_ = true;
    uint64_t cancelled = 0;
    for (auto& c : choices_)
      if (c.submitted && !c.done) {
        shared_->engine->cancel(c.engine_id);
        ++cancelled;
      }
    shared_->metrics.count_disconnect_cancel(cancelled);
    shared_->log.debug("{}: the client went away; cancelled {} engine requests", id_, cancelled);
  }

  void on_event(size_t i, StreamEvent event, Clock::time_point at) {
    if (!opened_) {
      early_events_.push_back({i, std::move(event), at});
      return;
    }
    ChoiceState& c = choices_[i];
    if (c.done) return;
    size_t tokens = event.token_ids.empty() && !event.text.empty() ? 1 : event.token_ids.size();
    if (tokens > 0) {
      if (!first_token_seen_) {
        first_token_seen_ = true;
        shared_->metrics.observe_ttft(at - exchange_->request().received);
      }
      if (c.last_token) {
        auto gap = (at - *c.last_token) / double(tokens);
        for (size_t t = 0; t < tokens; ++t) shared_->metrics.observe_inter_token(gap);
      }
      c.last_token = at;
    }
    if (event.finish != FinishReason::none) {
      {
        std::lock_guard lock(shared_->live_mutex);
        shared_->live.erase(c.engine_id);
      }
      c.done = true;
      c.finish = event.finish;
      c.error = event.error;
      c.prompt_tokens = event.prompt_tokens;
      c.completion_tokens = event.completion_tokens;
      --remaining_;
    }
    if (aborted_) return;
    if (request_.stream) {
      stream_event(i, event);
    } else {
      c.text += event.text;
      c.logprobs.insert(c.logprobs.end(), event.logprobs.begin(), event.logprobs.end());
    }
    if (remaining_ == 0) complete();
  }

  void stream_event(size_t i, const StreamEvent& event) {
    ChoiceState& c = choices_[i];
    bool finished = event.finish != FinishReason::none;
    json logprobs = request_.logprobs && !event.logprobs.empty() ? logprobs_json(c, event.logprobs, event.text)
                                                                 : json();
    if (finished && (event.finish == FinishReason::error || event.finish == FinishReason::cancelled)) {
      if (!event.text.empty()) write_chunk(i, delta(event.text), &logprobs, nullptr);
      ApiError e{event.finish == FinishReason::error ? 500 : 503,
                 event.finish == FinishReason::error ? "generation failed: " + event.error
                                                     : "the request was cancelled (the server is stopping)",
                 "server_error", "", ""};
      exchange_->write(http::sse_event(dump(json{{"error", {{"message", e.message}, {"type", e.type},
                                                            {"param", nullptr}, {"code", nullptr}}}})));
      return;
    }
    if (!event.text.empty() || !logprobs.is_null() || finished) {
      const char* reason = finished ? finish_reason_text(event.finish) : nullptr;
      json body = request_.chat ? (event.text.empty() && finished ? json::object() : delta(event.text))
                                : json(event.text);
      write_chunk(i, std::move(body), &logprobs, reason);
    }
    c.text_length += event.text.size();
  }

  json delta(const std::string& text) const { return json{{"content", text}}; }

  // Chat: `body` is the delta; completions: the text.
  void write_chunk(size_t i, json body, const json* logprobs, const char* finish_reason) {
    json choice = {{"index", i}};
    choice[request_.chat ? "delta" : "text"] = std::move(body);
    choice["logprobs"] = logprobs ? *logprobs : json();
    choice["finish_reason"] = finish_reason ? json(finish_reason) : json();
    json chunk = {{"id", id_},
                  {"object", request_.chat ? "chat.completion.chunk" : "text_completion"},
                  {"created", created_},
                  {"model", shared_->model_name},
                  {"choices", json::array({std::move(choice)})}};
    if (request_.include_usage) chunk["usage"] = nullptr;
    exchange_->write(http::sse_event(dump(chunk)));
  }

  std::string prompt_text(size_t prompt_index) const {
    const PromptInput& prompt = request_.prompts[prompt_index];
    if (auto* text = std::get_if<std::string>(&prompt)) return *text;
    std::string text;
    if (shared_->tokenizer) (void)shared_->tokenizer->decode(std::get<std::vector<TokenId>>(prompt), {}, text);
    return text;
  }

  json logprobs_json(ChoiceState& c, const std::vector<TokenLogprob>& logprobs, const std::string& text) const {
    (void)text;
    if (request_.chat) {
      json content = json::array();
      for (const auto& lp : logprobs) {
        auto entry = [&](TokenId id, float value) {
          std::string token = shared_->token_text(id);
          json bytes = json::array();
          for (unsigned char b : token) bytes.push_back(int(b));
          return json{{"token", token}, {"logprob", value}, {"bytes", bytes}};
        };
        json item = entry(lp.id, lp.logprob);
        json top = json::array();
        for (size_t k = 0; k < lp.top.size() && int32_t(k) < request_.sampling.top_logprobs; ++k)
          top.push_back(entry(lp.top[k].first, lp.top[k].second));
        item["top_logprobs"] = std::move(top);
        content.push_back(std::move(item));
      }
      return json{{"content", std::move(content)}};
    }
    json tokens = json::array(), token_logprobs = json::array(), top = json::array(), offsets = json::array();
    size_t offset = c.text_length + (request_.echo ? prompt_text(c.prompt_index).size() : 0);
    for (const auto& lp : logprobs) {
      std::string token = shared_->token_text(lp.id);
      tokens.push_back(token);
      token_logprobs.push_back(lp.logprob);
      json alternatives = json::object();
      for (size_t k = 0; k < lp.top.size() && int32_t(k) < request_.sampling.top_logprobs; ++k)
        alternatives[shared_->token_text(lp.top[k].first)] = lp.top[k].second;
      top.push_back(std::move(alternatives));
      offsets.push_back(offset);
      offset += token.size();
    }
    return json{{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
  }

  json usage() const {
    int64_t prompt = 0, completion = 0;
    for (size_t i = 0; i < choices_.size(); ++i) {
      // n choices of one prompt share it: OpenAI counts its tokens once.
      if (i % size_t(request_.n) == 0) prompt += choices_[i].prompt_tokens;
      completion += choices_[i].completion_tokens;
    }
    return json{{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
  }

  void complete() {
    shared_->metrics.observe_e2e(Clock::now() - exchange_->request().received);
    const ChoiceState* failed = nullptr;
    for (const auto& c : choices_)
      if (c.finish == FinishReason::error || c.finish == FinishReason::cancelled) failed = &c;
    if (request_.stream) {
      if (request_.include_usage && !failed) {
        json chunk = {{"id", id_},
                      {"object", request_.chat ? "chat.completion.chunk" : "text_completion"},
                      {"created", created_},
                      {"model", shared_->model_name},
                      {"choices", json::array()},
                      {"usage", usage()}};
        exchange_->write(http::sse_event(dump(chunk)));
      }
      exchange_->write(http::sse_event("[DONE]"));
      exchange_->finish();
      return;
    }
    if (failed) {
      ApiError e{failed->finish == FinishReason::error ? 500 : 503,
                 failed->finish == FinishReason::error ? "generation failed: " + failed->error
                                                       : "the request was cancelled (the server is stopping)",
                 "server_error", "", ""};
      return reply_error(*shared_, *exchange_, e);
    }
    json out_choices = json::array();
    for (size_t i = 0; i < choices_.size(); ++i) {
      ChoiceState& c = choices_[i];
      json choice = {{"index", i}, {"finish_reason", finish_reason_text(c.finish)}};
      c.text_length = 0;
      json logprobs = request_.logprobs ? logprobs_json(c, c.logprobs, c.text) : json();
      if (request_.chat) {
        choice["message"] = {{"role", "assistant"}, {"content", c.text}};
      } else {
        choice["text"] = request_.echo ? prompt_text(c.prompt_index) + c.text : c.text;
      }
      choice["logprobs"] = std::move(logprobs);
      out_choices.push_back(std::move(choice));
    }
    json body = {{"id", id_},
                 {"object", request_.chat ? "chat.completion" : "text_completion"},
                 {"created", created_},
                 {"model", shared_->model_name},
                 {"choices", std::move(out_choices)},
                 {"usage", usage()}};
    http::Response response;
    response.body = dump(body);
    exchange_->respond(std::move(response));
  }

  std::shared_ptr<Shared> shared_;
  std::shared_ptr<http::Exchange> exchange_;
  ParsedRequest request_;
  std::vector<PromptInput> engine_prompts_;
  std::string id_;
  int64_t created_ = 0;
  std::vector<ChoiceState> choices_;
  size_t remaining_ = 0;
  bool first_token_seen_ = false;
  bool aborted_ = false;
  bool refused_ = false;  // the engine refused a choice; written by submit_all before open() runs
  bool opened_ = false;
  struct EarlyEvent {
    size_t choice;
    StreamEvent event;
    Clock::time_point at;
  };
  std::vector<EarlyEvent> early_events_;  // events that reached the strand before open()
};

// Parsing, tokenizing and submitting run on a worker thread (Shared::workers);
// the I/O thread only hands the request over.
void handle_generation(const std::shared_ptr<Shared>& shared, const std::shared_ptr<http::Exchange>& exchange,
                       bool chat) {
  shared->metrics.count_request(chat ? "/v1/chat/completions" : "/v1/completions");
  shared->workers->post([shared, exchange, chat] {
    if (exchange->aborted()) return;  // gone while it waited: nothing to parse for
    try {
      ParsedRequest request = chat ? parse_chat_request(exchange->request().body, shared->body_limits, shared->image_fetcher)
                                   : parse_completion_request(exchange->request().body, shared->body_limits);
      if (!request.model.empty() && request.model != shared->model_name)
        fail(404, fmt::format("The model '{}' does not exist; this server serves '{}'", request.model,
                              shared->model_name),
             "model", "model_not_found");
      refuse_unfittable_prompts(shared->session_len, shared->longest_token_bytes, request);
      std::vector<PromptInput> prompts = engine_prompts(shared->tokenizer, request);
      check_context_length(shared->session_len, request, prompts);
      std::make_shared<Job>(shared, exchange, std::move(request), std::move(prompts))->submit_all();
    } catch (const ApiException& e) {
      reply_error(*shared, *exchange, e.error);
    }
  });
}

class ApiServer final : public Frontend {
 public:
  explicit ApiServer(const CreateContext& context) : log_(plugin_logger(context, "api_server")) {
    const Settings& s = *context.settings;
    options_.address = s.get_string("server_name");
    options_.port = uint16_t(s.get_int("server_port"));
    options_.threads = int(s.get_int("io_threads"));
    worker_threads_ = int(s.get_int("worker_threads"));
    options_.cors.allow_origins = s.get_strings("allow_origins");
    options_.cors.allow_credentials = s.get_bool("allow_credentials");
    options_.cors.allow_methods = s.get_strings("allow_methods");
    options_.cors.allow_headers = s.get_strings("allow_headers");
    options_.max_body_bytes = size_t(s.get_int("max_body_bytes"));
    options_.allowed_hosts = s.get_strings("allowed_hosts");
    options_.server_header = "hostrun-api_server";
    options_.log = log_;
    api_keys_ = s.get_strings("api_keys");
    // Refused here, before the engine is opened; the host reports what this throws.
    if (Status keys = http::validate_api_keys(api_keys_, "api_server's api_keys"); !keys) throw Error(std::move(keys));
    // Read here too, so a missing or mismatched certificate or key stops the start before the model loads.
    auto tls = http::tls_from_settings(s.get_string("ssl_certfile"), s.get_string("ssl_keyfile"), "api_server");
    if (!tls) throw Error(tls.status());
    options_.tls = *tls;
    served_model_name_ = s.get_string("served_model_name");
    fetch_limits_.allowed_hosts = s.get_strings("image_url_hosts");
    fetch_limits_.max_bytes = kMaxImageBytes;
    fetch_limits_.timeout = std::chrono::milliseconds(int64_t(s.get_number("image_url_timeout") * 1000));
  }

  Status run(EngineHandle& engine) noexcept override {
    return guard([&]() -> Status {
      auto shared = std::make_shared<Shared>();
      shared->engine = &engine;
      shared->tokenizer = engine.tokenizer();
      if (shared->tokenizer) shared->longest_token_bytes = longest_token_bytes(*shared->tokenizer);
      EngineInfo info = engine.info();
      shared->model_name = served_model_name_.empty() ? info.model_name : served_model_name_;
      shared->session_len = info.session_len;
      shared->started = unix_now();
      shared->api_keys = api_keys_;
      shared->body_limits = network_json_limits(options_.max_body_bytes);
      if (!fetch_limits_.allowed_hosts.empty()) {
        shared->image_fetcher.allowed = [limits = fetch_limits_](const std::string& url) { return http::fetch_allowed(url, limits); };
        shared->image_fetcher.fetch = [limits = fetch_limits_](const std::string& url) { return http::fetch_url(url, limits); };
      }
      shared->log = log_;
      // Declared before the server, so it is joined after the server's threads, the only ones that post to it.
      http::WorkerPool workers(worker_threads_, log_);
      shared->workers = &workers;

      auto server = std::make_unique<http::Server>(options_);
      add_routes(*server, shared);
      if (Status started = server->start(); !started) return started;
      std::printf("hostrun api_server: serving '%s' on %s://%s:%u (OpenAI API under /v1; session length %d)\n",
                  shared->model_name.c_str(), options_.tls ? "https" : "http", options_.address.c_str(),
                  unsigned(server->port()), shared->session_len);
      std::fflush(stdout);
      {
        std::unique_lock lock(mutex_);
        stop_cv_.wait(lock, [&] { return stop_requested_; });
      }
      // Graceful: no new connections; running requests are cancelled and their
      // clients told so (503, or an error event and [DONE]); then whatever is
      // left is closed. Bounded, because the host ends the process 3 s after
      // the signal.
      server->drain();
      shared->cancel_all();
      auto deadline = Clock::now() + std::chrono::seconds(1);
      while (shared->in_flight.load() > 0 && Clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the last answers reach the sockets
      server->stop();
      if (int64_t left = shared->in_flight.load(); left > 0)
        log_.warn("stopping with {} engine requests still finishing", left);
      server->join();
      std::printf("hostrun api_server: stopped\n");
      std::fflush(stdout);
      return Status();
    });
  }

  void stop() noexcept override {
    std::lock_guard lock(mutex_);
    stop_requested_ = true;
    stop_cv_.notify_all();
  }

 private:
  void add_routes(http::Server& server, const std::shared_ptr<Shared>& shared) {
    server.set_filter([shared](std::shared_ptr<http::Exchange> exchange, const http::Handler& next) {
      const http::Request& request = exchange->request();
      // As in LMDeploy, only the API needs the key; /health and /metrics stay open for probes and scrapers.
      if (request.path.starts_with("/v1/")) {
        if (auto problem = http::bearer_key_problem(request, shared->api_keys)) {
          shared->metrics.count_error(401);
          http::Response response = http::json_error(401, *problem, "invalid_request_error", {}, "invalid_api_key");
          response.headers.push_back({"WWW-Authenticate", "Bearer"});
          return exchange->respond(std::move(response));
        }
      }
      next(std::move(exchange));
    });
    server.route("GET", "/v1/models", [shared](std::shared_ptr<http::Exchange> exchange) {
      shared->metrics.count_request("/v1/models");
      json model = {{"id", shared->model_name},      {"object", "model"},   {"created", shared->started},
                    {"owned_by", "hostrun"},         {"root", shared->model_name},
                    {"max_model_len", shared->session_len}};
      http::Response response;
      response.body = dump(json{{"object", "list"}, {"data", json::array({model})}});
      exchange->respond(std::move(response));
    });
    server.route("POST", "/v1/chat/completions",
                 [shared](std::shared_ptr<http::Exchange> exchange) { handle_generation(shared, exchange, true); });
    server.route("POST", "/v1/completions",
                 [shared](std::shared_ptr<http::Exchange> exchange) { handle_generation(shared, exchange, false); });
    server.route("GET", "/health", [shared](std::shared_ptr<http::Exchange> exchange) {
      shared->metrics.count_request("/health");
      http::Response response;
      response.body = R"({"status":"ok"})";
      exchange->respond(std::move(response));
    });
    http::Server* server_ptr = &server;
    server.route("GET", "/metrics", [shared, server_ptr](std::shared_ptr<http::Exchange> exchange) {
      shared->metrics.count_request("/metrics");
      ScrapeInputs inputs;
      inputs.engine = shared->engine->counters();
      http::ServerStats stats = server_ptr->stats();
      inputs.connections_open = stats.connections_open;
      inputs.connections_accepted = stats.connections_accepted;
      inputs.aborted_exchanges = stats.aborted_exchanges;
      inputs.engine_requests_in_flight = shared->in_flight.load();
      http::Response response;
      response.content_type = "text/plain; version=0.0.4; charset=utf-8";
      response.body = shared->metrics.render(inputs);
      exchange->respond(std::move(response));
    });
  }

  Logger log_;
  http::ServerOptions options_;
  std::vector<std::string> api_keys_;
  std::string served_model_name_;
  int worker_threads_ = 2;
  std::mutex mutex_;
  http::FetchLimits fetch_limits_;
  std::condition_variable stop_cv_;
  bool stop_requested_ = false;
};

const SettingSpec kSettings[] = {
    {"server_name", SettingType::string, "Address to listen on (0.0.0.0: every interface)", false, "\"0.0.0.0\""},
    {"server_port", SettingType::integer, "Port to listen on (0: any free port, printed at start)", false, "23333", 0,
     65535},
    {"api_keys", SettingType::string_list, "Bearer keys the /v1 API accepts (empty: no authentication)", false, "[]"},
    {"allowed_hosts", SettingType::string_list,
     "Host names besides the bound address, IP addresses, localhost and this machine's name that requests may "
     "address (a proxy's public name; \"*\": any)", false, "[]"},
    {"allow_origins", SettingType::string_list, "CORS: origins allowed to call the API (\"*\": any; empty: no CORS)",
     false, "[]"},
    {"allow_credentials", SettingType::boolean, "CORS: allow credentials", false, "false"},
    {"allow_methods", SettingType::string_list, "CORS: allowed methods", false, "[\"*\"]"},
    {"allow_headers", SettingType::string_list, "CORS: allowed headers", false, "[\"*\"]"},
    {"served_model_name", SettingType::string, "Model name in /v1/models and responses (empty: the model folder's)",
     false, "\"\""},
    {"io_threads", SettingType::integer, "Threads serving HTTP (the engine has its own)", false, "2", 1, 64},
    {"image_url_hosts", SettingType::string_list,
     "Hosts whose http(s) image URLs the server fetches for image_url parts (\"*\": any; empty: data: URLs only). "
     "A request can make the server reach any listed host", false, "[]"},
    {"image_url_timeout", SettingType::number, "Seconds one image fetch may take, redirects (at most 3) included",
     false, "10", 0.1, 600},
    {"worker_threads", SettingType::integer, "Threads that parse and tokenize requests, off the HTTP threads", false,
     "2", 1, 64},
    {"max_body_bytes", SettingType::integer, "Largest request body accepted", false, "16777216", 1024, 1 << 30},
    {"ssl_certfile", SettingType::string,
     "TLS: PEM certificate chain (the server's certificate first); with ssl_keyfile the server speaks HTTPS only",
     false, "\"\""},
    {"ssl_keyfile", SettingType::string, "TLS: the certificate's PEM private key, unencrypted", false, "\"\""},
};
const RoleEntry kRoles[] = {role_entry<Frontend, ApiServer>(kSettings)};

}  // namespace

HOSTRUN_PLUGIN("api_server", "0.1.0", "OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, "
               "/v1/models, /health, /metrics", kRoles)
