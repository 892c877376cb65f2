#include "runtime.hpp"

#include <fmt/format.h>

#include <fmt/ranges.h>

#include <algorithm>

#include "checkpoint/folder_config.hpp"
#include "checkpoint/model_directory.hpp"
#include "manifest_table.hpp"

namespace hostrun::core {

namespace fs = std::filesystem;

namespace {

// LMDeploy's names and defaults where it has them.
const SettingSpec kEngineSettings[] = {
    {"session_len", SettingType::integer, "Most tokens (prompt + reply) one request may hold; 0: the model's maximum",
     false, "0", 0, 1e9},
    {"max_batch_size", SettingType::integer, "Most sequences in one engine step", false, "128", 1, 65536},
    {"max_prefill_token_num", SettingType::integer, "Most prompt tokens computed in one step (chunked prefill)", false,
     "8192", 1, 1e9},
    {"cache_block_seq_len", SettingType::integer, "Tokens per KV-cache block", false, "64", 1, 65536},
    {"cache_max_entry_count", SettingType::number,
     "Share of the memory left after the weights that the KV cache takes (on the CPU: of cpu_memory_budget_mb)",
     false, "0.8", 1e-6, 1},
    {"num_kv_blocks", SettingType::integer, "Exactly this many KV blocks (0: from cache_max_entry_count)", false, "0",
     0, 1e9},
    {"enable_prefix_caching", SettingType::boolean, "Reuse the KV blocks of identical prompt prefixes", false,
     "false"},
    {"decode_reserve_tokens", SettingType::integer,
     "Admit a request only while the free KV blocks also cover each running sequence's rest of prompt and next this "
     "many tokens (fewer preemptions); 0: admit while a chunk fits",
     false, "256", 0, 1e9},
    {"cpu_memory_budget_mb", SettingType::integer, "On the CPU, the memory the KV-cache share applies to", false,
     "2048", 1, 1e9},
    {"seed", SettingType::integer, "Seed for requests that bring none (0: from the clock)", false, "0", 0, 9.2e18},
    {"overlap_steps", SettingType::boolean,
     "Schedule step N+1 while the device runs step N, when the model offers it", false, "true"},
    {"device", SettingType::string, "Where the model runs: cpu or cuda (the model plugin must support it)", false,
     "\"cpu\""},
    {"activation_dtype", SettingType::string, "The model's activation dtype: f32, bf16 or f16", false, "\"f32\""},
    {"max_images_per_step", SettingType::integer,
     "Most images the vision encoder takes in one call (its workspace is sized for it)", false, "8", 1, 4096},
    {"max_queued_requests", SettingType::integer,
     "Requests that may wait for a place in the batch; more are refused (a server answers 429). 0: no bound", false,
     "2048", 0, 1e9},
    {"request_timeout_s", SettingType::number,
     "A request still running this many seconds after it arrived ends with an error. 0: no limit", false, "0", 0,
     1e9},
};

EngineConfig engine_config_from(const Settings& s) {
  EngineConfig c;
  c.session_len = int32_t(s.get_int("session_len"));
  c.max_batch_size = int32_t(s.get_int("max_batch_size"));
  c.max_prefill_token_num = int32_t(s.get_int("max_prefill_token_num"));
  c.cache_block_seq_len = int32_t(s.get_int("cache_block_seq_len"));
  c.cache_max_entry_count = s.get_number("cache_max_entry_count");
  c.num_kv_blocks = s.get_int("num_kv_blocks");
  c.enable_prefix_caching = s.get_bool("enable_prefix_caching");
  c.decode_reserve_tokens = int32_t(s.get_int("decode_reserve_tokens"));
  c.cpu_memory_budget_bytes = s.get_int("cpu_memory_budget_mb") << 20;
  c.seed = uint64_t(s.get_int("seed"));
  c.overlap_steps = s.get_bool("overlap_steps");
  c.max_images_per_step = int32_t(s.get_int("max_images_per_step"));
  c.max_queued_requests = int32_t(s.get_int("max_queued_requests"));
  c.request_timeout_seconds = s.get_number("request_timeout_s");
  return c;
}

std::string join_problems(const std::vector<std::string>& problems) {
  std::string joined;
  for (const auto& p : problems) joined += (joined.empty() ? "" : "\n") + p;
  return joined;
}

}  // namespace

HostTableSchema engine_schema() { return {"engine", kEngineSettings}; }

std::vector<HostTableSchema> host_table_schemas() { return {engine_schema(), chat_template_schema(), serves_schema()}; }

fs::path shipped_model_dir() {
  fs::path exe = executable_dir();
  return exe.empty() ? fs::path() : exe.parent_path() / "share" / "hostrun" / "models" / "small";
}

fs::path shipped_calibration_text() {
  fs::path exe = executable_dir();
  return exe.empty() ? fs::path() : exe.parent_path() / "share" / "hostrun" / "calib" / "gutenberg.txt";
}

namespace {

// Device and activation dtype are manifest data ([engine]), not guessed from plugin names.
Status read_engine_target(const ResolvedManifest& resolved, const std::string& manifest_name, Device& device_out,
                          DType& dtype_out) {
  const Settings* engine_settings = resolved.host_table("engine") ? &resolved.host_table("engine")->settings : nullptr;
  const std::string device = engine_settings ? engine_settings->get_string("device") : "cpu";
  const std::string dtype = engine_settings ? engine_settings->get_string("activation_dtype") : "f32";
  if (device != "cpu" && device != "cuda")
    return Status(ErrorCode::invalid_argument, fmt::format("{}: engine.device '{}': expected cpu or cuda", manifest_name, device));
  if (dtype != "f32" && dtype != "bf16" && dtype != "f16")
    return Status(ErrorCode::invalid_argument,
                  fmt::format("{}: engine.activation_dtype '{}': expected f32, bf16 or f16", manifest_name, dtype));
  device_out = device == "cuda" ? Device{DeviceKind::cuda, 0} : Device{DeviceKind::cpu, 0};
  dtype_out = dtype == "f32" ? DType::f32 : dtype == "bf16" ? DType::bf16 : DType::f16;
  return Status();
}

}  // namespace

Result<std::unique_ptr<Runtime>> Runtime::open(const RuntimeOptions& options, LogSink* log_sink) {
  std::unique_ptr<Runtime> runtime(new Runtime());
  Status built = guard([&] { return runtime->build(options, log_sink); });
  if (!built) return built;
  return runtime;
}

Runtime::~Runtime() {
  engine_.reset();  // the loop thread stops before the model and tokenizer go
}

Status Runtime::build(const RuntimeOptions& options, LogSink* log_sink) {
  log_sink_ = log_sink;

  // The model folder.
  if (options.model_dir.empty()) {
    model_dir_ = shipped_model_dir().string();
    if (!fs::exists(fs::path(model_dir_) / "config.json"))
      return Status(ErrorCode::not_found,
                    fmt::format("no MODEL_DIR was given and the small model hostrun ships is not at {} "
                                "(scripts/run.sh puts it there: scripts/make-small-model.sh DIR)",
                                model_dir_));
  } else {
    model_dir_ = options.model_dir;
  }
  if (!fs::is_directory(model_dir_))
    return Status(ErrorCode::not_found, fmt::format("{}: not a model folder (expected an HF folder with config.json)",
                                                    model_dir_));
  if (options.device != "auto" && options.device != "cpu" && options.device != "cuda")
    return Status(ErrorCode::invalid_argument, fmt::format("--device '{}': expected auto, cpu or cuda", options.device));
  registry_.scan(plugin_search_path(options.plugin_dirs));
  // A plugin from --plugin-dir or HOSTRUN_PLUGIN_PATH that takes the name of
  // one hostrun ships replaces it silently otherwise: say so once.
  const fs::path builtin_dir = executable_dir().parent_path() / "lib" / "hostrun" / "plugins";
  for (const auto& refused : registry_.refused())
    if (!refused.shadowed_by.empty() && refused.file.parent_path() == fs::weakly_canonical(builtin_dir))
      Logger(log_sink_, "hostrun").warn("{} shadows the plugin hostrun ships ({})", refused.shadowed_by.string(),
                                        refused.file.string());

  auto manifest = choose_manifest(options);
  if (!manifest) return manifest.status();
  const ManifestTable* tokenizer_table = manifest->table("tokenizer");
  if (!tokenizer_table || !tokenizer_table->values.count("file"))
    if (Status s = manifest->set_override("tokenizer.file", model_dir_, "MODEL_DIR"); !s) return s;
  for (const auto& o : options.overrides)
    if (Status s = manifest->set_override(o.key, o.value, o.label); !s) return s;
  auto resolved = resolve(*manifest, registry_, host_table_schemas());
  if (!resolved) return resolved.status();
  resolved_ = std::move(resolved.value());
  if (options.frontend_first) {
    // Before the tokenizer and the weights load: a frontend's settings (a TLS
    // key that is not the certificate's, an empty API key) stop the start at once.
    if (Status s = read_engine_target(resolved_, manifest_name_, device_, activation_dtype_); !s) return s;
    auto frontend = make_frontend();
    if (!frontend) return frontend.status();
    frontend_ = std::move(frontend.value());
  }
  if (Status s = make_objects(); !s) return s;
  return options.start_engine ? start_engine(options) : Status();
}

const checkpoint::ModelDirectory& Runtime::weights() const noexcept { return *weights_; }

Result<PluginHandle<Quantizer>> Runtime::make_quantizer_for(const std::string& format) const {
  checkpoint::FolderConfig quantized = folder_;
  quantized.quant_method = format;
  const std::vector<ManifestRow> table = builtin_manifest_table();
  auto choice = core::choose_manifest(table, quantized, std::string(device_kind_name(device_.kind)), registry_);
  if (!choice) return choice.status();
  auto manifest = Manifest::parse_string(choice->row->text, "builtin:" + choice->row->manifest, model_dir_);
  if (!manifest) return manifest.status();
  // Resolved as build() resolves a manifest, so every table validates.
  const ManifestTable* tokenizer_table = manifest->table("tokenizer");
  if (!tokenizer_table || !tokenizer_table->values.count("file"))
    if (Status s = manifest->set_override("tokenizer.file", model_dir_, "MODEL_DIR"); !s) return s;
  auto resolved = resolve(*manifest, registry_, host_table_schemas());
  if (!resolved) return resolved.status();
  const ResolvedInstance* instance = resolved->instance("quantizer");
  if (!instance)
    return Status(ErrorCode::internal, fmt::format("builtin:{} serves {} folders but has no [quantizer] table",
                                                   choice->row->manifest, format));
  auto made = registry_.create<Quantizer>(instance->plugin->name, instance->settings, log_sink_, instance->table, device_);
  if (!made) return made.status();
  if ((*made)->format() != format)
    return Status(ErrorCode::internal, fmt::format("builtin:{}'s quantizer '{}' reads \"{}\", not \"{}\"",
                                                   choice->row->manifest, instance->plugin->name, (*made)->format(),
                                                   format));
  return made;
}

// --model-format says what the folder must be: "hf" an unquantized one,
// anything else the quant_method of its quantization_config. The host knows
// no format: it compares the two strings.
static Status check_model_format(const std::string& wanted, const checkpoint::FolderConfig& folder,
                                 const std::string& model_dir) {
  if (wanted.empty()) return {};
  std::string format = wanted;
  std::transform(format.begin(), format.end(), format.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (format == "hf") {
    if (folder.quant_method.empty()) return {};
    return Status(ErrorCode::invalid_argument,
                  fmt::format("--model-format hf: {} is a quantized folder (quantization_config.quant_method \"{}\"); "
                              "say --model-format {} or leave the flag out",
                              model_dir, folder.quant_method, folder.quant_method));
  }
  if (folder.quant_method == format) return {};
  if (folder.quant_method.empty())
    return Status(ErrorCode::invalid_argument,
                  fmt::format("--model-format {}: {} has no quantization_config in its config.json: it is an "
                              "unquantized folder (--model-format hf)",
                              format, model_dir));
  return Status(ErrorCode::invalid_argument,
                fmt::format("--model-format {}: {} is a {} folder (quantization_config.quant_method \"{}\")", format,
                            model_dir, folder.quant_method, folder.quant_method));
}

// The manifest and the device: --manifest as given (with --device applied to
// its [engine] device, or refused when its model plugin cannot run there), or
// the built-in manifest the table gives for the folder.
Result<Manifest> Runtime::choose_manifest(const RuntimeOptions& options) {
  auto read = checkpoint::read_folder_config(model_dir_);
  if (!read) return read.status();
  folder_ = std::move(read.value());
  const checkpoint::FolderConfig* folder = &folder_;
  if (Status s = check_model_format(options.model_format, *folder, model_dir_); !s) return s;
  Logger log(log_sink_, "hostrun");
  if (!options.manifest_file.empty()) {
    auto manifest = Manifest::parse_file(options.manifest_file);
    if (!manifest) return manifest.status();
    manifest_name_ = options.manifest_file;
    if (options.device != "auto")
      if (Status s = manifest->set_override("engine.device", options.device, "--device"); !s) return s;
    // A [serves] table says which folders the manifest runs; hold it to that.
    if (const ManifestTable* serves = manifest->table("serves")) {
      ManifestRow row;
      for (const auto& [key, raw] : serves->values)
        if (raw.value)
          if (auto* list = std::get_if<std::vector<std::string>>(&*raw.value))
            (key == "architectures" ? row.architectures : row.quantizations) = *list;
      if (row.quantizations.empty()) row.quantizations = {"none"};
      auto listed = [](const std::vector<std::string>& list, const std::string& v) {
        return std::find(list.begin(), list.end(), v) != list.end();
      };
      if (!row.architectures.empty() &&
          (!listed(row.architectures, folder->architecture()) || !listed(row.quantizations, folder->quantization())))
        return Status(ErrorCode::invalid_argument,
                      fmt::format("{}: [serves] ({}) runs {} with {}, but {} is {} with {}", manifest_name_,
                                  serves->origin.describe(), fmt::join(row.architectures, "|"),
                                  fmt::join(row.quantizations, "|"), model_dir_, folder->architecture(),
                                  folder->quantization()));
    }
    return manifest;
  }
  const std::vector<ManifestRow> table = builtin_manifest_table();
  auto choice = core::choose_manifest(table, *folder, options.device, registry_);
  if (!choice) return choice.status();
  if (!choice->note.empty()) log.info("running on the CPU: {}", choice->note);
  manifest_name_ = choice->row->manifest;
  return Manifest::parse_string(choice->row->text, "builtin:" + manifest_name_, model_dir_);
}

Result<Wiring> wire(const ResolvedManifest& resolved, const PluginRegistry& registry, LogSink* log_sink,
                    const std::string& manifest_name) {
  Wiring w;
  if (Status s = read_engine_target(resolved, manifest_name, w.device, w.activation_dtype); !s) return s;
  if (const ResolvedHostTable* table = resolved.host_table("chat_template")) {
    auto chosen = chat_template_from_settings(table->settings, manifest_name + " [chat_template]");
    if (!chosen) return chosen.status();
    w.chat_template = *chosen;
  }

  std::vector<std::string> missing;
  for (const char* table : {"model", "kv_cache", "tokenizer"})
    if (!resolved.instance(table)) missing.push_back(fmt::format("[{}]", table));
  if (!missing.empty())
    return Status(ErrorCode::invalid_argument, fmt::format("{}: the manifest has no {} table{} (a model needs a model, "
                                                           "a KV cache policy and a tokenizer)",
                                                           manifest_name, fmt::join(missing, ", "),
                                                           missing.size() > 1 ? "s" : ""));
  auto make = [&]<typename Interface>(const char* table, PluginHandle<Interface>& into) -> Status {
    const ResolvedInstance* instance = resolved.instance(table);
    if (!instance) return Status();
    auto made = registry.create<Interface>(instance->plugin->name, instance->settings, log_sink, instance->table, w.device);
    if (!made) return made.status();
    into = *made;
    return Status();
  };
  // The model first: it is what --device chooses, so its probe speaks first.
  if (Status s = make("model", w.model); !s) return s;
  if (Status s = make("tokenizer", w.tokenizer); !s) return s;
  if (Status s = make("kv_cache", w.kv_policy); !s) return s;
  if (Status s = make("quantizer", w.quantizer); !s) return s;
  if (Status s = make("vision", w.vision); !s) return s;
  if (Status s = check_kv_format(w.kv_policy->format(), w.device, w.activation_dtype); !s)
    return Status(s.code(), fmt::format("{}: {}", manifest_name, s.message()));
  return w;
}

// One object per role table, each handed to whoever uses it.
Status Runtime::make_objects() {
  auto wired = wire(resolved_, registry_, log_sink_, manifest_name_);
  if (!wired) return wired.status();
  device_ = wired->device;
  activation_dtype_ = wired->activation_dtype;
  model_ = wired->model;
  tokenizer_ = wired->tokenizer;
  kv_policy_ = wired->kv_policy;
  quantizer_ = wired->quantizer;
  chat_template_ = wired->chat_template;
  PluginHandle<VisionEncoder> vision = wired->vision;
  const Settings* engine_settings = resolved_.host_table("engine") ? &resolved_.host_table("engine")->settings : nullptr;

  auto weights = checkpoint::ModelDirectory::open(model_dir_);
  if (!weights) return weights.status();
  weights_ = std::move(weights.value());
  const checkpoint::FolderConfig* folder = &folder_;
  // A quantized folder is read by a quantizer of its format; a plain one may
  // still be quantized at load by a quantizer that can.
  if (!folder->quant_method.empty()) {
    if (!quantizer_)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("{}: quantization_config.quant_method is \"{}\", but {} has no [quantizer] table to "
                                "read such weights",
                                folder->source, folder->quant_method, manifest_name_));
    if (quantizer_->format() != folder->quant_method)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("{}: quantization_config.quant_method is \"{}\", but the [quantizer] of {} ('{}') reads "
                                "\"{}\"",
                                folder->source, folder->quant_method, manifest_name_,
                                resolved_.instance("quantizer")->plugin->name, quantizer_->format()));
  }

