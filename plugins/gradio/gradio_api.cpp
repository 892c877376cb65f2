// Gradio's client API for one chat function (see the header for the shape).
#include "gradio_api.hpp"

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <thread>

#include "data_url.hpp"
#include "image_common/image.hpp"
#include "multipart.hpp"
#include "uploads.hpp"

namespace hostrun::gradio {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// The component and dependency ids of the app the config describes.
constexpr int kChatFn = 1;
enum Component : int { kMessage = 1, kHistory, kSystem, kTemperature, kTopP, kMaxTokens, kReply };

// Gradio clients older than the prefix use the bare paths; both are served.
constexpr const char* kApiPrefix = "/gradio_api";
// Gradio sends one every 15 s so that proxies keep an idle stream open.
constexpr auto kHeartbeatEvery = std::chrono::seconds(15);
// A session whose client never opened its stream is dropped after this.
constexpr auto kUnclaimedSessionLife = std::chrono::seconds(120);
// A job whose session has had no stream open for this long since it joined is
// cancelled: @gradio/client opens the stream within milliseconds of the join,
// and a job nobody reads would otherwise run to max_tokens while its events
// pile up here.
constexpr auto kUnwatchedJobGrace = std::chrono::seconds(5);
// How long an idle session's stream stays open before close_stream. The
// client reuses a stream it believes open: one that submits again right after
// a result (a script calling predict twice) must find it still open, or its
// next event would go to a stream the client is about to drop.
constexpr auto kCloseGrace = std::chrono::seconds(1);

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

http::Response json_response(int status, const json& body) {
  http::Response r;
  r.status = status;
  r.body = dump(body);
  return r;
}

// Gradio answers a request it cannot use with 422 and {"detail": ...}.
http::Response unprocessable(std::string detail) { return json_response(422, {{"detail", std::move(detail)}}); }

std::string query_value(std::string_view query, std::string_view key) {
  size_t start = 0;
  while (start <= query.size()) {
    size_t end = query.find('&', start);
    std::string_view pair = query.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    size_t eq = pair.find('=');
    if (pair.substr(0, eq) == key && eq != std::string_view::npos) {
      // Session hashes are [a-z0-9]; decode %XX anyway for any other client.
      std::string out;
      std::string_view v = pair.substr(eq + 1);
      for (size_t i = 0; i < v.size(); ++i) {
        unsigned byte = 0;
        if (v[i] == '%' && i + 2 < v.size() &&
            std::from_chars(v.data() + i + 1, v.data() + i + 3, byte, 16).ptr == v.data() + i + 3) {
          out += char(byte);
          i += 2;
        } else {
          out += v[i] == '+' ? ' ' : v[i];
        }
      }
      return out;
    }
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return {};
}

// The text of a message content in any of the shapes Gradio clients send:
// a string, {"text": ...}, or a list of parts, each a string or {"text": ...}.
// A list inside a list is not a shape any client sends; refusing it keeps
// this walk one level deep.
std::optional<std::string> content_text(const json& content) {
  auto single = [](const json& part) -> std::optional<std::string> {
    if (part.is_string()) return part.get<std::string>();
    if (part.is_object()) {
      auto text = part.find("text");
      if (text != part.end() && text->is_string()) return text->get<std::string>();
    }
    return std::nullopt;
  };
  if (content.is_null()) return std::string();
  if (!content.is_array()) return single(content);
  std::string out;
  for (const auto& part : content) {
    auto piece = single(part);
    if (!piece) return std::nullopt;
    out += *piece;
  }
  return out;
}

struct ChatInputs {
  std::vector<ChatMessage> messages;
  SamplingParams sampling;
};

// The images of a MultimodalTextbox value ({"text", "files": [...]}): each
// file a FileData ({"path", "url", ...}) or a path, naming a file uploaded to
// this server (POST /upload) or holding a data: URL. Nothing is fetched.
Result<std::vector<ImageData>> message_images(const json& message, UploadStore& uploads) {
  std::vector<ImageData> images;
  if (!message.is_object()) return images;
  auto files = message.find("files");
  if (files == message.end() || files->is_null()) return images;
  auto bad = [](std::string message) { return Status(ErrorCode::invalid_argument, std::move(message)); };
  if (!files->is_array()) return bad("data[0].files must be a list of files");
  for (size_t i = 0; i < files->size(); ++i) {
    const json& file = (*files)[i];
    const std::string where = fmt::format("data[0].files[{}]", i);
    std::string path, url;
    if (file.is_string()) {
      path = file.get<std::string>();
    } else if (file.is_object()) {
      if (auto p = file.find("path"); p != file.end() && p->is_string()) path = p->get<std::string>();
      if (auto u = file.find("url"); u != file.end() && u->is_string()) url = u->get<std::string>();
    } else {
      return bad(fmt::format("{} must be a file ({{\"path\": ...}}) or a path", where));
    }
    std::optional<std::vector<uint8_t>> bytes = uploads.get(path);
    if (!bytes) {
      const std::string& data_url = url.starts_with("data:") ? url : path;
      if (!data_url.starts_with("data:"))
        return bad(fmt::format("{}: '{}' is neither a file uploaded to this server (POST /upload; uploads are "
                               "kept 10 minutes) nor a data: URL; this server fetches nothing",
                               where, path.empty() ? url : path));
      Result<http::DataUrl> decoded = http::parse_data_url(data_url, UploadLimits{}.max_file_bytes);
      if (!decoded) return bad(fmt::format("{}: {}", where, decoded.status().message()));
      bytes = std::move(decoded->bytes);
    }
    Result<ImageData> image = image::image_data(std::move(*bytes));
    if (!image) return bad(fmt::format("{}: {}", where, image.status().message()));
    images.push_back(std::move(image).value());
  }
  return images;
}

// data = [message, history, system_prompt, temperature, top_p, max_tokens];
// trailing values may be missing or null (their defaults apply).
Result<ChatInputs> parse_chat_inputs(const json& data, const ChatDefaults& defaults, UploadStore& uploads) {
  auto bad = [](std::string message) { return Status(ErrorCode::invalid_argument, std::move(message)); };
  if (!data.is_array()) return bad("\"data\" must be an array: [message, history, system_prompt, temperature, top_p, max_tokens]");
  if (data.size() > 6) return bad(fmt::format("\"data\" has {} values; /chat takes at most 6", data.size()));
  auto at = [&](size_t i) -> const json& {
    static const json null_value;
    return i < data.size() ? data[i] : null_value;
  };
  ChatInputs in;
  auto message = content_text(at(0));
  auto images = message_images(at(0), uploads);
  if (!images) return images.status();
  if (!message || (message->empty() && images->empty()))
    return bad("data[0] (message) must be a non-empty string, or {\"text\", \"files\"} with text or files");
  std::string system = defaults.system;
  if (!at(2).is_null()) {
    if (!at(2).is_string()) return bad("data[2] (system_prompt) must be a string");
    system = at(2).get<std::string>();
  }
  if (!system.empty()) in.messages.push_back({"system", system, {}});
  const json& history = at(1);
  if (!history.is_null() && !history.is_array()) return bad("data[1] (history) must be a list");
  if (history.is_array()) {
    for (size_t i = 0; i < history.size(); ++i) {
      const json& turn = history[i];
      if (turn.is_object()) {  // messages format: {"role", "content"}
        auto role = turn.find("role");
        auto text = turn.contains("content") ? content_text(turn["content"]) : std::nullopt;
        if (role == turn.end() || !role->is_string() || !text)
          return bad(fmt::format("history[{}] must be {{\"role\": ..., \"content\": ...}}", i));
        std::string r = role->get<std::string>();
        if (r != "user" && r != "assistant" && r != "system")
          return bad(fmt::format("history[{}].role is {}; expected user, assistant or system", i,
                                 describe_json_value(*role)));
        in.messages.push_back({r, *text, {}});
      } else if (turn.is_array() && turn.size() == 2) {  // tuples format: [user, assistant]
        auto user = content_text(turn[0]);
        auto assistant = content_text(turn[1]);
        if (!user || !assistant) return bad(fmt::format("history[{}] must be [user_text, assistant_text]", i));
        if (!user->empty()) in.messages.push_back({"user", *user, {}});
        if (!assistant->empty()) in.messages.push_back({"assistant", *assistant, {}});
      } else {
        return bad(fmt::format("history[{}] must be a {{role, content}} message or a [user, assistant] pair", i));
      }
    }
  }
  in.messages.push_back({"user", *message, std::move(images).value()});
  auto number = [&](size_t i, const char* name, double fallback, double lo, double hi) -> Result<double> {
    const json& v = at(i);
    if (v.is_null()) return fallback;
    if (!v.is_number()) return bad(fmt::format("data[{}] ({}) must be a number", i, name));
    double x = v.get<double>();
    if (!(x >= lo && x <= hi)) return bad(fmt::format("data[{}] ({}) is {}; expected {} to {}", i, name, x, lo, hi));
    return x;
  };
  auto temperature = number(3, "temperature", defaults.temperature, 0, 100);
  if (!temperature) return temperature.status();
  auto top_p = number(4, "top_p", defaults.top_p, 1e-6, 1);
  if (!top_p) return top_p.status();
  auto max_tokens = number(5, "max_tokens", double(defaults.max_new_tokens), 1, 1e9);
  if (!max_tokens) return max_tokens.status();
  in.sampling = chat_sampling(defaults, *temperature, *top_p, int64_t(*max_tokens));
  return in;
}

json parameter(const char* label, const char* name, const char* component, json type, const char* python_type,
               const char* description, std::optional<json> fallback, json example) {
  json p = {{"label", label},
            {"parameter_name", name},
            {"parameter_has_default", fallback.has_value()},
            {"parameter_default", fallback ? *fallback : json()},
            {"type", std::move(type)},
            {"python_type", {{"type", python_type}, {"description", description}}},
            {"component", component},
            {"example_input", std::move(example)}};
  return p;
}

}  // namespace

struct GradioApi::State : std::enable_shared_from_this<GradioApi::State> {
  EngineHandle& engine;
  ChatDefaults defaults;
  JobLimits limits;
  JsonLimits body_limits;
  Logger log;
  int64_t app_id = 0;
  bool accepts_images = false;  // the model has a vision encoder: the message is a MultimodalTextbox
  UploadStore uploads;

