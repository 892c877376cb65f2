// config.json and generation_config.json of a Llama checkpoint
// (LlamaForCausalLM), as typed structs: the Llama model plugins' one reader.
//
// Parsing fills defaults the way HF transformers does and validates what the
// model code will rely on; every error names the file and the key. Files come
// through the SDK's WeightSource (the host reads the folder), never from the
// file system directly.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hostrun/model.hpp"
#include "hostrun/status.hpp"
#include "hostrun/tensor.hpp"
#include "hostrun/weights.hpp"

namespace hostrun::llama {

// rope_scaling {"rope_type": "llama3", ...} (Llama 3.1 and later): long
// wavelengths are divided by `factor`, short ones kept, and the band between
// low_freq_factor and high_freq_factor interpolated.
struct Llama3RopeScaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
  friend bool operator==(const Llama3RopeScaling&, const Llama3RopeScaling&) = default;
};

// Where a checkpoint keeps the decoder's tensors. LlamaForCausalLM folders
// hold them at the top ("model.layers.0.", "lm_head.weight"); LLaVA folders
// (LlavaForConditionalGeneration) nest the language model beside the vision
// tower: "language_model.model." and "language_model.lm_head.weight" as
// transformers 4 saves them, "model.language_model." and "lm_head.weight" as
// transformers 5 does.
struct LlamaTensorNames {
  std::string decoder = "model.";  // + "embed_tokens.weight", "layers.N.", "norm.weight"
  std::string lm_head = "lm_head.weight";

  std::string embed_tokens() const { return decoder + "embed_tokens.weight"; }
  std::string layer(int64_t index) const { return decoder + "layers." + std::to_string(index) + "."; }
  std::string final_norm() const { return decoder + "norm.weight"; }
  friend bool operator==(const LlamaTensorNames&, const LlamaTensorNames&) = default;
};
LlamaTensorNames llava_transformers4_names();
LlamaTensorNames llava_transformers5_names();

struct LlamaConfig {
  // The top-level architectures: ["LlamaForCausalLM"], or
  // ["LlavaForConditionalGeneration"] when the fields below are its text_config's.
  std::vector<std::string> architectures{"LlamaForCausalLM"};
  std::string model_type = "llama";
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // parsing fills num_attention_heads when absent
  int64_t head_dim = 0;             // parsing fills hidden_size / num_attention_heads when absent
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 2048;
  double rope_theta = 10000.0;
  std::optional<Llama3RopeScaling> rope_scaling;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v/o_proj carry a .bias
  bool mlp_bias = false;        // gate/up/down_proj carry a .bias
  std::string hidden_act = "silu";
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // eos_token_id, an int or a list
  std::string torch_dtype;             // as written ("bfloat16"); "" when absent
  // quantization_config.quant_method ("awq"), when the checkpoint is quantized.
  std::optional<std::string> quant_method;
  // Not a config.json key: parsing sets the LLaVA layout transformers 4 writes,
  // read_llama_checkpoint the one the weights have.
  LlamaTensorNames names;

  // A LLaVA folder: the language model of an image-text model.
  bool is_llava() const noexcept;
  int64_t q_size() const noexcept { return num_attention_heads * head_dim; }
  int64_t kv_size() const noexcept { return num_key_value_heads * head_dim; }
  friend bool operator==(const LlamaConfig&, const LlamaConfig&) = default;
};

// Sampling defaults and stop ids from generation_config.json.
struct GenerationConfig {
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<bool> do_sample;
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int64_t> top_k;
  friend bool operator==(const GenerationConfig&, const GenerationConfig&) = default;
};

// Both files of a directory, merged.
struct LlamaCheckpointConfig {
  LlamaConfig model;
  std::optional<GenerationConfig> generation;  // absent when the file is
  // Stop ids: config.json's then generation_config.json's, without repeats
  // (Llama 3 Instruct lists <|eot_id|> only in generation_config.json).
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> bos_token_id;  // generation_config.json's wins
};

// `source` names the text in errors ("/models/llama/config.json").
Result<LlamaConfig> parse_llama_config(std::string_view json_text,
                                       std::string_view source = "config.json") noexcept;
Result<GenerationConfig> parse_generation_config(std::string_view json_text,
                                                 std::string_view source = "generation_config.json") noexcept;
// config.json's text merged with generation_config.json's (when the folder
// has one); `directory` names both in errors.
Result<LlamaCheckpointConfig> parse_llama_checkpoint_config(std::string_view config_json,
                                                            std::optional<std::string_view> generation_json,
                                                            std::string_view directory) noexcept;
// The same, both files read through `weights`.
Result<LlamaCheckpointConfig> read_llama_checkpoint_config(const WeightSource& weights) noexcept;

// The checks parse_llama_config applies, for configs built in code.
Status validate_llama_config(const LlamaConfig& config, std::string_view source = "config.json") noexcept;

// What the Llama model plugins require beyond validate_llama_config: no
// biases, an even head_dim (RoPE rotates pairs), and sizes that fit in int32.
// Errors name the key.
Status check_llama_shape(const LlamaConfig& config, std::string_view source) noexcept;

// What a Llama model plugin reads from its weight source before any tensor:
// the merged config (check_llama_shape passed), the stop and start ids as
// token ids, and config.json's path, which errors about the shape name. A
// quantized checkpoint (quantization_config) is refused unless the model was
// given a quantizer to read its linear layers.
struct LlamaCheckpoint {
  LlamaConfig config;
  std::vector<TokenId> eos_ids;  // config.json's, then generation_config.json's
  std::optional<TokenId> bos_id;
  std::string source;            // DIR/config.json
};
Result<LlamaCheckpoint> read_llama_checkpoint(const WeightSource& weights, bool with_quantizer) noexcept;

// ModelInfo's architecture, shape and stop/start ids; a plugin adds its
// device, activation dtype and weight bytes.
ModelInfo llama_model_info(const LlamaConfig& config, const std::vector<TokenId>& eos_ids,
                           std::optional<TokenId> bos_id);

// config.json text with every field above (pretty-printed, HF key names).
std::string llama_config_to_json(const LlamaConfig& config);

// "bfloat16" / "float16" / "float32" <-> dtype.
std::optional<DType> dtype_from_torch_name(std::string_view torch_dtype) noexcept;
std::string_view torch_dtype_name(DType dtype) noexcept;  // "" for dtypes torch checkpoints don't use

// Shapes worth having by name: Llama-3-8B, and a tiny one for tests.
LlamaConfig llama3_8b_config();
LlamaConfig tiny_llama_config();

}  // namespace hostrun::llama
