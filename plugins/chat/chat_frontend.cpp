// Frontend "chat": a streaming conversation in the terminal, LMDeploy-style.
//
// Input ends with an empty line (press Enter twice), so pasted text may span
// several lines; `end` starts a new conversation, `exit` quits. The same
// protocol works from a pipe: paragraphs separated by blank lines, and the
// last one is sent at end of input. Replies stream as they are generated.
// The conversation is resent in full each turn; with prefix caching on, the
// engine computes only the new tokens.
//
// Images (models with a vision encoder): `--image PATH` (the `images`
// setting) attaches files to the first message sent, and a line of a prompt
// that reads `/image PATH` attaches that file to its message. The message's
// images stay with it for the rest of the conversation.
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <hostrun/sdk.hpp>
#include <iostream>
#include <iterator>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "image_common/image.hpp"

namespace {

using namespace hostrun;

class ChatFrontend final : public Frontend {
 public:
  explicit ChatFrontend(const CreateContext& context) : log_(plugin_logger(context, "chat")) {
    const Settings& s = *context.settings;
    sampling_.max_tokens = int32_t(s.get_int("max_new_tokens"));
    sampling_.temperature = float(s.get_number("temperature"));
    sampling_.top_p = float(s.get_number("top_p"));
    sampling_.top_k = int32_t(s.get_int("top_k"));
    sampling_.repetition_penalty = float(s.get_number("repetition_penalty"));
    if (int64_t seed = s.get_int("seed"); seed != 0) sampling_.seed = uint64_t(seed);
    system_prompt_ = s.get_string("system");
    first_images_ = s.get_strings("images");
  }

  Status run(EngineHandle& engine) noexcept override {
    return guard([&]() -> Status {
      const bool interactive = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
      EngineInfo info = engine.info();
      std::printf("hostrun chat: %s (session length %d). Press Enter twice to send; 'end' resets the "
                  "conversation, 'exit' quits.\n",
                  info.model_name.c_str(), info.session_len);
      std::vector<ChatMessage> history;
      if (!system_prompt_.empty()) history.push_back({"system", system_prompt_, {}});
      for (;;) {
        if (stop_requested_) return Status();
        std::printf("\ndouble enter to end input >>> ");
        std::fflush(stdout);
        std::optional<std::string> prompt = read_prompt(interactive);
        if (!prompt) {
          std::printf("\n");
          return Status();  // end of input
        }
        if (*prompt == "exit") return Status();
        if (*prompt == "end") {
          history.resize(system_prompt_.empty() ? 0 : 1);
          std::printf("(conversation reset)\n");
          continue;
        }
        if (prompt->empty()) continue;
        if (!interactive) std::printf("%s\n", prompt->c_str());  // a transcript reads like a session
        ChatMessage message{"user", {}, {}};
        if (Status attached = take_images(*prompt, message); !attached) {
          std::fprintf(stderr, "hostrun chat: %s\n", attached.message().c_str());
          continue;
        }
        if (message.content.empty() && message.images.empty()) continue;
        history.push_back(std::move(message));
        std::string reply;
        Status answered = stream_reply(engine, history, reply);
        if (!answered) {
          std::printf("\n");
          std::fflush(stdout);
          // Told by the code, whatever the engine's wording: the conversation outgrew the session.
          const char* hint = answered.code() == ErrorCode::context_length_exceeded
                                 ? " (the conversation no longer fits; 'end' starts a new one)"
                                 : "";
          std::fprintf(stderr, "hostrun chat: %s%s\n", answered.message().c_str(), hint);
          history.pop_back();
          continue;
        }
        history.push_back({"assistant", reply, {}});
      }
    });
  }

  void stop() noexcept override {
    stop_requested_ = true;
    uint64_t id = current_request_.load();
    if (id != 0 && engine_) engine_->cancel(id);
  }

 private:
  // Lines until an empty one (or end of input). nullopt: nothing left to read.
  std::optional<std::string> read_prompt(bool interactive) {
    std::string text, line;
    bool any = false;
    while (std::getline(std::cin, line)) {
      any = true;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) {
        if (text.empty() && !interactive) continue;  // blank lines between paragraphs
        break;
      }
      text += text.empty() ? line : "\n" + line;
    }
    if (!any && text.empty()) return std::nullopt;
    return text;
  }