  struct Session {
    std::shared_ptr<http::Exchange> stream;  // the open /queue/data answer, if any
    std::vector<std::string> pending;        // SSE events waiting for a stream
    size_t pending_bytes = 0;
    int open_events = 0;
    Clock::time_point touched = Clock::now();
    std::optional<Clock::time_point> close_at;  // when idle: when to send close_stream
  };
  struct Event {
    std::string id;
    std::string session;
    uint64_t request_id = 0;  // 0 until submit() returned
    bool cancel_asked = false;
    bool completed = false;  // its process_completed was sent or kept; later engine events are dropped
    bool sent_first = false;
    std::string reply;
    Clock::time_point started = Clock::now();
    // Set while its session has no stream open, from the join on; see kUnwatchedJobGrace.
    std::optional<Clock::time_point> unwatched_since;
  };

  std::mutex mutex;
  std::map<std::string, Session> sessions;
  std::map<std::string, std::shared_ptr<Event>> events;
  size_t pending_bytes = 0;  // over every session
  // Engine requests to cancel, taken by the timer thread: cancel() must not be
  // called with the lock held, and much of the code that decides to cancel runs with it.
  std::vector<uint64_t> cancel_queue;
  std::mt19937_64 random{std::random_device{}()};
  bool stopped = false;
  std::condition_variable wake;
  std::thread timers;

