// Frontend "gradio": a web chat page served by hostrun itself, plus Gradio's
// client API for the same chat function (gradio_api.hpp), so the page works
// in any browser and the Gradio ecosystem's clients can call it. The engine
// may be local or remote (`hostrun serve gradio URL|MODEL_DIR`); the plugin
// sees only an EngineHandle.
//
// Routes:
//   GET  /            the page (page.cpp), with the title, model and defaults filled in
//   GET  /api/info    the same facts as JSON
//   POST /api/chat    {messages, temperature, top_p, max_tokens} -> text/event-stream of
//                     {"text"} deltas and a last {"finish", "prompt_tokens",
//                     "completion_tokens"} or {"error"}; closing the connection cancels
//   + the Gradio routes
//
// With api_keys set, every route but the page itself (which holds no
// conversation and reaches no engine) needs `Authorization: Bearer KEY`, as
// the api_server's /v1 does; the page asks for the key and sends it.
#include <hostrun/json_bounds.hpp>
#include <hostrun/sdk.hpp>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>

#include "chat_settings.hpp"
#include "data_url.hpp"
#include "gradio_api.hpp"
#include "http_server.hpp"
#include "image_common/image.hpp"
#include "page.hpp"
#include "request_rules.hpp"
#include "uploads.hpp"

namespace {

using namespace hostrun;
using json = nlohmann::json;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string html_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

void replace_all(std::string& text, std::string_view from, std::string_view to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
}

http::Response bad_request(std::string message) {
  return http::json_error(400, message, "invalid_request_error");
}

// A fresh CSP nonce for each page load: only the page's own inline script and
// style, which carry it, may run, so nothing injected into the page could.
std::string csp_nonce() {
  std::random_device device;  // the kernel's generator, not a seeded sequence: a nonce must not be guessable
  return fmt::format("{:08x}{:08x}{:08x}{:08x}", device(), device(), device(), device());
}

// One /api/chat answer: who to cancel when the page goes away.
struct PageRequest {
  std::mutex mutex;
  uint64_t request_id = 0;
  bool aborted = false;
};

class GradioFrontend final : public Frontend {
 public:
  explicit GradioFrontend(const CreateContext& context) : log_(plugin_logger(context, "gradio")) {
    const Settings& s = *context.settings;
    server_name_ = s.get_string("server_name");
    server_port_ = uint16_t(s.get_int("server_port"));
    threads_ = int(s.get_int("threads"));
    worker_threads_ = int(s.get_int("worker_threads"));
    defaults_.title = s.get_string("title");
    defaults_.system = s.get_string("system");
    defaults_.temperature = s.get_number("temperature");
    defaults_.top_p = s.get_number("top_p");
    defaults_.top_k = s.get_int("top_k");
    defaults_.repetition_penalty = s.get_number("repetition_penalty");
    defaults_.max_new_tokens = s.get_int("max_new_tokens");
    api_keys_ = s.get_strings("api_keys");
    // Refused here, before the engine is opened; the host reports what this throws.
    if (Status keys = http::validate_api_keys(api_keys_, "gradio's api_keys"); !keys) throw Error(std::move(keys));
    // Read here too, so a missing or mismatched certificate or key stops the start before the model loads.
    auto tls = http::tls_from_settings(s.get_string("ssl_certfile"), s.get_string("ssl_keyfile"), "gradio");
    if (!tls) throw Error(tls.status());
    tls_ = *tls;
    allowed_hosts_ = s.get_strings("allowed_hosts");
    limits_.max_jobs = size_t(s.get_int("max_jobs"));
    limits_.max_jobs_per_session = size_t(s.get_int("max_jobs_per_session"));
    limits_.max_pending_bytes_per_session = size_t(s.get_int("max_pending_bytes_per_session"));
    limits_.max_pending_bytes = size_t(s.get_int("max_pending_bytes"));
  }

