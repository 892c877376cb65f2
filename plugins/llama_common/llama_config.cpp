#include "llama_common/llama_config.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/ranges.h>
#include <hostrun/json_bounds.hpp>
#include <nlohmann/json.hpp>

#include "llama_common/text.hpp"

namespace hostrun::llama {

using nlohmann::json;

namespace {

template <typename... Args>
[[noreturn]] void fail(ErrorCode code, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(code, fmt::format(format, std::forward<Args>(args)...));
}

// Sizes above this are not real models, and keeping every size below 2^31
// means products of two (vocab * hidden, heads * head_dim) fit in int64.
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();

std::string found(const json& value) {
  if (value.is_number() || value.is_boolean() || value.is_null()) return value.dump();
  if (value.is_string()) return quote_name(value.get_ref<const std::string&>());
  return std::string("a JSON ") + value.type_name();
}

// Typed access to one JSON object; "absent" and null both mean "not given",
// as in HF configs, where null is how a default is spelled.
class Fields {
 public:
  Fields(const json& object, std::string_view source, std::string prefix = "")
      : object_(object), source_(source), prefix_(std::move(prefix)) {}

  const json* get(std::string_view key) const {
    auto it = object_.find(key);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }
  std::string key_name(std::string_view key) const { return prefix_ + std::string(key); }
  template <typename... Args>
  [[noreturn]] void error(ErrorCode code, std::string_view key, fmt::format_string<Args...> format,
                          Args&&... args) const {
    fail(code, "{}: key '{}': {}", source_, key_name(key), fmt::format(format, std::forward<Args>(args)...));
  }

  std::optional<int64_t> integer(std::string_view key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      error(ErrorCode::invalid_argument, key, "expected an integer, found {} (too large)", found(*v));
    if (!v->is_number_integer()) error(ErrorCode::invalid_argument, key, "expected an integer, found {}", found(*v));
    return v->get<int64_t>();
  }
  std::optional<double> number(std::string_view key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number()) error(ErrorCode::invalid_argument, key, "expected a number, found {}", found(*v));
    return v->get<double>();
  }
  std::optional<bool> boolean(std::string_view key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_boolean()) error(ErrorCode::invalid_argument, key, "expected true or false, found {}", found(*v));
    return v->get<bool>();
  }
  std::optional<std::string> string(std::string_view key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) error(ErrorCode::invalid_argument, key, "expected a string, found {}", found(*v));
    return v->get<std::string>();
  }
  int64_t required_integer(std::string_view key) const {
    auto v = integer(key);
    if (!v) fail(ErrorCode::invalid_argument, "{}: missing key '{}' (expected a positive integer)", source_,
                 key_name(key));
    return *v;
  }
  double required_number(std::string_view key) const {
    auto v = number(key);
    if (!v) fail(ErrorCode::invalid_argument, "{}: missing key '{}' (expected a number)", source_, key_name(key));
    return *v;
  }
  // eos_token_id and friends: an int, or a list of ints.
  std::vector<int64_t> token_ids(std::string_view key) const {
    const json* v = get(key);
    std::vector<int64_t> ids;
    if (v == nullptr) return ids;
    auto one = [&](const json& id) {
      if (!id.is_number_integer() || (id.is_number_unsigned() && id.get<uint64_t>() > uint64_t(kMaxSize)) ||
          id.get<int64_t>() < 0)
        error(ErrorCode::invalid_argument, key, "expected a non-negative token id or a list of them, found {}",
              found(id));
      ids.push_back(id.get<int64_t>());
    };
    if (v->is_array()) {
      for (const auto& id : *v) one(id);
    } else {
      one(*v);
    }
    return ids;
  }

 private:
  const json& object_;
  std::string_view source_;
  std::string prefix_;
};

json parse_object(std::string_view text, std::string_view source) {
  Result<json> root = parse_json_bounded<json>(text, JsonLimits{}, source);
  if (!root) fail(ErrorCode::invalid_argument, "{}", root.status().message());
  if (!root->is_object())
    fail(ErrorCode::invalid_argument, "{}: expected a JSON object, found a JSON {}", source, root->type_name());
  return std::move(root).value();
}