  State(EngineHandle& e, ChatDefaults d, JobLimits j, JsonLimits body, Logger l)
      : engine(e), defaults(std::move(d)), limits(j), body_limits(body), log(std::move(l)) {
    app_id = int64_t(random() >> 12);
    accepts_images = engine.info().accepts_images;
  }

  std::string new_event_id() {
    return fmt::format("{:016x}{:016x}", random(), random());
  }

  // Marks an event cancelled and has the timer thread cancel its engine
  // request (join() cancels one whose request it has not got yet). Lock held.
  void queue_cancel(Event& event) {
    event.cancel_asked = true;
    if (event.request_id) cancel_queue.push_back(event.request_id);
    wake.notify_all();
  }

  // Keeps one message for a session's next stream. Lock held.
  void keep(Session& session, std::string message) {
    session.pending_bytes += message.size();
    pending_bytes += message.size();
    session.pending.push_back(std::move(message));
  }

  void forget_pending(Session& session) {
    pending_bytes -= session.pending_bytes;
    session.pending_bytes = 0;
    session.pending.clear();
  }

  // The session's stream went away (the client left): nobody will read its
  // jobs' results, so they are cancelled. Lock held.
  void stream_gone(const std::string& hash, Session& session) {
    session.stream.reset();
    for (auto& [id, event] : events)
      if (event->session == hash) queue_cancel(*event);
  }

