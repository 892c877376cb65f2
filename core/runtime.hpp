// From a model folder to a running engine: what `chat`, `serve` and `bench` share.
//
//  1. the manifest: --manifest FILE, or the built-in one for the folder's
//     architecture and the device (manifests/);
//  2. overrides from the command's flags (--session-len -> engine.session_len,
//     the model folder -> tokenizer.file, the command's frontend, ...);
//  3. validation of every table against its plugin or host schema;
//  4. the objects: tokenizer, KV-cache policy, model (loaded from the
//     folder's safetensors), the chat template, then the engine.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "chat_template.hpp"
#include "engine/engine.hpp"
#include "manifest.hpp"
#include "plugin_loader.hpp"

namespace hostrun::checkpoint {
class ModelDirectory;
}

namespace hostrun::core {

struct ManifestOverride {
  std::string key;    // "engine.session_len"
  std::string value;  // as typed
  std::string label;  // the flag, for errors: "--session-len"
};

struct RuntimeOptions {
  std::string model_dir;      // empty: the small model shipped with hostrun
  std::string manifest_file;  // empty: the built-in manifest for the model
  std::string chat_template;  // NAME or FILE; empty: the manifest's
  std::string device = "auto";  // auto, cpu or cuda
  std::vector<ManifestOverride> overrides;
  std::vector<std::filesystem::path> plugin_dirs;
};

// The [engine] host table: what the engine flags set.
HostTableSchema engine_schema();

// Where the shipped small model lives: <prefix>/share/hostrun/models/tiny.
std::filesystem::path shipped_model_dir();

class Runtime {
 public:
  static Result<std::unique_ptr<Runtime>> open(const RuntimeOptions& options, LogSink* log_sink);
  ~Runtime();

  Engine& engine() noexcept { return *engine_; }
  const ResolvedManifest& manifest() const noexcept { return resolved_; }
  const std::string& model_dir() const noexcept { return model_dir_; }
  const std::string& manifest_name() const noexcept { return manifest_name_; }
  const PluginRegistry& registry() const noexcept { return registry_; }
  // Makes the plugin named by the manifest's [frontend] table.
  Result<PluginHandle<Frontend>> make_frontend();

 private:
  Runtime() = default;
  Status build(const RuntimeOptions& options, LogSink* log_sink);

  PluginRegistry registry_;
  ResolvedManifest resolved_;
  std::string model_dir_;
  std::string manifest_name_;
  LogSink* log_sink_ = nullptr;
  std::unique_ptr<checkpoint::ModelDirectory> weights_;
  PluginHandle<Tokenizer> tokenizer_;
  PluginHandle<KvCachePolicy> kv_policy_;
  PluginHandle<Model> model_;
  ChatTemplate chat_template_;
  std::unique_ptr<Engine> engine_;  // declared last: stops first
};

}  // namespace hostrun::core