  Status run(EngineHandle& engine) noexcept override {
    return guard([&]() -> Status {
      engine_ = &engine;
      info_ = engine.info();
      page_pieces_ = render_page();
      http::ServerOptions options;
      options.address = server_name_;
      options.port = server_port_;
      options.threads = threads_;
      options.allowed_hosts = allowed_hosts_;
      options.tls = tls_;
      options.log = log_;
      options.server_header = "hostrun-gradio";
      // POST /upload takes files as browsers and @gradio/client send them;
      // every other route keeps to JSON (a form any site can send is refused).
      options.multipart_paths = gradio::GradioApi::upload_paths();
      auto server = std::make_unique<http::Server>(options);
      body_limits_ = network_json_limits(options.max_body_bytes);
      gradio::GradioApi gradio(engine, defaults_, limits_, body_limits_, log_);
      // Parsing a body and submitting a chat (which tokenizes it) leave the HTTP threads.
      http::WorkerPool workers(worker_threads_, log_);
      server->set_filter([this](std::shared_ptr<http::Exchange> x, const http::Handler& next) {
        const http::Request& request = x->request();
        bool open_route = request.path == "/" || request.path == "/favicon.ico";
        auto problem = open_route ? std::nullopt : http::bearer_key_problem(request, api_keys_);
        if (!problem) return next(std::move(x));
        // The page reads OpenAI's error shape; Gradio's clients read {"detail"}.
        http::Response r = request.path.starts_with("/api/")
                               ? http::json_error(401, *problem, "invalid_request_error", {}, "invalid_api_key")
                               : http::Response{401, "application/json", dump({{"detail", *problem}}), {}};
        r.headers.push_back({"WWW-Authenticate", "Bearer"});
        x->respond(std::move(r));
      });
      server->route("GET", "/", [this](std::shared_ptr<http::Exchange> x) {
        std::string nonce = csp_nonce();
        http::Response r;
        r.content_type = "text/html; charset=utf-8";
        for (size_t i = 0; i < page_pieces_.size(); ++i) r.body += (i ? nonce : std::string()) + page_pieces_[i];
        r.headers.push_back({"Cache-Control", "no-cache"});
        // The page loads nothing from elsewhere and talks only to this server; no other site may frame it.
        r.headers.push_back({"Content-Security-Policy",
                             fmt::format("default-src 'none'; script-src 'nonce-{0}'; style-src 'nonce-{0}'; "
                                         "connect-src 'self'; img-src 'self' blob:; base-uri 'none'; form-action 'none'; "
                                         "frame-ancestors 'none'", nonce)});
        r.headers.push_back({"X-Frame-Options", "DENY"});
        r.headers.push_back({"Referrer-Policy", "no-referrer"});
        x->respond(std::move(r));
      });
      server->route("GET", "/api/info", [this](std::shared_ptr<http::Exchange> x) {
        http::Response r;
        r.body = dump(page_config());
        x->respond(std::move(r));
      });
      server->route("POST", "/api/chat", [this, &workers](std::shared_ptr<http::Exchange> x) {
        workers.post([this, x] {
          if (!x->aborted()) chat(x);
        });
      });
      server->route("GET", "/favicon.ico", [](std::shared_ptr<http::Exchange> x) {
        http::Response r;
        r.status = 204;
        r.content_type = "image/x-icon";
        x->respond(std::move(r));
      });
      gradio.add_routes(*server, workers);
      Status started = server->start();
      if (!started) return started;
      {
        std::lock_guard lock(mutex_);
        server_ = server.get();
        if (stop_requested_) server_->stop();
      }
      // Scripts and people read this line for the address (port 0 picks a free one).
      std::printf("hostrun gradio: serving '%s' (model %s%s) on %s://%s:%u\n", defaults_.title.c_str(),
                  info_.model_name.c_str(), info_.remote ? ", remote" : "", tls_ ? "https" : "http",
                  server_name_.find(':') != std::string::npos ? ("[" + server_name_ + "]").c_str()
                                                              : server_name_.c_str(),
                  unsigned(server->port()));
      std::fflush(stdout);
      server->join();
      workers.join();  // what the HTTP threads handed over, before the API it calls stops
      gradio.stop();
      {
        std::lock_guard lock(mutex_);
        server_ = nullptr;
      }
      return Status();
    });
  }

  void stop() noexcept override {
    std::lock_guard lock(mutex_);
    stop_requested_ = true;
    if (server_) server_->stop();
  }

 private:
  json page_config() const {
    return {{"title", defaults_.title},
            {"model", info_.model_name},
            {"remote", info_.remote},
            {"session_len", info_.session_len},
            {"temperature", defaults_.temperature},
            {"top_p", defaults_.top_p},
            {"max_new_tokens", defaults_.max_new_tokens},
            {"system", defaults_.system},
            {"api_key_required", !api_keys_.empty()},
            {"images", info_.accepts_images}};
  }

  // The page cut where each load's CSP nonce goes. Cut before the title and
  // the config are filled in, so no text of theirs can stand in for a nonce.
  std::vector<std::string> render_page() const {
    std::string config = dump(page_config());
    replace_all(config, "</", "<\\/");  // nothing in the JSON may end the <script> element
    std::vector<std::string> pieces;
    std::string_view page = gradio::kPageTemplate;
    constexpr std::string_view kNonce = "CSP_NONCE";
    for (;;) {
      size_t at = page.find(kNonce);
      std::string piece(page.substr(0, at));
      replace_all(piece, "TITLE_HTML", html_escape(defaults_.title));
      replace_all(piece, "CONFIG_JSON", config);
      pieces.push_back(std::move(piece));
      if (at == std::string_view::npos) return pieces;
      page.remove_prefix(at + kNonce.size());
    }
  }

