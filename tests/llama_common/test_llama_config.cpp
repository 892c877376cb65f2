// config.json / generation_config.json parsing and validation.
#include "llama_common/llama_config.hpp"
#include "test_util.hpp"

#include <fstream>
#include <iterator>

using namespace hostrun;
using namespace hostrun::llama;
using namespace checkpoint_test;

namespace {

// Meta-Llama-3.1-8B-Instruct's config.json, as published.
constexpr std::string_view kLlama31 = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.42.3",
  "use_cache": true,
  "vocab_size": 128256
})";

// A minimal config; `extra` is spliced in as more keys (later keys win).
std::string config_with(std::string_view extra) {
  std::string text = R"({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "vocab_size": 100)";
  if (!extra.empty()) text += ", " + std::string(extra);
  return text + "}";
}

}  // namespace

TEST_CASE("llama config: Llama 3.1 8B with llama3 rope scaling and an eos list") {
  auto config = parse_llama_config(kLlama31);
  REQUIRE_MESSAGE(config.has_value(), config.status().message());
  CHECK(config->hidden_size == 4096);
  CHECK(config->intermediate_size == 14336);
  CHECK(config->num_hidden_layers == 32);
  CHECK(config->num_attention_heads == 32);
  CHECK(config->num_key_value_heads == 8);
  CHECK(config->head_dim == 128);
  CHECK(config->vocab_size == 128256);
  CHECK(config->max_position_embeddings == 131072);
  CHECK(config->rope_theta == 500000.0);
  REQUIRE(config->rope_scaling.has_value());
  CHECK(config->rope_scaling->factor == 8.0);
  CHECK(config->rope_scaling->low_freq_factor == 1.0);
  CHECK(config->rope_scaling->high_freq_factor == 4.0);
  CHECK(config->rope_scaling->original_max_position_embeddings == 8192);
  CHECK(config->rms_norm_eps == 1e-5);
  CHECK_FALSE(config->tie_word_embeddings);
  CHECK(config->bos_token_id == 128000);
  CHECK(config->eos_token_ids == std::vector<int64_t>{128001, 128008, 128009});
  CHECK(config->torch_dtype == "bfloat16");
  CHECK(dtype_from_torch_name(config->torch_dtype) == DType::bf16);
  CHECK(config->architectures == std::vector<std::string>{"LlamaForCausalLM"});
  CHECK(config->q_size() == 4096);
  CHECK(config->kv_size() == 1024);
}

TEST_CASE("llama config: defaults") {
  auto config = parse_llama_config(config_with(""));
  REQUIRE_MESSAGE(config.has_value(), config.status().message());
  CHECK(config->num_key_value_heads == 4);  // = heads
  CHECK(config->head_dim == 16);            // = hidden / heads
  CHECK(config->rope_theta == 10000.0);
  CHECK_FALSE(config->rope_scaling.has_value());
  CHECK_FALSE(config->tie_word_embeddings);
  CHECK_FALSE(config->bos_token_id.has_value());
  CHECK(config->eos_token_ids.empty());
  // null spells "default" in HF configs.
  auto nulls = parse_llama_config(config_with(R"("rope_scaling": null, "num_key_value_heads": null, "eos_token_id": 5)"));
  REQUIRE_MESSAGE(nulls.has_value(), nulls.status().message());
  CHECK_FALSE(nulls->rope_scaling.has_value());
  CHECK(nulls->num_key_value_heads == 4);
  CHECK(nulls->eos_token_ids == std::vector<int64_t>{5});
  // An explicit head_dim frees hidden_size from being a multiple of heads.
  auto explicit_head = parse_llama_config(config_with(R"("hidden_size": 66, "head_dim": 32)"));
  REQUIRE_MESSAGE(explicit_head.has_value(), explicit_head.status().message());
  CHECK(explicit_head->head_dim == 32);
  CHECK(explicit_head->q_size() == 128);
  // The legacy "type" key and the newer "dtype" key.
  auto legacy = parse_llama_config(config_with(
      R"("rope_scaling": {"type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
                          "original_max_position_embeddings": 8192}, "dtype": "float16")"));
  REQUIRE_MESSAGE(legacy.has_value(), legacy.status().message());
  CHECK(legacy->rope_scaling->factor == 8.0);
  CHECK(legacy->torch_dtype == "float16");
  auto plain = parse_llama_config(config_with(R"("rope_scaling": {"rope_type": "default"})"));
  REQUIRE(plain.has_value());
  CHECK_FALSE(plain->rope_scaling.has_value());
}