  // Sends one message of a session's stream, or keeps it until the stream
  // opens. When keeping it would pass a cap on undelivered messages, they are
  // all dropped and the session's jobs end with an error saying which cap;
  // the message is then dropped too, and the reason returned. Lock held.
  std::optional<std::string> send(const std::string& hash, Session& session, const json& message) {
    std::string event = http::sse_event(dump(message));
    session.touched = Clock::now();
    if (session.stream) {
      if (session.stream->write(event)) return std::nullopt;
      stream_gone(hash, session);
    }
    std::string over;
    if (session.pending_bytes + event.size() > limits.max_pending_bytes_per_session)
      over = fmt::format("this session's undelivered messages passed {} bytes (max_pending_bytes_per_session) "
                         "with no stream open to /queue/data", limits.max_pending_bytes_per_session);
    else if (pending_bytes + event.size() > limits.max_pending_bytes)
      over = fmt::format("undelivered messages of all sessions passed {} bytes (max_pending_bytes)",
                         limits.max_pending_bytes);
    if (over.empty()) {
      keep(session, std::move(event));
      return std::nullopt;
    }
    log.warn("gradio: {}; cancelling the session's jobs", over);
    forget_pending(session);
    std::vector<std::shared_ptr<Event>> open;
    for (auto& [id, e] : events)
      if (e->session == hash) open.push_back(e);
    for (auto& e : open) fail(e, over + "; the job was cancelled");
    return over;
  }

  // Ends an event at once with an error the client reads when its stream
  // opens, and cancels its engine request. Kept whatever the caps: one small
  // message per job, and jobs are capped. Lock held.
  void fail(const std::shared_ptr<Event>& event, const std::string& error) {
    if (event->completed) return;
    queue_cancel(*event);
    event->completed = true;
    events.erase(event->id);
    auto it = sessions.find(event->session);
    if (it == sessions.end()) return;
    json message = {{"msg", "process_completed"}, {"event_id", event->id}, {"output", {{"error", error}}},
                    {"success", false}};
    Session& session = it->second;
    std::string text = http::sse_event(dump(message));
    if (!(session.stream && session.stream->write(text))) keep(session, std::move(text));
    session.open_events--;
    settle(event->session);
  }

  // After an event ended or a stream connected: an idle session's stream is
  // closed after kCloseGrace (by the timer thread). Lock held.
  void settle(const std::string& hash) {
    auto it = sessions.find(hash);
    if (it == sessions.end()) return;
    Session& s = it->second;
    if (s.open_events > 0) return;
    if (s.stream) {
      s.close_at = Clock::now() + kCloseGrace;
      wake.notify_all();
    } else if (s.pending.empty()) {
      sessions.erase(it);
    }
  }

  // Closes idle streams when their grace ends, sends heartbeats, drops
  // sessions nobody came for, cancels jobs nobody watches, and makes the
  // engine cancellations the rest of the code queued.
  void run_timers() {
    std::unique_lock lock(mutex);
    auto next_heartbeat = Clock::now() + kHeartbeatEvery;
    while (!stopped) {
      if (!cancel_queue.empty()) {
        std::vector<uint64_t> to_cancel;
        to_cancel.swap(cancel_queue);
        lock.unlock();
        for (uint64_t id : to_cancel) engine.cancel(id);
        lock.lock();
        continue;  // the state may have moved on meanwhile
      }
      auto now = Clock::now();
      bool beat = now >= next_heartbeat;
      if (beat) next_heartbeat = now + kHeartbeatEvery;
      auto next_wake = next_heartbeat;
      for (auto it = sessions.begin(); it != sessions.end();) {
        Session& s = it->second;
        if (s.open_events > 0) s.close_at.reset();
        if (s.stream && s.close_at && *s.close_at <= now) {
          s.stream->write(http::sse_event(R"({"msg":"close_stream","event_id":null})"));
          s.stream->finish();
          s.stream.reset();
          s.close_at.reset();
        } else if (s.stream && s.close_at) {
          next_wake = std::min(next_wake, *s.close_at);
        } else if (s.stream && beat) {
          s.stream->write(http::sse_event(R"({"msg":"heartbeat"})"));
        }
        bool unclaimed = !s.stream && s.open_events == 0 && now - s.touched > kUnclaimedSessionLife;
        if ((!s.stream && s.open_events == 0 && s.pending.empty()) || unclaimed) {
          forget_pending(s);
          it = sessions.erase(it);
        } else {
          ++it;
        }
      }
      for (auto it = events.begin(); it != events.end();) {
        std::shared_ptr<Event> event = (it++)->second;  // fail() erases it
        if (!event->unwatched_since) continue;
        auto deadline = *event->unwatched_since + kUnwatchedJobGrace;
        if (deadline <= now) {
          fail(event, fmt::format("no stream was open to /queue/data for this session within {} s of the join; "
                                  "the job was cancelled",
                                  std::chrono::duration_cast<std::chrono::seconds>(kUnwatchedJobGrace).count()));
        } else {
          next_wake = std::min(next_wake, deadline);
        }
      }
      if (!cancel_queue.empty()) continue;
      wake.wait_until(lock, next_wake);
    }
  }