  void chat(const std::shared_ptr<http::Exchange>& exchange) {
    Result<json> parsed = parse_json_bounded<json>(exchange->request().body, body_limits_, "the body");
    if (!parsed && parsed.status().code() == ErrorCode::resource_exhausted)
      return exchange->respond(http::json_error(413, parsed.status().message(), "invalid_request_error"));
    if (!parsed) return exchange->respond(bad_request(parsed.status().message()));
    const json& body = *parsed;
    if (!body.is_object())
      return exchange->respond(bad_request(fmt::format(
          "the body must be a JSON object {{messages, temperature, top_p, max_tokens}}, got {}", describe_json_value(body))));
    auto messages_it = body.find("messages");
    if (messages_it == body.end() || !messages_it->is_array() || messages_it->empty())
      return exchange->respond(bad_request("\"messages\" must be a non-empty list of {role, content}"));
    std::vector<ChatMessage> messages;
    for (size_t i = 0; i < messages_it->size(); ++i) {
      const json& m = (*messages_it)[i];
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
          !m["content"].is_string())
        return exchange->respond(bad_request(fmt::format("messages[{}] must be {{\"role\": string, \"content\": string}}", i)));
      std::string role = m["role"].get<std::string>();
      if (role != "system" && role != "user" && role != "assistant")
        return exchange->respond(bad_request(fmt::format("messages[{}].role is {}; expected system, user or assistant", i,
                                                         describe_json_value(m["role"]))));
      ChatMessage message{role, m["content"].get<std::string>(), {}};
      // The page's images: data: URLs, each checked to be an image here.
      if (auto images = m.find("images"); images != m.end() && !images->is_null()) {
        if (!images->is_array() || role != "user")
          return exchange->respond(bad_request(fmt::format("messages[{}].images must be a list of data: URLs in a user message", i)));
        for (size_t k = 0; k < images->size(); ++k) {
          const json& url = (*images)[k];
          Result<http::DataUrl> data = url.is_string() ? http::parse_data_url(url.get<std::string>(), gradio::UploadLimits{}.max_file_bytes)
                                                       : Result<http::DataUrl>(Status(ErrorCode::invalid_argument, "not a string"));
          Result<ImageData> image = data ? image::image_data(std::move(data->bytes)) : Result<ImageData>(data.status());
          if (!image)
            return exchange->respond(bad_request(fmt::format("messages[{}].images[{}]: {}", i, k, image.status().message())));
          message.images.push_back(std::move(image).value());
        }
      }
      messages.push_back(std::move(message));
    }
    auto number = [&](const char* key, double fallback, double lo, double hi) -> std::optional<double> {
      auto it = body.find(key);
      if (it == body.end() || it->is_null()) return fallback;
      if (!it->is_number() || !(it->get<double>() >= lo && it->get<double>() <= hi)) return std::nullopt;
      return it->get<double>();
    };
    auto temperature = number("temperature", defaults_.temperature, 0, 100);
    auto top_p = number("top_p", defaults_.top_p, 1e-6, 1);
    auto max_tokens = number("max_tokens", double(defaults_.max_new_tokens), 1, 1e9);
    if (!temperature) return exchange->respond(bad_request("temperature must be a number from 0 to 100"));
    if (!top_p) return exchange->respond(bad_request("top_p must be a number above 0 and at most 1"));
    if (!max_tokens) return exchange->respond(bad_request("max_tokens must be a number of at least 1"));