TEST_CASE("llama config: GQA and size validation name config.json and the key") {
  expect_error(parse_llama_config(config_with(R"("num_key_value_heads": 3)")).status(), ErrorCode::invalid_argument,
               {"config.json", "'num_key_value_heads'", "divisor of num_attention_heads (4)", "found 3"});
  expect_error(parse_llama_config(config_with(R"("num_key_value_heads": 0)")).status(), ErrorCode::invalid_argument,
               {"config.json", "'num_key_value_heads'", "found 0"});
  expect_error(parse_llama_config(config_with(R"("hidden_size": 66)")).status(), ErrorCode::invalid_argument,
               {"config.json", "'hidden_size'", "multiple of num_attention_heads (4)", "found 66"});
  expect_error(parse_llama_config(config_with(R"("intermediate_size": -5)")).status(), ErrorCode::invalid_argument,
               {"config.json", "'intermediate_size'", "positive", "-5"});
  expect_error(parse_llama_config(config_with(R"("vocab_size": 4294967296)")).status(), ErrorCode::invalid_argument,
               {"config.json", "'vocab_size'", "2^31"});
  expect_error(parse_llama_config(config_with(R"("num_hidden_layers": 2.5)")).status(), ErrorCode::invalid_argument,
               {"config.json", "'num_hidden_layers'", "integer", "2.5"});
  expect_error(parse_llama_config(config_with(R"("num_hidden_layers": "2")")).status(), ErrorCode::invalid_argument,
               {"config.json", "'num_hidden_layers'", "'2'"});
  expect_error(parse_llama_config(R"({"hidden_size": 64})").status(), ErrorCode::invalid_argument,
               {"config.json", "missing key 'intermediate_size'"});
  expect_error(parse_llama_config(config_with(R"("rms_norm_eps": 0)")).status(), ErrorCode::invalid_argument,
               {"config.json", "'rms_norm_eps'"});
  expect_error(parse_llama_config(config_with(R"("rope_theta": -1)")).status(), ErrorCode::invalid_argument,
               {"config.json", "'rope_theta'"});
  expect_error(parse_llama_config(config_with(R"("tie_word_embeddings": 1)")).status(), ErrorCode::invalid_argument,
               {"config.json", "'tie_word_embeddings'", "true or false"});
  expect_error(parse_llama_config(config_with(R"("eos_token_id": [1, "2"])")).status(), ErrorCode::invalid_argument,
               {"config.json", "'eos_token_id'"});
  expect_error(parse_llama_config(config_with(R"("eos_token_id": [1, 100])")).status(), ErrorCode::invalid_argument,
               {"config.json", "'eos_token_id'", "100", "[0, 100)"});
  expect_error(parse_llama_config(config_with(R"("architectures": ["MistralForCausalLM"])")).status(),
               ErrorCode::unsupported, {"config.json", "'architectures'", "MistralForCausalLM"});
  expect_error(parse_llama_config(config_with(R"("hidden_act": "gelu")")).status(), ErrorCode::unsupported,
               {"config.json", "'hidden_act'", "gelu"});
  expect_error(parse_llama_config("[1]").status(), ErrorCode::invalid_argument, {"config.json", "JSON object"});
  expect_error(parse_llama_config("{").status(), ErrorCode::invalid_argument, {"config.json", "not valid JSON"});
  expect_error(parse_llama_config(config_with(R"("num_key_value_heads": 3)"), "/m/config.json").status(),
               ErrorCode::invalid_argument, {"/m/config.json"});
}