// `key` is "rope_scaling" (transformers 4) or "rope_parameters" (5, which
// also holds rope_theta); both spell the scaling kind and its factors alike.
std::optional<Llama3RopeScaling> parse_rope_scaling(const Fields& top, std::string_view source,
                                                    std::string_view key = "rope_scaling") {
  const json* scaling = top.get(key);
  if (scaling == nullptr) return std::nullopt;
  if (!scaling->is_object())
    top.error(ErrorCode::invalid_argument, key, "expected null or an object, found {}", found(*scaling));
  Fields fields(*scaling, source, top.key_name(key) + ".");
  // Older configs spell the kind "type", newer ones "rope_type".
  auto rope_type = fields.string("rope_type");
  auto legacy_type = fields.string("type");
  if (rope_type && legacy_type && *rope_type != *legacy_type)
    fields.error(ErrorCode::invalid_argument, "rope_type", "'{}' disagrees with rope_scaling.type '{}'", *rope_type,
                 *legacy_type);
  if (!rope_type) rope_type = legacy_type;
  if (!rope_type)
    fail(ErrorCode::invalid_argument, "{}: key '{}': expected 'rope_type' (or 'type') inside it", source,
         top.key_name(key));
  if (*rope_type == "default") return std::nullopt;
  if (*rope_type != "llama3")
    fields.error(ErrorCode::unsupported, fields.get("rope_type") ? "rope_type" : "type",
                 "'{}' is not supported (supported: llama3, default)", *rope_type);
  Llama3RopeScaling llama3;
  llama3.factor = fields.required_number("factor");
  llama3.low_freq_factor = fields.required_number("low_freq_factor");
  llama3.high_freq_factor = fields.required_number("high_freq_factor");
  llama3.original_max_position_embeddings = fields.required_integer("original_max_position_embeddings");
  return llama3;
}

void check_positive(std::string_view source, std::string_view key, int64_t value) {
  if (value <= 0 || value > kMaxSize)
    fail(ErrorCode::invalid_argument, "{}: key '{}': expected a positive integer below 2^31, found {}", source, key,
         value);
}

void check_token_ids(std::string_view source, std::string_view key, const std::vector<int64_t>& ids,
                     int64_t vocab_size) {
  for (int64_t id : ids)
    if (id < 0 || id >= vocab_size)
      fail(ErrorCode::invalid_argument, "{}: key '{}': token id {} is outside the vocabulary [0, {})", source, key,
           id, vocab_size);
}

void validate(const LlamaConfig& c, std::string_view config_source) {
  if (!c.architectures.empty() && !c.is_llava() &&
      std::find(c.architectures.begin(), c.architectures.end(), "LlamaForCausalLM") == c.architectures.end())
    fail(ErrorCode::unsupported,
         "{}: key 'architectures': expected [\"LlamaForCausalLM\"] or [\"LlavaForConditionalGeneration\"], found [{}]",
         config_source, fmt::format("\"{}\"", fmt::join(c.architectures, "\", \"")));
  // A LLaVA folder's keys below are its text_config's.
  const std::string where = c.is_llava() ? fmt::format("{}: text_config", config_source) : std::string(config_source);
  const std::string_view source = where;
  check_positive(source, "hidden_size", c.hidden_size);
  check_positive(source, "intermediate_size", c.intermediate_size);
  check_positive(source, "num_hidden_layers", c.num_hidden_layers);
  check_positive(source, "num_attention_heads", c.num_attention_heads);
  check_positive(source, "num_key_value_heads", c.num_key_value_heads);
  check_positive(source, "head_dim", c.head_dim);
  check_positive(source, "vocab_size", c.vocab_size);
  check_positive(source, "max_position_embeddings", c.max_position_embeddings);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail(ErrorCode::invalid_argument,
         "{}: key 'num_key_value_heads': expected a divisor of num_attention_heads ({}), found {}", source,
         c.num_attention_heads, c.num_key_value_heads);
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))
    fail(ErrorCode::invalid_argument, "{}: key 'rope_theta': expected a positive number, found {}", source,
         c.rope_theta);
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps))
    fail(ErrorCode::invalid_argument, "{}: key 'rms_norm_eps': expected a positive number, found {}", source,
         c.rms_norm_eps);
  if (c.hidden_act != "silu")
    fail(ErrorCode::unsupported, "{}: key 'hidden_act': expected \"silu\" (Llama's SwiGLU MLP), found \"{}\"", source,
         c.hidden_act);
  if (const auto& s = c.rope_scaling) {
    if (!(s->factor >= 1) || !std::isfinite(s->factor))
      fail(ErrorCode::invalid_argument, "{}: key 'rope_scaling.factor': expected a number >= 1, found {}", source,
           s->factor);
    if (!(s->low_freq_factor > 0) || !std::isfinite(s->low_freq_factor))
      fail(ErrorCode::invalid_argument, "{}: key 'rope_scaling.low_freq_factor': expected a positive number, found {}",
           source, s->low_freq_factor);
    // The llama3 rule interpolates over 1 / (high - low): equal factors divide by zero.
    if (!(s->high_freq_factor > s->low_freq_factor) || !std::isfinite(s->high_freq_factor))
      fail(ErrorCode::invalid_argument,
           "{}: key 'rope_scaling.high_freq_factor': expected a number above low_freq_factor ({}), found {}", source,
           s->low_freq_factor, s->high_freq_factor);
    check_positive(source, "rope_scaling.original_max_position_embeddings", s->original_max_position_embeddings);
  }
  if (c.bos_token_id) check_token_ids(source, "bos_token_id", {*c.bos_token_id}, c.vocab_size);
  check_token_ids(source, "eos_token_id", c.eos_token_ids, c.vocab_size);
}

