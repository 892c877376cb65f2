// Random LLaVA folders: random_checkpoint.cpp's tensors under LLaVA's names.
#include "random_llava.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "checkpoint/detail.hpp"
#include "checkpoint/model_directory.hpp"
#include "llama_common/llama_weights.hpp"

namespace hostrun::llama {

namespace {

namespace fs = std::filesystem;
namespace detail = checkpoint::detail;
using checkpoint::TensorSpec;
using checkpoint::detail::fail;
using nlohmann::ordered_json;

// ordered_json keeps a file's key order, but inserts in linear time: the
// 128k-entry vocabulary of tokenizer.json takes `Json` = nlohmann::json
// (sorted keys, which no reader depends on).
template <typename Json = ordered_json>
Json read_json(const fs::path& path) {
  auto text = detail::read_text_file(path);
  Json parsed = Json::parse(text, nullptr, false);
  if (parsed.is_discarded() || !parsed.is_object()) fail(ErrorCode::invalid_argument, "{}: not a JSON object", path.string());
  return parsed;
}

// The tokenizer with "<image>" appended as a special added token; its id.
int64_t write_tokenizer_with_image_token(const fs::path& from, const fs::path& to) {
  nlohmann::json tokenizer = read_json<nlohmann::json>(from / "tokenizer.json");
  int64_t next = 0;
  if (tokenizer.contains("model") && tokenizer["model"].contains("vocab"))
    for (const auto& [text, id] : tokenizer["model"]["vocab"].items()) next = std::max<int64_t>(next, id.get<int64_t>() + 1);
  for (const auto& added : tokenizer["added_tokens"]) {
    if (added["content"] == "<image>") fail(ErrorCode::invalid_argument, "{}: already has <image>", from.string());
    next = std::max<int64_t>(next, added["id"].get<int64_t>() + 1);
  }
  ordered_json token = {{"id", next},        {"content", "<image>"}, {"single_word", false}, {"lstrip", false},
                        {"rstrip", false},   {"normalized", false},  {"special", true}};
  tokenizer["added_tokens"].push_back(nlohmann::json::parse(token.dump()));
  detail::write_text_file(to / "tokenizer.json", tokenizer.dump(2) + "\n");
  ordered_json config = read_json(from / "tokenizer_config.json");
  token.erase("id");
  config["added_tokens_decoder"][std::to_string(next)] = token;
  detail::write_text_file(to / "tokenizer_config.json", config.dump(2) + "\n");
  return next;
}

std::vector<TensorSpec> vision_specs(const RandomLlavaVision& v, int64_t text_hidden, DType dtype, bool transformers5) {
  std::vector<TensorSpec> specs;
  const auto add = [&](std::string name, std::vector<int64_t> shape) { specs.push_back({std::move(name), dtype, std::move(shape)}); };
  const std::string tower = transformers5 ? "model.vision_tower.vision_model." : "vision_tower.vision_model.";
  const std::string projector = transformers5 ? "model.multi_modal_projector." : "multi_modal_projector.";
  const int64_t h = v.hidden_size, side = v.image_size / v.patch_size;
  const auto norm = [&](const std::string& p) {
    add(p + "weight", {h});
    add(p + "bias", {h});
  };
  const auto linear = [&](const std::string& p, int64_t out, int64_t in) {
    add(p + "weight", {out, in});
    add(p + "bias", {out});
  };
  add(tower + "embeddings.class_embedding", {h});
  add(tower + "embeddings.patch_embedding.weight", {h, 3, v.patch_size, v.patch_size});
  add(tower + "embeddings.position_embedding.weight", {side * side + 1, h});
  norm(tower + "pre_layrnorm.");
  for (int64_t l = 0; l < v.layers; ++l) {
    const std::string p = fmt::format("{}encoder.layers.{}.", tower, l);
    for (const char* proj : {"k_proj.", "v_proj.", "q_proj.", "out_proj."}) linear(p + "self_attn." + proj, h, h);
    norm(p + "layer_norm1.");
    linear(p + "mlp.fc1.", v.intermediate_size, h);
    linear(p + "mlp.fc2.", h, v.intermediate_size);
    norm(p + "layer_norm2.");
  }
  norm(tower + "post_layernorm.");
  linear(projector + "linear_1.", text_hidden, h);
  linear(projector + "linear_2.", text_hidden, text_hidden);
  return specs;
}

ordered_json image_processor(const RandomLlavaVision& v) {
  return {{"crop_size", {{"height", v.image_size}, {"width", v.image_size}}},
          {"do_center_crop", true},
          {"do_convert_rgb", true},
          {"do_normalize", true},
          {"do_rescale", true},
          {"do_resize", true},
          {"image_mean", {0.48145466, 0.4578275, 0.40821073}},
          {"image_processor_type", "CLIPImageProcessor"},
          {"image_std", {0.26862954, 0.26130258, 0.27577711}},
          {"resample", 3},
          {"rescale_factor", 1.0 / 255.0},
          {"size", {{"shortest_edge", v.image_size}}}};
}

}  // namespace

Status write_random_llava_checkpoint(const fs::path& directory, LlamaConfig text, const RandomLlavaOptions& options) noexcept {
  return guard([&] {
    check_random_options(options.weights);
    const RandomLlavaVision& v = options.vision;
    if (v.hidden_size <= 0 || v.heads <= 0 || v.hidden_size % v.heads != 0 || v.patch_size <= 0 ||
        v.image_size % v.patch_size != 0 || v.layers <= 0 || v.intermediate_size <= 0)
      fail(ErrorCode::invalid_argument, "random LLaVA: vision sizes do not fit (hidden {} / heads {}, image {} / patch {})",
           v.hidden_size, v.heads, v.image_size, v.patch_size);
    if (options.tokenizer_dir.empty()) fail(ErrorCode::invalid_argument, "random LLaVA: a tokenizer folder is required");
    std::error_code ec;
    fs::create_directories(directory, ec);
    if (ec) fail(ErrorCode::io_error, "{}: cannot create the directory: {}", directory.string(), ec.message());

    const int64_t image_id = write_tokenizer_with_image_token(options.tokenizer_dir, directory);
    text.vocab_size = std::max(text.vocab_size, (image_id + 1 + 63) / 64 * 64);
    text.architectures = {"LlavaForConditionalGeneration"};
    text.names = options.transformers5 ? llava_transformers5_names() : llava_transformers4_names();
    text.torch_dtype = std::string(torch_dtype_name(options.weights.dtype));
    text.quant_method.reset();
    if (Status s = validate_llama_config(text, (directory / "config.json").string()); !s) throw Error(s);

    ordered_json text_config = ordered_json::parse(llama_config_to_json(text));
    text_config["architectures"] = {"LlamaForCausalLM"};
    ordered_json config;
    config["architectures"] = {"LlavaForConditionalGeneration"};
    config["model_type"] = "llava";
    config[options.transformers5 ? "image_token_id" : "image_token_index"] = image_id;
    config["projector_hidden_act"] = "gelu";
    config["vision_feature_layer"] = v.feature_layer;
    config["vision_feature_select_strategy"] = v.select_strategy;
    config["tie_word_embeddings"] = text.tie_word_embeddings;
    config[options.transformers5 ? "dtype" : "torch_dtype"] = text.torch_dtype;
    config["text_config"] = text_config;
    config["vision_config"] = {{"model_type", "clip_vision_model"}, {"hidden_size", v.hidden_size},
                               {"intermediate_size", v.intermediate_size}, {"num_hidden_layers", v.layers},
                               {"num_attention_heads", v.heads}, {"image_size", v.image_size},
                               {"patch_size", v.patch_size}, {"hidden_act", "quick_gelu"}, {"projection_dim", 16}};
    detail::write_text_file(directory / checkpoint::kConfigFileName, config.dump(2) + "\n");
    write_generation_config(directory, text);
    if (options.transformers5) {
      ordered_json processor = {{"image_processor", image_processor(v)}, {"processor_class", "LlavaProcessor"},
                                {"patch_size", v.patch_size}, {"vision_feature_select_strategy", v.select_strategy}};
      detail::write_text_file(directory / "processor_config.json", processor.dump(2) + "\n");
    } else {
      detail::write_text_file(directory / "preprocessor_config.json", image_processor(v).dump(2) + "\n");
    }

    std::vector<TensorSpec> specs;
    for (auto& spec : llama_tensor_specs(text)) specs.push_back({std::move(spec.name), options.weights.dtype, std::move(spec.shape)});
    for (auto& spec : vision_specs(v, text.hidden_size, options.weights.dtype, options.transformers5))
      specs.push_back(std::move(spec));
    // Values keyed by LlamaForCausalLM's names (and transformers 4's for the
    // towers): a LLaVA folder holds the weights `random` writes for the same
    // seed and shape, in either layout, so tests can compare them. The rows
    // from <image> on (its embedding is always replaced, the rest pad) are
    // zeros, so they score 0 and never reach a top-k: sampling agrees with
    // the Llama folder's.
    const LlamaTensorNames names = text.names;
    const uint64_t real_rows = uint64_t(image_id), hidden = uint64_t(text.hidden_size);
    const auto values_of = [names, real_rows, hidden](const std::string& name) -> TensorValues {
      if (name == names.embed_tokens()) return {"model.embed_tokens.weight", real_rows * hidden};
      if (name == names.lm_head) return {"lm_head.weight", real_rows * hidden};
      if (name.starts_with(names.decoder)) return {"model." + name.substr(names.decoder.size())};
      if (name.starts_with("model.")) return {name.substr(6)};  // transformers 5's towers
      return {name};
    };
    write_random_tensors(directory, std::move(specs), options.weights, values_of);
  });
}

}  // namespace hostrun::llama