  LoadContext load;
  load.weights = weights_.get();
  load.device = device_;
  load.activation_dtype = activation_dtype_;
  load.quantizer = quantizer_.get();
  load.kv_policy = kv_policy_.get();
  if (Status loaded = model_->load(load); !loaded)
    return Status(loaded.code(), fmt::format("loading {}: {}", model_dir_, loaded.message()));

  if (vision) {
    vision_ = vision;
    VisionLoadContext vision_load;
    vision_load.weights = weights_.get();
    vision_load.device = device_;
    vision_load.activation_dtype = activation_dtype_;
    const Settings* engine = engine_settings;
    vision_load.max_images = engine ? int32_t(engine->get_int("max_images_per_step")) : 1;
    if (Status loaded = vision_->load(vision_load); !loaded)
      return Status(loaded.code(), fmt::format("loading the vision encoder of {}: {}", model_dir_, loaded.message()));
  }
  return Status();
}

Status Runtime::start_engine(const RuntimeOptions& options) {
  // The chat template: the flag, else the manifest's table, else Llama-3's.
  if (!options.chat_template.empty()) {
    auto chosen = resolve_chat_template(options.chat_template);
    if (!chosen) return chosen.status();
    chat_template_ = *chosen;
  } else if (!resolved_.host_table("chat_template")) {
    chat_template_ = *find_builtin_chat_template("llama3");
  }

  EngineParts parts;
  parts.model = model_;
  parts.kv_policy = kv_policy_;
  parts.tokenizer = tokenizer_;
  parts.vision = vision_;
  parts.model_name = fs::path(model_dir_).filename().string();
  if (parts.model_name.empty()) parts.model_name = model_dir_;
  parts.log_sink = log_sink_;
  std::vector<std::string> problems;
  for (const auto& stop : chat_template_.stop_tokens) {
    if (auto id = tokenizer_->token_to_id(stop)) parts.extra_stop_ids.push_back(*id);
    else problems.push_back(fmt::format("chat template '{}': stop token '{}' is not in the tokenizer's vocabulary",
                                        chat_template_.name, stop));
  }
  if (vision_) {
    // The chat template spells each image as text the tokenizer must turn
    // into exactly the id the encoder's embeddings replace.
    const VisionInfo vision = vision_->info();
    const std::optional<TokenId> id = tokenizer_->token_to_id(vision.placeholder);
    if (id != vision.placeholder_id)
      problems.push_back(fmt::format(
          "the vision encoder's image placeholder '{}' is id {}, but the tokenizer {}", vision.placeholder,
          vision.placeholder_id,
          id ? fmt::format("gives it id {}", *id) : std::string("has no such token (an added token of tokenizer.json)")));
    if (chat_template_.image_prefix.find(vision.placeholder) == std::string::npos)
      problems.push_back(fmt::format("chat template '{}': its image_prefix \"{}\" does not hold the image placeholder "
                                     "'{}'",
                                     chat_template_.name, chat_template_.image_prefix, vision.placeholder));
  }
  if (!problems.empty()) return Status(ErrorCode::invalid_argument, join_problems(problems));
  parts.extra_stop_strings = chat_template_.stop_strings;
  // Template text may spell special tokens (and the image placeholder);
  // message content is always plain text, so a user cannot inject
  // <|eot_id|> and end a turn early, nor forge an image position.
  parts.prompt_builder = [tokenizer = tokenizer_, chat_template = chat_template_](
                             const std::vector<ChatMessage>& messages) -> Result<std::vector<TokenId>> {
    auto segments = render_chat_segments(chat_template, messages, true);
    if (!segments) return segments.status();
    std::vector<TokenId> ids;
    for (const auto& segment : *segments) {
      EncodeOptions encode{.add_bos = false, .parse_special = segment.from_template};
      if (Status s = tokenizer->encode(segment.text, encode, ids); !s) return s;
    }
    return ids;
  };

  const ResolvedHostTable* engine_table = resolved_.host_table("engine");
  EngineConfig engine_config;
  if (engine_table) {
    engine_config = engine_config_from(engine_table->settings);
  } else {
    // No [engine] table at all: the defaults of the schema, validated like a table.
    std::map<std::string, ValueOrigin> origins;
    engine_config = engine_config_from(
        validate_settings(kEngineSettings, {}, "engine", "hostrun", {}, origins, problems));
  }
  auto engine = Engine::start(engine_config, std::move(parts));
  if (!engine) return engine.status();
  engine_ = std::move(engine.value());
  Logger(log_sink_, "hostrun")
      .info("model {} ({}), manifest {}{}{}", model_dir_, model_->info().architecture, manifest_name_,
            quantizer_ ? ", quantizer " + resolved_.instance("quantizer")->plugin->name : "",
            vision_ ? ", vision " + resolved_.instance("vision")->plugin->name : "");
  return Status();
}

Result<PluginHandle<Frontend>> Runtime::make_frontend() {
  if (frontend_) return std::move(frontend_);
  const ResolvedInstance* frontend = resolved_.instance("frontend");
  if (!frontend) return Status(ErrorCode::invalid_argument, fmt::format("{}: no [frontend] table", manifest_name_));
  return registry_.create<Frontend>(frontend->plugin->name, frontend->settings, log_sink_, "frontend", device_);
}

}  // namespace hostrun::core
