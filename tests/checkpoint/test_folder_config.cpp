// What the host reads of any model folder's config.json to choose a manifest.
#include "checkpoint/folder_config.hpp"
#include "test_util.hpp"

using namespace hostrun;
using namespace hostrun::checkpoint;
using namespace checkpoint_test;

TEST_CASE("folder config: the fields every HF folder has, nothing of a model family") {
  auto llama = parse_folder_config(R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                       "hidden_size": 4096, "torch_dtype": "bfloat16"})",
                                   "m/config.json");
  REQUIRE_MESSAGE(llama.has_value(), llama.status().message());
  CHECK(llama->architecture() == "LlamaForCausalLM");
  CHECK(llama->model_type == "llama");
  CHECK(llama->quantization() == "none");
  CHECK_FALSE(llama->has_vision_config);

  // AutoAWQ's quantization_config; the method is matched case-insensitively.
  auto awq = parse_folder_config(R"({"architectures": ["LlamaForCausalLM"],
      "quantization_config": {"quant_method": "AWQ", "bits": 4, "group_size": 128, "zero_point": true,
                              "version": "gemm"}})",
                                 "m/config.json");
  REQUIRE(awq.has_value());
  CHECK(awq->quantization() == "awq");

  // LLaVA: nested text and vision configs, no Llama fields at the top.
  auto llava = parse_folder_config(R"({"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
      "image_token_index": 128256, "text_config": {"model_type": "llama", "hidden_size": 4096},
      "vision_config": {"model_type": "clip_vision_model", "image_size": 336}})",
                                   "m/config.json");
  REQUIRE_MESSAGE(llava.has_value(), llava.status().message());
  CHECK(llava->architecture() == "LlavaForConditionalGeneration");
  CHECK(llava->has_text_config);
  CHECK(llava->has_vision_config);
  CHECK(llava->text_model_type == "llama");

  // FP8 written by another engine, its quantization_config inside text_config.
  auto fp8 = parse_folder_config(R"({"architectures": ["LlavaForConditionalGeneration"],
      "text_config": {"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic"}}})",
                                 "m/config.json");
  REQUIRE(fp8.has_value());
  CHECK(fp8->quantization() == "fp8");
}

TEST_CASE("folder config: errors name the file and the key") {
  expect_error(parse_folder_config(R"({"model_type": "llama"})", "m/config.json").status(),
               ErrorCode::invalid_argument, {"m/config.json", "'architectures'"});
  expect_error(parse_folder_config(R"({"architectures": []})", "m/config.json").status(),
               ErrorCode::invalid_argument, {"'architectures'"});
  expect_error(parse_folder_config(R"({"architectures": [7]})", "m/config.json").status(),
               ErrorCode::invalid_argument, {"'architectures'"});
  expect_error(parse_folder_config(R"({"architectures": ["X"], "quantization_config": {"bits": 4}})", "m/config.json")
                   .status(),
               ErrorCode::invalid_argument, {"'quantization_config.quant_method'"});
  expect_error(parse_folder_config(R"({"architectures": ["X"], "text_config": 3})", "m/config.json").status(),
               ErrorCode::invalid_argument, {"'text_config'"});
  expect_error(parse_folder_config("[1, 2]", "m/config.json").status(), ErrorCode::corrupt_data, {"m/config.json"});
  expect_error(parse_folder_config("{", "m/config.json").status(), ErrorCode::corrupt_data, {"not valid JSON"});
}
