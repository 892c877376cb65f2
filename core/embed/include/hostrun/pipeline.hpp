// hostrun inside a program: LMDeploy's pipeline() as a C++ call.
//
//   auto pipe = hostrun::Pipeline::open({.model_dir = "/models/llava-llama-3-8b"});
//   auto image = hostrun::load_image("tiger.jpeg");
//   auto reply = (*pipe)->ask("describe this image", {*image});
//   std::cout << reply->text;
//
// open() does what `hostrun chat MODEL_DIR` does before its first prompt: the
// built-in manifest the folder's config.json selects (or PipelineOptions::
// manifest), its plugins (from <prefix>/lib/hostrun/plugins beside this
// library, HOSTRUN_PLUGIN_PATH and plugin_dirs), the weights, the engine.
// Requests from several threads are batched together by the engine. Link
// hostrun::pipeline from the installed SDK package (find_package(hostrunSDK)).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hostrun/engine.hpp"
#include "hostrun/generation.hpp"
#include "hostrun/status.hpp"

#define HOSTRUN_PIPELINE_API __attribute__((visibility("default")))

namespace hostrun {

struct PipelineOptions {
  std::string model_dir;        // an HF folder (config.json, safetensors, tokenizer.json)
  std::string device = "auto";  // auto, cpu or cuda
  std::string manifest;         // a manifest file instead of the built-in one ("" : built-in)
  int32_t session_len = 0;      // prompt + reply tokens a request may hold (0: the model's)
  // Any manifest value, as `--set TABLE.KEY=VALUE` takes it ("engine.quant_policy", "8").
  std::vector<std::pair<std::string, std::string>> settings;
  std::vector<std::string> plugin_dirs;  // searched before the installed plugins
  std::string log_level = "warning";     // trace, debug, info, warning, error, off (to stderr)
};

struct Reply {
  std::string text;
  FinishReason finish = FinishReason::none;  // stop, length or cancelled (errors are a Status)
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
};

// Called with each piece of the reply as it is generated (from the engine's
// thread: return quickly).
using TextCallback = std::function<void(std::string_view piece)>;

class HOSTRUN_PIPELINE_API Pipeline {
 public:
  static Result<std::unique_ptr<Pipeline>> open(const PipelineOptions& options) noexcept;
  virtual ~Pipeline();

  // A conversation (system / user / assistant messages; user messages may
  // carry images) through the chat template -> the assistant's reply.
  // Blocks until the reply is complete.
  virtual Result<Reply> chat(const std::vector<ChatMessage>& messages, const SamplingParams& sampling = {},
                             const TextCallback& on_text = {}) noexcept = 0;
  // One user message: pipeline(('describe this image', image)).
  Result<Reply> ask(std::string text, std::vector<ImageData> images = {}, const SamplingParams& sampling = {},
                    const TextCallback& on_text = {}) noexcept;
  // The engine, for streaming, cancelling and concurrent requests directly.
  virtual EngineHandle& engine() noexcept = 0;
  virtual std::string model_name() const = 0;
  virtual bool accepts_images() const noexcept = 0;

 protected:
  Pipeline() = default;
};

// An image file's bytes, typed by their signature (PNG, JPEG, WebP, GIF);
// LMDeploy's load_image for a path. invalid_argument when the file is no
// such image (the vision encoder decodes it) or is over 64 MiB, not_found
// when it cannot be read.
HOSTRUN_PIPELINE_API Result<ImageData> load_image(const std::string& path) noexcept;

}  // namespace hostrun