  json config() const {
    auto component = [](int id, const char* type, json props) {
      props["visible"] = true;
      return json{{"id", id}, {"type", type}, {"props", std::move(props)}, {"skip_api", false},
                  {"component_class_id", type}, {"key", nullptr}};
    };
    json components = json::array({
        accepts_images ? component(kMessage, "multimodaltextbox",
                                   {{"label", "Message"}, {"value", {{"text", ""}, {"files", json::array()}}},
                                    {"file_types", {"image"}}, {"file_count", "multiple"}, {"lines", 2}})
                       : component(kMessage, "textbox", {{"label", "Message"}, {"value", ""}, {"lines", 2}}),
        component(kHistory, "json", {{"label", "History"}, {"value", json::array()}}),
        component(kSystem, "textbox", {{"label", "System prompt"}, {"value", defaults.system}}),
        component(kTemperature, "slider",
                  {{"label", "Temperature"}, {"minimum", 0}, {"maximum", 2}, {"step", 0.05}, {"value", defaults.temperature}}),
        component(kTopP, "slider",
                  {{"label", "Top-p"}, {"minimum", 0.01}, {"maximum", 1}, {"step", 0.01}, {"value", defaults.top_p}}),
        component(kMaxTokens, "slider",
                  {{"label", "Max new tokens"}, {"minimum", 1}, {"maximum", std::max<int64_t>(defaults.max_new_tokens, 4096)},
                   {"step", 1}, {"value", defaults.max_new_tokens}}),
        component(kReply, "textbox", {{"label", "Reply"}, {"value", ""}}),
    });
    json ids = json::array();
    json children = json::array();
    for (int id = kMessage; id <= kReply; ++id) {
      ids.push_back(id);
      children.push_back({{"id", id}});
    }
    json layout = {{"id", 0}, {"children", children}};
    json dependency = {
        {"id", kChatFn},
        {"targets", json::array({json::array({kMessage, "submit"})})},
        {"inputs", json::array({kMessage, kHistory, kSystem, kTemperature, kTopP, kMaxTokens})},
        {"outputs", json::array({kReply})},
        {"backend_fn", true},
        {"js", nullptr},
        {"queue", true},
        {"api_name", "chat"},
        {"api_visibility", "public"},
        {"show_api", true},
        {"scroll_to_output", false},
        {"show_progress", "full"},
        {"batch", false},
        {"max_batch_size", 4},
        {"cancels", json::array()},
        {"types", {{"generator", true}, {"cancel", false}}},
        {"collects_event_data", false},
        {"trigger_after", nullptr},
        {"trigger_only_on_success", false},
        {"trigger_mode", "once"},
        {"rendered_in", nullptr},
        {"connection", "sse"},
        {"time_limit", nullptr},
        {"stream_every", 0.5},
        {"event_specific_args", nullptr},
        {"zerogpu", false},
    };
    return {
        {"version", "5.0.0"},  // the API generation answered here, not a Gradio install
        {"mode", "blocks"},
        {"app_id", app_id},
        {"dev_mode", false},
        {"analytics_enabled", false},
        {"components", components},
        {"css", nullptr},
        {"js", nullptr},
        {"head", nullptr},
        {"title", defaults.title},
        {"space_id", nullptr},
        {"enable_queue", true},
        {"show_error", true},
        {"show_api", true},
        {"is_colab", false},
        {"max_file_size", nullptr},
        {"stylesheets", json::array()},
        {"theme", "default"},
        {"protocol", "sse_v3"},
        {"body_css", json::object()},
        {"fill_height", false},
        {"fill_width", false},
        {"theme_hash", ""},
        {"layout", layout},
        {"dependencies", json::array({dependency})},
        {"root", ""},  // empty: the client uses the URL it connected to
        {"username", nullptr},
        {"api_prefix", kApiPrefix},
        {"connect_heartbeat", false},
        {"page", {{"", {{"components", ids}, {"dependencies", json::array({kChatFn})}, {"layout", layout}}}}},
        {"pages", json::array({json::array({"", "Home"})})},
        {"current_page", ""},
    };
  }