  // The prompt's text without its `/image PATH` lines into message.content,
  // their files (and, for the first message, the `images` setting's) into
  // message.images. Nothing is attached when a file cannot be read (the
  // setting's files are tried once: a bad --image is reported, not repeated).
  Status take_images(const std::string& prompt, ChatMessage& message) {
    std::vector<std::string> paths = std::exchange(first_images_, {});
    std::string text;
    size_t start = 0;
    while (start <= prompt.size()) {
      size_t end = prompt.find('\n', start);
      if (end == std::string::npos) end = prompt.size();
      const std::string_view line(prompt.data() + start, end - start);
      if (line.starts_with("/image ")) {
        std::string_view path = line.substr(7);
        while (!path.empty() && path.front() == ' ') path.remove_prefix(1);
        paths.emplace_back(path);
      } else {
        if (!text.empty()) text += '\n';
        text += line;
      }
      start = end + 1;
    }
    std::vector<ImageData> images;
    for (const std::string& path : paths) {
      auto image = read_image(path);
      if (!image) return image.status();
      images.push_back(std::move(image).value());
    }
    message.content = std::move(text);
    message.images = std::move(images);
    return Status();
  }

  // A file's bytes and the type its signature names.
  static Result<ImageData> read_image(const std::string& path) {
    constexpr std::streamoff kMaxBytes = 64 << 20;
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) return Status(ErrorCode::not_found, "image " + path + ": cannot open the file");
    const std::streamoff size = in.tellg();
    if (size > kMaxBytes) return Status(ErrorCode::invalid_argument, "image " + path + ": larger than 64 MiB");
    in.seekg(0);
    auto image = image::image_data({std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()});
    if (!image) return Status(ErrorCode::invalid_argument, "image " + path + ": " + image.status().message());
    return image;
  }

  Status stream_reply(EngineHandle& engine, const std::vector<ChatMessage>& history, std::string& reply) {
    std::mutex mutex;
    std::condition_variable done_cv;
    bool done = false;
    FinishReason reason = FinishReason::none;
    std::string error;
    GenerationRequest request;
    request.input = history;
    request.sampling = sampling_;
    engine_ = &engine;
    auto id = engine.submit(std::move(request), [&](const StreamEvent& event) {
      if (!event.text.empty()) {
        std::fwrite(event.text.data(), 1, event.text.size(), stdout);
        std::fflush(stdout);
        reply += event.text;
      }
      if (event.finish != FinishReason::none) {
        std::lock_guard lock(mutex);
        reason = event.finish;
        error = event.error;
        done = true;
        done_cv.notify_all();
      }
    });
    if (!id) return id.status();
    current_request_ = *id;
    if (stop_requested_) engine.cancel(*id);  // a stop that raced with the submit
    std::unique_lock lock(mutex);
    done_cv.wait(lock, [&] { return done; });
    current_request_ = 0;
    std::printf("\n");
    if (reason == FinishReason::error) return Status(ErrorCode::internal, error);
    if (reason == FinishReason::length) log_.info("the reply reached max_new_tokens or the session length");
    return Status();
  }

  Logger log_;
  SamplingParams sampling_;
  std::string system_prompt_;
  std::vector<std::string> first_images_;  // attached to the first message sent, then cleared
  std::atomic<bool> stop_requested_{false};
  std::atomic<uint64_t> current_request_{0};
  EngineHandle* engine_ = nullptr;
};

// LMDeploy's chat defaults.
const SettingSpec kSettings[] = {
    {"max_new_tokens", SettingType::integer, "Most tokens one reply may have", false, "512", 1, 1e9},
    {"temperature", SettingType::number, "Sampling temperature (0: greedy)", false, "0.8", 0, 100},
    {"top_p", SettingType::number, "Nucleus sampling: keep the smallest set of tokens this likely", false, "0.8",
     1e-6, 1},
    {"top_k", SettingType::integer, "Keep the k most likely tokens (0: all)", false, "40", 0, 1e9},
    {"repetition_penalty", SettingType::number, "Penalty for tokens already in the conversation", false, "1.0",
     1e-6, 100},
    {"seed", SettingType::integer, "Random seed for sampling (0: a new one each reply)", false, "0", 0, 9.2e18},
    {"system", SettingType::string, "System prompt (empty: the chat template's default)", false, "\"\""},
    {"images", SettingType::string_list, "Image files attached to the first message (models with a vision encoder)",
     false, "[]"},
};
const RoleEntry kRoles[] = {role_entry<Frontend, ChatFrontend>(kSettings)};

}  // namespace

HOSTRUN_PLUGIN("chat", "0.1.0", "Streaming terminal chat: Enter twice sends, 'end' resets, 'exit' quits", kRoles)
