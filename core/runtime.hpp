// From a model folder to a running engine: what `chat`, `serve` and `bench` share.
//
//  1. the manifest: --manifest FILE, or the built-in one the manifest table
//     (manifest_table.hpp) gives for the folder's architecture, quantization
//     format and the device; the host reads nothing else of config.json;
//  2. overrides from the command's flags (--session-len -> engine.session_len,
//     --device -> engine.device, the model folder -> tokenizer.file, the
//     command's frontend, ...);
//  3. validation of every table against its plugin or host schema;
//  4. one object per role table, each created and used: tokenizer, KV-cache
//     policy, quantizer (handed to the model at load), model (loaded from the
//     folder's safetensors), vision encoder (handed to the engine), the chat
//     template, then the engine; the frontend when the command runs it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "chat_template.hpp"
#include "checkpoint/folder_config.hpp"
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
  // LMDeploy's --model-format: "hf" for an unquantized folder, or the
  // quantization_config.quant_method the folder must have ("awq"); empty:
  // whatever the folder is.
  std::string model_format;
  std::vector<ManifestOverride> overrides;
  std::vector<std::filesystem::path> plugin_dirs;
  // Make the [frontend] table's plugin before anything loads, so that its
  // settings are refused in a moment rather than after the model has loaded;
  // make_frontend() then hands that one over.
  bool frontend_first = false;
  // Load the model and stop: no engine, no KV cache (`hostrun lite`, which
  // runs the model's calibration hook itself). engine() must not be called.
  bool start_engine = true;
};

// The [engine] host table: what the engine flags set.
HostTableSchema engine_schema();
// Every table the host itself reads ([engine], [chat_template], [serves]),
// for resolve(): what `chat`, `serve` and `manifest check` validate against.
std::vector<HostTableSchema> host_table_schemas();

// What a manifest becomes before any weights are read: one object per role
// table, made for the [engine] device (each plugin checks its own settings
// and its probe the device), the KV format checked against the device and
// activation dtype, the [chat_template] table's template. What `chat` and
// `serve` build on and what `manifest check` runs, so the two never disagree.
struct Wiring {
  Device device{};
  DType activation_dtype = DType::f32;
  PluginHandle<Model> model;
  PluginHandle<Tokenizer> tokenizer;
  PluginHandle<KvCachePolicy> kv_policy;
  PluginHandle<Quantizer> quantizer;   // null without [quantizer]
  PluginHandle<VisionEncoder> vision;  // null without [vision]
  ChatTemplate chat_template;          // the [chat_template] table's, when there is one
};
Result<Wiring> wire(const ResolvedManifest& resolved, const PluginRegistry& registry, LogSink* log_sink,
                    const std::string& manifest_name);

// Where the shipped small model lives: <prefix>/share/hostrun/models/small (the
// trained one, models/small; scripts/make-small-model.sh puts it there).
std::filesystem::path shipped_model_dir();
// Where `hostrun lite`'s default calibration text lives:
// <prefix>/share/hostrun/calib/gutenberg.txt (public-domain books from NLTK's
// Gutenberg selection; scripts/make-calib-corpus.sh puts it there).
std::filesystem::path shipped_calibration_text();

class Runtime {
 public:
  static Result<std::unique_ptr<Runtime>> open(const RuntimeOptions& options, LogSink* log_sink);
  ~Runtime();

  Engine& engine() noexcept { return *engine_; }
  const ResolvedManifest& manifest() const noexcept { return resolved_; }
  const std::string& model_dir() const noexcept { return model_dir_; }
  const std::string& manifest_name() const noexcept { return manifest_name_; }
  const PluginRegistry& registry() const noexcept { return registry_; }
  ModelInfo model_info() const noexcept { return model_->info(); }
  // The loaded objects, for commands that drive the model without the engine.
  Model& model() noexcept { return *model_; }
  const Tokenizer& tokenizer() const noexcept { return *tokenizer_; }
  const checkpoint::ModelDirectory& weights() const noexcept;
  // The quantizer that reads `format` folders (quant_method, "awq") of this
  // model's architecture on this device: the [quantizer] of the built-in
  // manifest the table gives such a folder. The one that reads a format is
  // the one that writes it (Quantizer::quantize).
  Result<PluginHandle<Quantizer>> make_quantizer_for(const std::string& format) const;
  KvFormat kv_format() const noexcept { return kv_policy_->format(); }
  // Makes the plugin named by the manifest's [frontend] table (or hands over
  // the one made at open with RuntimeOptions::frontend_first).
  Result<PluginHandle<Frontend>> make_frontend();

 private:
  Runtime() = default;
  Status build(const RuntimeOptions& options, LogSink* log_sink);
  Result<Manifest> choose_manifest(const RuntimeOptions& options);
  Status make_objects();
  Status start_engine(const RuntimeOptions& options);

  PluginRegistry registry_;
  ResolvedManifest resolved_;
  std::string model_dir_;
  std::string manifest_name_;
  checkpoint::FolderConfig folder_;  // what the host reads of config.json
  Device device_{};
  DType activation_dtype_ = DType::f32;
  LogSink* log_sink_ = nullptr;
  std::unique_ptr<checkpoint::ModelDirectory> weights_;
  PluginHandle<Tokenizer> tokenizer_;
  PluginHandle<KvCachePolicy> kv_policy_;
  PluginHandle<Quantizer> quantizer_;     // null without a [quantizer] table
  PluginHandle<Model> model_;
  PluginHandle<VisionEncoder> vision_;    // null without a [vision] table
  ChatTemplate chat_template_;
  PluginHandle<Frontend> frontend_;  // made first (frontend_first), until make_frontend() hands it over
  std::unique_ptr<Engine> engine_;  // declared last: stops first
};

}  // namespace hostrun::core