  json info() const {
    json parameters = json::array({
        accepts_images
            ? parameter("Message", "message", "Multimodaltextbox",
                        {{"type", "object"},
                         {"properties", {{"text", {{"type", "string"}}}, {"files", {{"type", "array"}, {"items", {{"type", "object"}}}}}}}},
                        "dict(text: str, files: list[filepath])",
                        "the text and its images (PNG, JPEG, WebP, GIF): uploaded files or data: URLs", std::nullopt,
                        json{{"text", "Describe this image."}, {"files", json::array()}})
            : parameter("Message", "message", "Textbox", {{"type", "string"}}, "str", "", std::nullopt, "Hello!!"),
        parameter("History", "history", "Json", {{"type", "array"}, {"items", {{"type", "object"}}}}, "list[dict]",
                  "earlier turns: {role, content} messages or [user, assistant] pairs", json::array(), json::array()),
        parameter("System prompt", "system_prompt", "Textbox", {{"type", "string"}}, "str", "", json(defaults.system),
                  "You are a helpful assistant."),
        parameter("Temperature", "temperature", "Slider", {{"type", "number"}}, "float", "numeric value between 0 and 2",
                  json(defaults.temperature), defaults.temperature),
        parameter("Top-p", "top_p", "Slider", {{"type", "number"}}, "float", "numeric value between 0.01 and 1",
                  json(defaults.top_p), defaults.top_p),
        parameter("Max new tokens", "max_tokens", "Slider", {{"type", "number"}}, "float", "numeric value of at least 1",
                  json(defaults.max_new_tokens), defaults.max_new_tokens),
    });
    json returns = json::array({{{"label", "Reply"},
                                 {"type", {{"type", "string"}}},
                                 {"python_type", {{"type", "str"}, {"description", ""}}},
                                 {"component", "Textbox"}}});
    return {{"named_endpoints", {{"/chat", {{"parameters", parameters}, {"returns", returns}, {"show_api", true}}}}},
            {"unnamed_endpoints", json::object()}};
  }

  // POST /upload: multipart/form-data whose "files" parts are kept
  // (UploadStore) -> the list of their paths, in order, as Gradio answers.
  void upload(const std::shared_ptr<http::Exchange>& exchange) {
    // Files are images, and only a model with a vision encoder takes them: nothing is kept for one without.
    if (!accepts_images)
      return exchange->respond(json_response(400, {{"detail", "this model takes no images, so this server keeps no uploads"}}));
    const http::Request& request = exchange->request();
    const std::string* type = request.header("content-type");
    Result<std::string> boundary = http::multipart_boundary(type ? *type : std::string());
    if (!boundary) return exchange->respond(json_response(400, {{"detail", boundary.status().message()}}));
    auto parts = http::parse_multipart(request.body, *boundary);
    if (!parts) return exchange->respond(json_response(400, {{"detail", parts.status().message()}}));
    json paths = json::array();
    for (const http::FormPart& part : *parts) {
      if (part.name != "files") continue;
      Result<std::string> path = uploads.put(part.data, part.filename);
      if (!path)
        return exchange->respond(json_response(
            path.status().code() == ErrorCode::resource_exhausted ? 413 : 400, {{"detail", path.status().message()}}));
      paths.push_back(*path);
    }
    if (paths.empty()) return exchange->respond(json_response(400, {{"detail", "the form has no \"files\" part"}}));
    exchange->respond(json_response(200, paths));
  }