// HF LlamaConfig's own defaults. transformers writes a nested config
// (LLaVA's text_config) as its difference from them, so a LLaVA folder's
// text_config usually leaves out hidden_size and the rest.
struct LlamaClassDefaults {
  int64_t vocab_size = 32000, hidden_size = 4096, intermediate_size = 11008, num_hidden_layers = 32,
          num_attention_heads = 32, bos_token_id = 1, eos_token_id = 2;
};

// The language model's keys of `f` into `c`: every size required at the top
// of a LlamaForCausalLM config.json, LlamaConfig's defaults inside text_config.
void parse_text_fields(const Fields& f, std::string_view source, const LlamaClassDefaults* defaults, LlamaConfig& c) {
  auto size = [&](std::string_view key, int64_t LlamaClassDefaults::*fallback) {
    return defaults ? f.integer(key).value_or(defaults->*fallback) : f.required_integer(key);
  };
  c.model_type = f.string("model_type").value_or("llama");
  if (defaults && c.model_type != "llama")
    f.error(ErrorCode::unsupported, "model_type", "\"{}\" is not supported (LLaVA folders with a Llama language model)",
            c.model_type);
  c.hidden_size = size("hidden_size", &LlamaClassDefaults::hidden_size);
  c.intermediate_size = size("intermediate_size", &LlamaClassDefaults::intermediate_size);
  c.num_hidden_layers = size("num_hidden_layers", &LlamaClassDefaults::num_hidden_layers);
  c.num_attention_heads = size("num_attention_heads", &LlamaClassDefaults::num_attention_heads);
  c.vocab_size = size("vocab_size", &LlamaClassDefaults::vocab_size);
  check_positive(source, f.key_name("hidden_size"), c.hidden_size);
  check_positive(source, f.key_name("num_attention_heads"), c.num_attention_heads);
  c.num_key_value_heads = f.integer("num_key_value_heads").value_or(c.num_attention_heads);
  if (auto head_dim = f.integer("head_dim")) {
    c.head_dim = *head_dim;
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      fail(ErrorCode::invalid_argument,
           "{}: key '{}': expected a multiple of num_attention_heads ({}) since head_dim is not given, found {}",
           source, f.key_name("hidden_size"), c.num_attention_heads, c.hidden_size);
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  c.max_position_embeddings = f.integer("max_position_embeddings").value_or(c.max_position_embeddings);
  c.rope_theta = f.number("rope_theta").value_or(c.rope_theta);
  c.rope_scaling = parse_rope_scaling(f, source);
  // transformers 5: {"rope_type": ..., "rope_theta": ..., factors} in one object.
  if (const json* parameters = f.get("rope_parameters")) {
    if (parameters->is_object())
      if (auto theta = Fields(*parameters, source, f.key_name("rope_parameters.")).number("rope_theta"))
        c.rope_theta = *theta;
    if (auto scaling = parse_rope_scaling(f, source, "rope_parameters")) c.rope_scaling = scaling;
  }
  c.rms_norm_eps = f.number("rms_norm_eps").value_or(c.rms_norm_eps);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings").value_or(false);
  c.attention_bias = f.boolean("attention_bias").value_or(false);
  c.mlp_bias = f.boolean("mlp_bias").value_or(false);
  c.hidden_act = f.string("hidden_act").value_or("silu");
  c.bos_token_id = f.integer("bos_token_id");
  c.eos_token_ids = f.token_ids("eos_token_id");
  if (defaults && !f.get("bos_token_id")) c.bos_token_id = defaults->bos_token_id;
  if (defaults && !f.get("eos_token_id")) c.eos_token_ids = {defaults->eos_token_id};
  // transformers >= 4.56 writes "dtype"; older versions "torch_dtype".
  c.torch_dtype = f.string("torch_dtype").value_or(f.string("dtype").value_or(""));
}

LlamaConfig parse_config(std::string_view text, std::string_view source) {
  const json root = parse_object(text, source);
  Fields f(root, source);
  LlamaConfig c;
  if (const json* arch = f.get("architectures")) {
    if (!arch->is_array())
      f.error(ErrorCode::invalid_argument, "architectures", "expected a list of strings, found {}", found(*arch));
    c.architectures.clear();
    for (const auto& name : *arch) {
      if (!name.is_string())
        f.error(ErrorCode::invalid_argument, "architectures", "expected a list of strings, found an element {}",
                found(name));
      c.architectures.push_back(name.get<std::string>());
    }
  }
  if (c.is_llava()) {
    const json* text_config = f.get("text_config");
    if (text_config == nullptr || !text_config->is_object())
      f.error(ErrorCode::invalid_argument, "text_config", "expected the language model's config (an object), found {}",
              text_config ? found(*text_config) : std::string("nothing"));
    const LlamaClassDefaults defaults;
    parse_text_fields(Fields(*text_config, source, "text_config."), source, &defaults, c);
    // LlavaConfig keeps tie_word_embeddings and the dtype at the top too.
    if (!Fields(*text_config, source).get("tie_word_embeddings"))
      c.tie_word_embeddings = f.boolean("tie_word_embeddings").value_or(false);
    if (c.torch_dtype.empty()) c.torch_dtype = f.string("torch_dtype").value_or(f.string("dtype").value_or(""));
    c.names = llava_transformers4_names();
  } else {
    parse_text_fields(f, source, nullptr, c);
  }
  if (const json* quant = f.get("quantization_config")) {
    if (!quant->is_object())
      f.error(ErrorCode::invalid_argument, "quantization_config", "expected an object, found {}", found(*quant));
    c.quant_method = Fields(*quant, source, "quantization_config.").string("quant_method").value_or("unknown");
  }
  validate(c, source);
  return c;
}

GenerationConfig parse_generation(std::string_view text, std::string_view source) {
  const json root = parse_object(text, source);
  Fields f(root, source);
  GenerationConfig g;
  g.bos_token_id = f.integer("bos_token_id");
  if (g.bos_token_id && *g.bos_token_id < 0)
    f.error(ErrorCode::invalid_argument, "bos_token_id", "expected a non-negative token id, found {}",
            *g.bos_token_id);
  g.eos_token_ids = f.token_ids("eos_token_id");
  g.do_sample = f.boolean("do_sample");
  g.temperature = f.number("temperature");
  if (g.temperature && (!(*g.temperature >= 0) || !std::isfinite(*g.temperature)))
    f.error(ErrorCode::invalid_argument, "temperature", "expected a number >= 0, found {}", *g.temperature);
  g.top_p = f.number("top_p");
  if (g.top_p && !(*g.top_p > 0 && *g.top_p <= 1))
    f.error(ErrorCode::invalid_argument, "top_p", "expected a number in (0, 1], found {}", *g.top_p);
  g.top_k = f.integer("top_k");
  if (g.top_k && *g.top_k < 0)
    f.error(ErrorCode::invalid_argument, "top_k", "expected an integer >= 0, found {}", *g.top_k);
  return g;
}

}  // namespace