TEST_CASE("llama config: rope scaling other than llama3 is unsupported, naming the key") {
  expect_error(parse_llama_config(config_with(R"("rope_scaling": {"rope_type": "yarn", "factor": 4})")).status(),
               ErrorCode::unsupported, {"config.json", "'rope_scaling.rope_type'", "'yarn'"});
  expect_error(parse_llama_config(config_with(R"("rope_scaling": {"type": "linear", "factor": 2})")).status(),
               ErrorCode::unsupported, {"config.json", "'rope_scaling.type'", "'linear'"});
  expect_error(parse_llama_config(config_with(R"("rope_scaling": {"factor": 2})")).status(),
               ErrorCode::invalid_argument, {"config.json", "'rope_scaling'", "rope_type"});
  expect_error(parse_llama_config(config_with(R"("rope_scaling": {"rope_type": "llama3", "factor": 8,
                                                   "low_freq_factor": 1, "high_freq_factor": 4})"))
                   .status(),
               ErrorCode::invalid_argument, {"config.json", "'rope_scaling.original_max_position_embeddings'"});
  expect_error(parse_llama_config(config_with(R"("rope_scaling": {"rope_type": "llama3", "factor": 8,
                                                   "low_freq_factor": 4, "high_freq_factor": 4,
                                                   "original_max_position_embeddings": 8192})"))
                   .status(),
               ErrorCode::invalid_argument, {"config.json", "'rope_scaling.high_freq_factor'"});
  expect_error(parse_llama_config(config_with(R"("rope_scaling": "llama3")")).status(), ErrorCode::invalid_argument,
               {"config.json", "'rope_scaling'"});
}

namespace {

// config.json and, when present, generation_config.json of `dir`, merged.
Result<LlamaCheckpointConfig> load_llama_config(const std::filesystem::path& dir) {
  auto read = [](const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  std::optional<std::string> generation;
  if (std::filesystem::exists(dir / "generation_config.json")) generation = read(dir / "generation_config.json");
  std::optional<std::string_view> generation_view;
  if (generation) generation_view = *generation;
  return parse_llama_checkpoint_config(read(dir / "config.json"), generation_view, dir.string());
}

}  // namespace

TEST_CASE("llama config: generation_config.json and the eos union") {
  TempDir dir;
  std::string config = config_with(R"("bos_token_id": 1, "eos_token_id": 2)");
  write_file(dir / "config.json", bytes_of(config));
  auto only_config = load_llama_config(dir.path());
  REQUIRE_MESSAGE(only_config.has_value(), only_config.status().message());
  CHECK_FALSE(only_config->generation.has_value());
  CHECK(only_config->eos_token_ids == std::vector<int64_t>{2});

  write_file(dir / "generation_config.json",
             bytes_of(R"({"bos_token_id": 3, "eos_token_id": [2, 7, 9], "do_sample": true,
                          "temperature": 0.6, "top_p": 0.9, "top_k": 40, "transformers_version": "4.42.3"})"));
  auto both = load_llama_config(dir.path());
  REQUIRE_MESSAGE(both.has_value(), both.status().message());
  REQUIRE(both->generation.has_value());
  CHECK(both->eos_token_ids == std::vector<int64_t>{2, 7, 9});
  CHECK(both->bos_token_id == 3);
  CHECK(both->generation->temperature == 0.6);
  CHECK(both->generation->top_p == 0.9);
  CHECK(both->generation->top_k == 40);
  CHECK(both->generation->do_sample == true);

  write_file(dir / "generation_config.json", bytes_of(R"({"eos_token_id": 128009})"));
  expect_error(load_llama_config(dir.path()).status(), ErrorCode::invalid_argument,
               {"generation_config.json", "'eos_token_id'", "128009"});
  write_file(dir / "generation_config.json", bytes_of(R"({"top_p": 1.5})"));
  expect_error(load_llama_config(dir.path()).status(), ErrorCode::invalid_argument,
               {"generation_config.json", "'top_p'", "1.5"});
  write_file(dir / "generation_config.json", bytes_of(R"({"temperature": "hot"})"));
  expect_error(load_llama_config(dir.path()).status(), ErrorCode::invalid_argument,
               {"generation_config.json", "'temperature'", "'hot'"});
  write_file(dir / "config.json", bytes_of(config_with(R"("num_key_value_heads": 3)")));
  expect_error(load_llama_config(dir.path()).status(), ErrorCode::invalid_argument,
               {(dir / "config.json").string(), "'num_key_value_heads'"});
}

TEST_CASE("llama config: to_json round-trips every field") {
  auto original = parse_llama_config(kLlama31);
  REQUIRE(original.has_value());
  LlamaConfig config = *original;
  config.tie_word_embeddings = true;
  config.attention_bias = true;
  config.head_dim = 64;  // differs from hidden / heads, so it must be written
  auto again = parse_llama_config(llama_config_to_json(config));
  REQUIRE_MESSAGE(again.has_value(), again.status().message());
  CHECK(*again == config);

  LlamaConfig tiny = tiny_llama_config();
  tiny.eos_token_ids = {};
  tiny.bos_token_id.reset();
  auto tiny_again = parse_llama_config(llama_config_to_json(tiny));
  REQUIRE(tiny_again.has_value());
  CHECK(*tiny_again == tiny);
  CHECK(validate_llama_config(llama3_8b_config()).is_ok());
}

// xtuner/llava-llama-3-8b-v1_1-transformers' config.json as published (vision_config cut to
// what matters here): text_config lists only what differs from LlamaConfig's defaults.
constexpr std::string_view kLlavaLlama3 = R"({
  "architectures": ["LlavaForConditionalGeneration"],
  "ignore_index": -100,
  "image_token_index": 128257,
  "model_type": "llava",
  "pad_token_id": 128258,
  "projector_hidden_act": "gelu",
  "text_config": {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
    "vocab_size": 128320
  },
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
                    "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768},
  "vision_feature_layer": -2,
  "vision_feature_select_strategy": "default"
})";