  void join(const std::shared_ptr<http::Exchange>& exchange) {
    Result<json> parsed = parse_json_bounded<json>(exchange->request().body, body_limits, "the body");
    if (!parsed && parsed.status().code() == ErrorCode::resource_exhausted)
      return exchange->respond(json_response(413, {{"detail", parsed.status().message()}}));
    if (!parsed) return exchange->respond(unprocessable(parsed.status().message()));
    const json& body = *parsed;
    if (!body.is_object())
      return exchange->respond(unprocessable(fmt::format(
          "the body must be a JSON object {{data, fn_index, session_hash}}, got {}", describe_json_value(body))));
    auto hash = body.find("session_hash");
    if (hash == body.end() || !hash->is_string() || hash->get_ref<const std::string&>().empty())
      return exchange->respond(unprocessable("session_hash must be a non-empty string"));
    auto fn = body.find("fn_index");
    if (fn != body.end() && !fn->is_null() && !(fn->is_number_integer() && fn->get<int>() == kChatFn))
      return exchange->respond(unprocessable(fmt::format("fn_index {} does not exist; this app has {} (/chat)",
                                                         describe_json_value(*fn), kChatFn)));
    static const json no_data = json::array();
    auto data = body.find("data");
    auto inputs = parse_chat_inputs(data == body.end() ? no_data : *data, defaults, uploads);
    if (!inputs) return exchange->respond(unprocessable(inputs.status().message()));

    auto event = std::make_shared<Event>();
    event->session = hash->get<std::string>();
    {
      std::lock_guard lock(mutex);
      if (stopped) return exchange->respond(json_response(503, {{"detail", "the server is stopping"}}));
      // Gradio's own answer to a full queue is 503, which clients know to retry later.
      if (events.size() >= limits.max_jobs)
        return exchange->respond(json_response(
            503, {{"detail", fmt::format("the server is running {} jobs, its limit (max_jobs); try again when one "
                                         "has finished", events.size())}}));
      auto existing = sessions.find(event->session);
      if (existing != sessions.end() && size_t(existing->second.open_events) >= limits.max_jobs_per_session)
        return exchange->respond(json_response(
            429, {{"detail", fmt::format("this session already has {} jobs running, its limit "
                                         "(max_jobs_per_session); wait for one to finish or cancel one",
                                         existing->second.open_events)}}));
      event->id = new_event_id();
      events[event->id] = event;
      Session& s = sessions[event->session];
      s.open_events++;
      s.close_at.reset();  // the stream stays open for this event
      if (!s.stream) {
        event->unwatched_since = Clock::now();
        wake.notify_all();  // the timer thread's next deadline may now be this job's
      }
      const std::string& session = event->session;
      // A send over a cap has failed this event; then there is nothing more to say about it.
      if (!send(session, s, {{"msg", "estimation"}, {"event_id", event->id}, {"rank", 0}, {"queue_size", 1},
                             {"rank_eta", nullptr}}))
        send(session, s, {{"msg", "process_starts"}, {"event_id", event->id}, {"eta", nullptr},
                          {"progress_data", nullptr}});
    }
    exchange->respond(json_response(200, {{"event_id", event->id}}));
    {
      std::lock_guard lock(mutex);
      if (event->completed) return;
    }

    GenerationRequest request;
    request.input = std::move(inputs->messages);
    request.sampling = inputs->sampling;
    request.user = "gradio:" + event->session;
    // submit() and cancel() are called with no lock held: the engine may call
    // back (taking the lock) from its thread at any time. Even after this
    // object is gone: a cancelled request's last event comes when the engine
    // gets to it (a remote engine's, when its connection ends), so the
    // callback holds the state weakly.
    auto id = engine.submit(std::move(request), [weak = weak_from_this(), event](const StreamEvent& e) {
      if (auto self = weak.lock()) self->on_stream(event, e);
    });
    if (!id) {
      std::lock_guard lock(mutex);
      complete(event, FinishReason::error, refusal_text(id.status()));
      return;
    }
    bool cancel_now = false;
    {
      std::lock_guard lock(mutex);
      event->request_id = *id;
      cancel_now = event->cancel_asked;
    }
    if (cancel_now) engine.cancel(*id);
  }

  void on_stream(const std::shared_ptr<Event>& event, const StreamEvent& e) {
    std::lock_guard lock(mutex);
    auto it = sessions.find(event->session);
    if (it == sessions.end() || event->completed) return;
    if (!e.text.empty()) {
      json data = event->sent_first ? json::array({json::array({json::array({"append", json::array(), e.text})})})
                                     : json::array({event->reply + e.text});
      event->reply += e.text;
      event->sent_first = true;
      send(event->session, it->second,
           {{"msg", "process_generating"},
            {"event_id", event->id},
            {"output", {{"data", data}, {"is_generating", true}}},
            {"success", true}});
    }
    // A send over a cap has failed the event already.
    if (e.finish != FinishReason::none) complete(event, e.finish, e.error);
  }

  // The event's last message. Lock held.
  void complete(const std::shared_ptr<Event>& event, FinishReason finish, const std::string& error) {
    if (event->completed) return;
    if (finish == FinishReason::error) {
      event->request_id = 0;  // over in the engine: nothing to cancel
      return fail(event, error.empty() ? "the engine failed" : error);
    }
    event->completed = true;
    events.erase(event->id);
    auto it = sessions.find(event->session);
    if (it == sessions.end()) return;
    double seconds = std::chrono::duration<double>(Clock::now() - event->started).count();
    it->second.open_events--;
    // A cancelled event ends like a finished one, with the reply it had.
    auto over = send(event->session, it->second,
                     {{"msg", "process_completed"},
                      {"event_id", event->id},
                      {"output",
                       {{"data", json::array({event->reply})},
                        {"is_generating", false},
                        {"duration", seconds},
                        {"average_duration", seconds}}},
                      {"success", true}});
    // The reply did not fit beside what is waiting; the client is told why instead.
    if (over) {
      json message = {{"msg", "process_completed"}, {"event_id", event->id},
                      {"output", {{"error", *over + "; the reply was dropped"}}}, {"success", false}};
      keep(it->second, http::sse_event(dump(message)));
    }
    settle(event->session);
  }