LlamaTensorNames llava_transformers4_names() { return {"language_model.model.", "language_model.lm_head.weight"}; }
LlamaTensorNames llava_transformers5_names() { return {"model.language_model.", "lm_head.weight"}; }

bool LlamaConfig::is_llava() const noexcept {
  return std::find(architectures.begin(), architectures.end(), "LlavaForConditionalGeneration") != architectures.end();
}

Result<LlamaConfig> parse_llama_config(std::string_view json_text, std::string_view source) noexcept {
  return guard_result<LlamaConfig>([&] { return parse_config(json_text, source); });
}

Result<GenerationConfig> parse_generation_config(std::string_view json_text, std::string_view source) noexcept {
  return guard_result<GenerationConfig>([&] { return parse_generation(json_text, source); });
}

Status validate_llama_config(const LlamaConfig& config, std::string_view source) noexcept {
  return guard([&] { validate(config, source); });
}

Status check_llama_shape(const LlamaConfig& config, std::string_view source) noexcept {
  return guard([&] {
    auto unsupported = [&](std::string message) { throw Error(ErrorCode::unsupported, std::move(message)); };
    if (config.attention_bias)
      unsupported(fmt::format("{}: key 'attention_bias': true is unsupported (q/k/v/o_proj without bias only)", source));
    if (config.mlp_bias)
      unsupported(fmt::format("{}: key 'mlp_bias': true is unsupported (gate/up/down_proj without bias only)", source));
    if (config.head_dim % 2 != 0)
      unsupported(fmt::format("{}: key 'head_dim': expected an even number (RoPE rotates pairs of dimensions), "
                              "found {}",
                              source, config.head_dim));
    for (auto [key, value] : {std::pair{"vocab_size", config.vocab_size}, {"hidden_size", config.hidden_size},
                              {"intermediate_size", config.intermediate_size}, {"head_dim", config.head_dim},
                              {"num_attention_heads", config.num_attention_heads},
                              {"num_hidden_layers", config.num_hidden_layers},
                              {"max_position_embeddings", config.max_position_embeddings}})
      if (value > std::numeric_limits<int32_t>::max())
        unsupported(fmt::format("{}: key '{}': {} is too large", source, key, value));
  });
}

