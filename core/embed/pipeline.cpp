// The embedding API (hostrun/pipeline.hpp) over core::Runtime.
#include "hostrun/pipeline.hpp"

#include <dlfcn.h>

#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>

#include <fmt/format.h>

#include "image_file.hpp"
#include "log.hpp"
#include "runtime.hpp"

namespace hostrun {

namespace {

namespace fs = std::filesystem;

// <libdir>/hostrun/plugins, beside this library (the build tree and an
// install lay it out alike), so a program finds the plugins wherever it runs.
fs::path installed_plugin_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&installed_plugin_dir), &info) == 0 || info.dli_fname == nullptr) return {};
  return fs::path(info.dli_fname).parent_path() / "hostrun" / "plugins";
}

class LocalPipeline final : public Pipeline {
 public:
  explicit LocalPipeline(std::unique_ptr<core::Runtime> runtime) : runtime_(std::move(runtime)) {}

  Result<Reply> chat(const std::vector<ChatMessage>& messages, const SamplingParams& sampling,
                     const TextCallback& on_text) noexcept override {
    try {
      struct Waiter {
        std::mutex mutex;
        std::condition_variable done_cv;
        bool done = false;
        Reply reply;
        std::string error;
        ErrorCode code = ErrorCode::ok;
      };
      auto waiter = std::make_shared<Waiter>();
      GenerationRequest request;
      request.input = messages;
      request.sampling = sampling;
      request.user = "pipeline";
      auto id = runtime_->engine().submit(std::move(request), [waiter, on_text](const StreamEvent& event) {
        if (!event.text.empty() && on_text) on_text(event.text);
        std::lock_guard lock(waiter->mutex);
        waiter->reply.text += event.text;
        if (event.finish == FinishReason::none) return;
        waiter->reply.finish = event.finish;
        waiter->reply.prompt_tokens = event.prompt_tokens;
        waiter->reply.completion_tokens = event.completion_tokens;
        waiter->error = event.error;
        waiter->code = event.error_code;
        waiter->done = true;
        waiter->done_cv.notify_all();
      });
      if (!id) return id.status();
      std::unique_lock lock(waiter->mutex);
      waiter->done_cv.wait(lock, [&] { return waiter->done; });
      if (waiter->reply.finish == FinishReason::error)
        return Status(waiter->code == ErrorCode::ok ? ErrorCode::internal : waiter->code, waiter->error);
      return std::move(waiter->reply);
    } catch (const std::exception& e) {
      return Status(ErrorCode::internal, e.what());
    }
  }

  EngineHandle& engine() noexcept override { return runtime_->engine(); }
  std::string model_name() const override { return runtime_->engine().info().model_name; }
  bool accepts_images() const noexcept override { return runtime_->engine().info().accepts_images; }

 private:
  std::unique_ptr<core::Runtime> runtime_;
};

}  // namespace

Pipeline::~Pipeline() = default;

Result<std::unique_ptr<Pipeline>> Pipeline::open(const PipelineOptions& options) noexcept {
  try {
    if (options.model_dir.empty()) return Status(ErrorCode::invalid_argument, "PipelineOptions::model_dir is empty");
    auto level = core::parse_log_level(options.log_level);
    if (!level)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("log_level '{}': expected trace, debug, info, warning, error or off", options.log_level));
    core::process_log_sink().set_level(*level);
    core::RuntimeOptions runtime;
    runtime.model_dir = options.model_dir;
    runtime.manifest_file = options.manifest;
    runtime.device = options.device;
    for (const auto& dir : options.plugin_dirs) runtime.plugin_dirs.emplace_back(dir);
    if (fs::path installed = installed_plugin_dir(); !installed.empty()) runtime.plugin_dirs.push_back(installed);
    if (options.session_len > 0)
      runtime.overrides.push_back({"engine.session_len", std::to_string(options.session_len), "session_len"});
    for (const auto& [key, value] : options.settings) runtime.overrides.push_back({key, value, "settings"});
    auto opened = core::Runtime::open(runtime, &core::process_log_sink());
    if (!opened) return opened.status();
    return std::unique_ptr<Pipeline>(std::make_unique<LocalPipeline>(std::move(opened.value())));
  } catch (const std::exception& e) {
    return Status(ErrorCode::internal, e.what());
  }
}

Result<Reply> Pipeline::ask(std::string text, std::vector<ImageData> images, const SamplingParams& sampling,
                            const TextCallback& on_text) noexcept {
  std::vector<ChatMessage> messages;
  messages.push_back({"user", std::move(text), std::move(images)});
  return chat(messages, sampling, on_text);
}

Result<ImageData> load_image(const std::string& path) noexcept { return core::read_image_file(path); }

}  // namespace hostrun