  void data(const std::shared_ptr<http::Exchange>& exchange) {
    std::string hash = query_value(exchange->request().query, "session_hash");
    std::lock_guard lock(mutex);
    auto it = sessions.find(hash);
    exchange->begin_stream(200, "text/event-stream", {{"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"}});
    if (it == sessions.end()) {
      // What Gradio says to a stream for a session with nothing queued.
      exchange->write(http::sse_event(
          R"({"msg":"unexpected_error","message":"Session not found.","session_not_found":true})"));
      exchange->finish();
      return;
    }
    Session& s = it->second;
    if (s.stream) s.stream->finish();  // a reconnect replaces the old stream
    s.stream = exchange;
    s.close_at.reset();
    for (auto& event : s.pending) exchange->write(std::move(event));
    forget_pending(s);
    for (auto& [id, event] : events)
      if (event->session == hash) event->unwatched_since.reset();
    std::weak_ptr<http::Exchange> weak = exchange;
    exchange->on_abort([this, hash, weak] { on_stream_lost(hash, weak); });
    settle(hash);
  }

  // The client's stream went away: its events have no one to tell, so stop them.
  void on_stream_lost(const std::string& hash, const std::weak_ptr<http::Exchange>& lost) {
    std::lock_guard lock(mutex);
    auto it = sessions.find(hash);
    if (it != sessions.end() && it->second.stream && it->second.stream == lost.lock()) stream_gone(hash, it->second);
  }

  void cancel(const std::shared_ptr<http::Exchange>& exchange) {
    // A body that names no event (or cannot be read) cancels nothing, as in Gradio.
    Result<json> body = parse_json_bounded<json>(exchange->request().body, body_limits, "the body");
    std::string event_id;
    if (body && body->is_object())
      if (auto id = body->find("event_id"); id != body->end() && id->is_string()) event_id = id->get<std::string>();
    uint64_t request_id = 0;
    {
      std::lock_guard lock(mutex);
      auto it = events.find(event_id);
      if (it != events.end()) {
        it->second->cancel_asked = true;
        request_id = it->second->request_id;
      }
    }
    if (request_id) engine.cancel(request_id);
    exchange->respond(json_response(200, {{"success", true}}));
  }

  void stop() {
    std::vector<uint64_t> to_cancel;
    {
      std::lock_guard lock(mutex);
      if (stopped) return;
      stopped = true;
      for (auto& [id, event] : events) {
        event->cancel_asked = true;
        if (event->request_id) to_cancel.push_back(event->request_id);
      }
    }
    wake.notify_all();
    for (uint64_t id : to_cancel) engine.cancel(id);
    if (timers.joinable()) timers.join();
  }
};

GradioApi::GradioApi(EngineHandle& engine, ChatDefaults defaults, JobLimits limits, JsonLimits body_limits, Logger log)
    : state_(std::make_shared<State>(engine, std::move(defaults), limits, body_limits, std::move(log))) {
  state_->timers = std::thread([s = state_.get()] { s->run_timers(); });
}

GradioApi::~GradioApi() { stop(); }

void GradioApi::stop() { state_->stop(); }

std::vector<std::string> GradioApi::upload_paths() { return {"/upload", std::string(kApiPrefix) + "/upload"}; }

void GradioApi::add_routes(http::Server& server, http::WorkerPool& workers) {
  State* s = state_.get();
  for (std::string prefix : {std::string(), std::string(kApiPrefix)}) {
    server.route("GET", prefix + "/config", [s](std::shared_ptr<http::Exchange> x) {
      x->respond(json_response(200, s->config()));
    });
    server.route("GET", prefix + "/info", [s](std::shared_ptr<http::Exchange> x) {
      x->respond(json_response(200, s->info()));
    });
    // A join parses its body and submits the chat (tokenizing it): worker work.
    server.route("POST", prefix + "/queue/join", [s, &workers](std::shared_ptr<http::Exchange> x) {
      workers.post([s, x] {
        if (!x->aborted()) s->join(x);
      });
    });
    server.route("GET", prefix + "/queue/data", [s](std::shared_ptr<http::Exchange> x) { s->data(x); });
    server.route("POST", prefix + "/cancel", [s](std::shared_ptr<http::Exchange> x) { s->cancel(x); });
    server.route("POST", prefix + "/upload", [s](std::shared_ptr<http::Exchange> x) { s->upload(x); });
    server.route("POST", prefix + "/reset", [s](std::shared_ptr<http::Exchange> x) { s->cancel(x); });
    server.route("GET", prefix + "/app_id", [s](std::shared_ptr<http::Exchange> x) {
      x->respond(json_response(200, {{"app_id", s->app_id}}));
    });
  }
}

}  // namespace hostrun::gradio
