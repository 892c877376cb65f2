// `hostrun chat [MODEL_DIR]`: streaming terminal chat through the engine.
#include "commands.hpp"
#include "engine_flags.hpp"
#include "run_frontend.hpp"

namespace hostrun::cli {

namespace {

struct ChatOptions {
  EngineFlags engine;
  std::optional<double> temperature, top_p;
  std::optional<int64_t> top_k, max_new_tokens, seed;
  std::optional<double> repetition_penalty;
  std::string system;
  std::vector<std::string> images;
};

}  // namespace

void add_chat_command(CLI::App& app, GlobalOptions& options) {
  auto* cmd = app.add_subcommand("chat", "Chat with a model in the terminal (streaming). Enter twice sends; 'end' "
                                         "resets the conversation; 'exit' quits. Reads a pipe too.");
  auto o = std::make_shared<ChatOptions>();
  cmd->add_option("MODEL_DIR", o->engine.model_dir,
                  "HF model folder (config.json, safetensors, tokenizer.json); none: the small model hostrun ships");
  o->engine.add_to(cmd);
  cmd->add_option("--temperature", o->temperature, "Sampling temperature (default 0.8; 0: greedy)");
  cmd->add_option("--top-p", o->top_p, "Nucleus sampling (default 0.8)");
  cmd->add_option("--top-k", o->top_k, "Top-k sampling (default 40; 0: off)");
  cmd->add_option("--repetition-penalty", o->repetition_penalty, "Repetition penalty (default 1.0)");
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "Most tokens in one reply (default 512)");
  cmd->add_option("--seed", o->seed, "Sampling seed (default: a new one each reply)");
  cmd->add_option("--system", o->system, "System prompt");
  cmd->add_option("--image", o->images,
                  "Image file (PNG, JPEG, WebP, GIF) attached to the first message, for models with a vision "
                  "encoder (LLaVA); repeatable. In a prompt, a line '/image PATH' attaches one to that message");
  cmd->callback([&options, o] {
    std::vector<core::ManifestOverride> frontend{{"frontend.plugin", "chat", "hostrun chat"}};
    auto add = [&](const char* key, const auto& value, const char* flag) {
      if (value) frontend.push_back({key, fmt::format("{}", *value), flag});
    };
    add("frontend.temperature", o->temperature, "--temperature");
    add("frontend.top_p", o->top_p, "--top-p");
    add("frontend.top_k", o->top_k, "--top-k");
    add("frontend.repetition_penalty", o->repetition_penalty, "--repetition-penalty");
    add("frontend.max_new_tokens", o->max_new_tokens, "--max-new-tokens");
    add("frontend.seed", o->seed, "--seed");
    if (!o->system.empty()) frontend.push_back({"frontend.system", o->system, "--system"});
    if (!o->images.empty()) {
      // The setting is a list written with commas; a path holding one cannot be told apart.
      for (const std::string& path : o->images)
        if (path.find(',') != std::string::npos) {
          fmt::print(stderr, "hostrun chat: --image {}: paths with a comma are not supported; use a line "
                             "'/image PATH' in the prompt\n", path);
          options.exit_code = 2;
          return;
        }
      frontend.push_back({"frontend.images", fmt::format("{}", fmt::join(o->images, ",")), "--image"});
    }
    options.exit_code = run_frontend(o->engine, options.plugin_dirs, frontend);
  });
}

}  // namespace hostrun::cli