Result<LlamaCheckpoint> read_llama_checkpoint(const WeightSource& weights, bool with_quantizer) noexcept {
  auto parsed = read_llama_checkpoint_config(weights);
  if (!parsed) return parsed.status();
  LlamaCheckpoint out;
  Status filled = guard([&] {
    out.source = fmt::format("{}/config.json", weights.directory());
    if (parsed->model.quant_method && !with_quantizer)
      throw Error(ErrorCode::unsupported,
                  fmt::format("{}: key 'quantization_config.quant_method': \"{}\" weights are read by a quantizer "
                              "plugin, and the manifest has no [quantizer] table",
                              out.source, *parsed->model.quant_method));
    if (Status s = check_llama_shape(parsed->model, out.source); !s) throw Error(s);
    out.config = std::move(parsed->model);
    // A LLaVA folder saved by transformers 5 nests the decoder differently.
    if (out.config.is_llava() && !weights.tensor(out.config.names.embed_tokens()) &&
        weights.tensor(llava_transformers5_names().embed_tokens()))
      out.config.names = llava_transformers5_names();
    out.eos_ids.assign(parsed->eos_token_ids.begin(), parsed->eos_token_ids.end());
    if (parsed->bos_token_id) out.bos_id = TokenId(*parsed->bos_token_id);
  });
  if (!filled) return filled;
  return out;
}

ModelInfo llama_model_info(const LlamaConfig& config, const std::vector<TokenId>& eos_ids,
                           std::optional<TokenId> bos_id) {
  ModelInfo out;
  out.architecture = config.architectures.empty() ? "LlamaForCausalLM" : config.architectures.front();
  out.vocab_size = int32_t(config.vocab_size);
  out.hidden_size = int32_t(config.hidden_size);
  out.layers = int32_t(config.num_hidden_layers);
  out.q_heads = int32_t(config.num_attention_heads);
  out.kv_heads = int32_t(config.num_key_value_heads);
  out.head_dim = int32_t(config.head_dim);
  out.max_positions = int32_t(config.max_position_embeddings);
  out.eos_ids = eos_ids;
  out.bos_id = bos_id;
  return out;
}