    GenerationRequest request;
    request.input = std::move(messages);
    request.sampling = gradio::chat_sampling(defaults_, *temperature, *top_p, int64_t(*max_tokens));
    request.user = "page";
    auto state = std::make_shared<PageRequest>();
    EngineHandle* engine = engine_;
    exchange->on_abort([state, engine] {
      std::lock_guard lock(state->mutex);
      state->aborted = true;
      if (state->request_id) engine->cancel(state->request_id);
    });
    exchange->begin_stream(200, "text/event-stream", {{"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"}});
    std::weak_ptr<http::Exchange> weak = exchange;
    auto id = engine->submit(std::move(request), [weak, state, engine](const StreamEvent& e) {
      auto x = weak.lock();
      if (!x) return;
      bool gone = false;
      if (!e.text.empty()) gone = !x->write(http::sse_event(dump({{"text", e.text}})));
      if (e.finish != FinishReason::none) {
        json last = e.finish == FinishReason::error
                        ? json{{"error", e.error.empty() ? "the engine failed" : e.error}}
                        : json{{"finish", finish_reason_name(e.finish)},
                               {"prompt_tokens", e.prompt_tokens},
                               {"completion_tokens", e.completion_tokens}};
        x->write(http::sse_event(dump(last)));
        x->finish();
      } else if (gone) {
        std::lock_guard lock(state->mutex);
        if (state->request_id && !state->aborted) engine->cancel(state->request_id);
        state->aborted = true;
      }
    });
    if (!id) {
      exchange->write(http::sse_event(dump({{"error", gradio::refusal_text(id.status())}})));
      exchange->finish();
      return;
    }
    std::lock_guard lock(state->mutex);
    state->request_id = *id;
    if (state->aborted) engine->cancel(*id);
  }

  Logger log_;
  JsonLimits body_limits_;  // what /api/chat and the Gradio routes read: network_json_limits of the body limit
  std::string server_name_;
  uint16_t server_port_ = 6006;
  int threads_ = 2;
  int worker_threads_ = 2;
  gradio::ChatDefaults defaults_;
  std::vector<std::string> api_keys_;
  std::vector<std::string> allowed_hosts_;
  std::shared_ptr<http::TlsContext> tls_;  // null: plain HTTP
  gradio::JobLimits limits_;
  EngineHandle* engine_ = nullptr;
  EngineInfo info_;
  std::vector<std::string> page_pieces_;
  std::mutex mutex_;
  http::Server* server_ = nullptr;
  bool stop_requested_ = false;
};

// LMDeploy's `serve gradio` defaults (0.0.0.0:6006) and the chat plugin's sampling defaults.
const SettingSpec kSettings[] = {
    {"server_name", SettingType::string, "Address to listen on", false, "\"0.0.0.0\""},
    {"server_port", SettingType::integer, "Port to listen on (0: any free port, printed at start)", false, "6006", 0,
     65535},
    {"title", SettingType::string, "Title of the page and of the Gradio app", false, "\"hostrun chat\""},
    {"system", SettingType::string, "Default system prompt (empty: the chat template's)", false, "\"\""},
    {"temperature", SettingType::number, "Default sampling temperature (0: greedy)", false, "0.8", 0, 100},
    {"top_p", SettingType::number, "Default nucleus sampling threshold", false, "0.8", 1e-6, 1},
    {"top_k", SettingType::integer, "Top-k for every reply (0: all tokens)", false, "40", 0, 1e9},
    {"repetition_penalty", SettingType::number, "Repetition penalty for every reply", false, "1.0", 1e-6, 100},
    {"max_new_tokens", SettingType::integer, "Default most tokens in one reply", false, "512", 1, 1e9},
    {"threads", SettingType::integer, "HTTP server threads", false, "2", 1, 64},
    {"worker_threads", SettingType::integer, "Threads that parse and submit chats, off the HTTP threads", false, "2",
     1, 64},
    {"api_keys", SettingType::string_list,
     "Bearer keys the page's API and the Gradio API accept (empty: no authentication)", false, "[]"},
    {"allowed_hosts", SettingType::string_list,
     "Host names besides the bound address, IP addresses, localhost and this machine's name that requests may "
     "address (a proxy's public name; \"*\": any)", false, "[]"},
    {"ssl_certfile", SettingType::string,
     "TLS: PEM certificate chain (the server's certificate first); with ssl_keyfile the server speaks HTTPS only",
     false, "\"\""},
    {"ssl_keyfile", SettingType::string, "TLS: the certificate's PEM private key, unencrypted", false, "\"\""},
    {"max_jobs", SettingType::integer, "Gradio jobs running at once over every session (503 beyond)", false, "256", 1,
     1e6},
    {"max_jobs_per_session", SettingType::integer, "Gradio jobs running at once in one session (429 beyond)", false,
     "8", 1, 1e6},
    {"max_pending_bytes_per_session", SettingType::integer,
     "Undelivered Gradio messages kept for one session's stream; beyond, its jobs are cancelled", false, "1048576",
     1024, 1e12},
    {"max_pending_bytes", SettingType::integer,
     "Undelivered Gradio messages kept over every session; beyond, the session adding one has its jobs cancelled",
     false, "67108864", 1024, 1e12},
};
const RoleEntry kRoles[] = {role_entry<Frontend, GradioFrontend>(kSettings)};

}  // namespace

HOSTRUN_PLUGIN("gradio", "0.1.0", "Web chat page with streaming replies, plus Gradio's client API (/chat)", kRoles)