TEST_CASE("llama config: a LLaVA folder's text_config, with LlamaConfig's defaults where it is silent") {
  auto config = parse_llama_config(kLlavaLlama3);
  REQUIRE_MESSAGE(config.has_value(), config.status().message());
  CHECK(config->is_llava());
  CHECK(config->architectures == std::vector<std::string>{"LlavaForConditionalGeneration"});
  CHECK(config->hidden_size == 4096);       // LlamaConfig's default
  CHECK(config->num_hidden_layers == 32);   // default
  CHECK(config->num_attention_heads == 32); // default
  CHECK(config->num_key_value_heads == 8);
  CHECK(config->head_dim == 128);
  CHECK(config->intermediate_size == 14336);
  CHECK(config->vocab_size == 128320);      // padded past the tokenizer's 128258 ids
  CHECK(config->rope_theta == 500000.0);
  CHECK(config->bos_token_id == 128000);
  CHECK(config->eos_token_ids == std::vector<int64_t>{128001});
  CHECK(config->torch_dtype == "bfloat16");  // the language model's own
  CHECK(config->names == llava_transformers4_names());
  CHECK(config->names.layer(3) == "language_model.model.layers.3.");
  CHECK(config->names.embed_tokens() == "language_model.model.embed_tokens.weight");
  CHECK(config->names.lm_head == "language_model.lm_head.weight");
  ModelInfo info = llama_model_info(*config, {}, std::nullopt);
  CHECK(info.architecture == "LlavaForConditionalGeneration");

  // transformers 5 writes rope_parameters (rope_theta inside) and "dtype".
  auto five = parse_llama_config(R"({"architectures": ["LlavaForConditionalGeneration"], "image_token_id": 7,
      "text_config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "vocab_size": 100, "dtype": "bfloat16",
                      "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192}}})");
  REQUIRE_MESSAGE(five.has_value(), five.status().message());
  CHECK(five->rope_theta == 500000.0);
  REQUIRE(five->rope_scaling.has_value());
  CHECK(five->rope_scaling->factor == 8.0);
  CHECK(five->torch_dtype == "bfloat16");
  CHECK(five->bos_token_id == 1);  // LlamaConfig's defaults, as transformers fills them
  CHECK(five->eos_token_ids == std::vector<int64_t>{2});

  // A top-level Llama config may also spell rope_parameters.
  auto plain = parse_llama_config(config_with(R"("rope_parameters": {"rope_type": "default", "rope_theta": 123.0})"));
  REQUIRE_MESSAGE(plain.has_value(), plain.status().message());
  CHECK(plain->rope_theta == 123.0);
  CHECK_FALSE(plain->rope_scaling.has_value());
  CHECK(plain->names == LlamaTensorNames{});

  expect_error(parse_llama_config(R"({"architectures": ["LlavaForConditionalGeneration"]})", "d/config.json").status(),
               ErrorCode::invalid_argument,
               {"d/config.json", "key 'text_config'", "expected the language model's config (an object)"});
  expect_error(parse_llama_config(R"({"architectures": ["LlavaForConditionalGeneration"],
                                      "text_config": {"model_type": "mistral"}})", "d/config.json").status(),
               ErrorCode::unsupported, {"key 'text_config.model_type'", "\"mistral\" is not supported"});
  expect_error(parse_llama_config(R"({"architectures": ["LlavaForConditionalGeneration"],
                                      "text_config": {"num_key_value_heads": 5}})", "d/config.json").status(),
               ErrorCode::invalid_argument, {"d/config.json: text_config: key 'num_key_value_heads'"});
}