Result<LlamaCheckpointConfig> parse_llama_checkpoint_config(std::string_view config_json,
                                                            std::optional<std::string_view> generation_json,
                                                            std::string_view directory) noexcept {
  return guard_result<LlamaCheckpointConfig>([&] {
    LlamaCheckpointConfig out;
    out.model = parse_config(config_json, fmt::format("{}/config.json", directory));
    out.eos_token_ids = out.model.eos_token_ids;
    out.bos_token_id = out.model.bos_token_id;
    if (generation_json) {
      const std::string source = fmt::format("{}/generation_config.json", directory);
      out.generation = parse_generation(*generation_json, source);
      check_token_ids(source, "eos_token_id", out.generation->eos_token_ids, out.model.vocab_size);
      if (out.generation->bos_token_id) {
        check_token_ids(source, "bos_token_id", {*out.generation->bos_token_id}, out.model.vocab_size);
        out.bos_token_id = out.generation->bos_token_id;
      }
      for (int64_t id : out.generation->eos_token_ids)
        if (std::find(out.eos_token_ids.begin(), out.eos_token_ids.end(), id) == out.eos_token_ids.end())
          out.eos_token_ids.push_back(id);
    }
    return out;
  });
}

Result<LlamaCheckpointConfig> read_llama_checkpoint_config(const WeightSource& weights) noexcept {
  const std::string directory = weights.directory();
  auto generation = weights.read_file("generation_config.json");
  if (!generation && generation.status().code() != ErrorCode::not_found) return generation.status();
  std::optional<std::string_view> generation_json;
  if (generation) generation_json = *generation;
  return parse_llama_checkpoint_config(weights.config_json(), generation_json, directory);
}

std::string llama_config_to_json(const LlamaConfig& c) {
  nlohmann::ordered_json j;
  j["architectures"] = c.architectures;
  j["model_type"] = c.model_type;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling->factor},
                         {"low_freq_factor", c.rope_scaling->low_freq_factor},
                         {"high_freq_factor", c.rope_scaling->high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling->original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.attention_bias;
  j["mlp_bias"] = c.mlp_bias;
  j["hidden_act"] = c.hidden_act;
  j["bos_token_id"] = c.bos_token_id ? nlohmann::ordered_json(*c.bos_token_id) : nlohmann::ordered_json(nullptr);
  if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids.front();
  else if (c.eos_token_ids.empty()) j["eos_token_id"] = nullptr;
  else j["eos_token_id"] = c.eos_token_ids;
  if (!c.torch_dtype.empty()) j["torch_dtype"] = c.torch_dtype;
  // What HF's LlamaConfig would write too, so transformers loads the file as is.
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["pretraining_tp"] = 1;
  j["use_cache"] = true;
  return j.dump(2) + "\n";
}

std::optional<DType> dtype_from_torch_name(std::string_view name) noexcept {
  if (name == "bfloat16") return DType::bf16;
  if (name == "float16") return DType::f16;
  if (name == "float32") return DType::f32;
  return std::nullopt;
}

std::string_view torch_dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::bf16: return "bfloat16";
    case DType::f16: return "float16";
    case DType::f32: return "float32";
    default: return "";
  }
}

LlamaConfig llama3_8b_config() {
  LlamaConfig c;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.num_hidden_layers = 32;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.vocab_size = 128256;
  c.max_position_embeddings = 8192;
  c.rope_theta = 500000.0;
  c.rms_norm_eps = 1e-5;
  c.bos_token_id = 128000;
  c.eos_token_ids = {128001};
  c.torch_dtype = "bfloat16";
  return c;
}

LlamaConfig tiny_llama_config() {
  LlamaConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 256;
  c.max_position_embeddings = 512;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-5;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.torch_dtype = "float32";
  return c;
}

}  // namespace hostrun::llama
