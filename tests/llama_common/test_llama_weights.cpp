// The Llama weight checker and the random checkpoint writer.
#include <bit>
#include <cmath>

#include <nlohmann/json.hpp>

#include <cstring>

#include "llama_common/llama_weights.hpp"
#include "random_checkpoint.hpp"
#include "checkpoint/model_directory.hpp"
#include "test_util.hpp"

using namespace hostrun;
using namespace hostrun::checkpoint;
using namespace hostrun::llama;
using namespace checkpoint_test;
using nlohmann::json;

namespace {

float from_bf16(uint16_t bits) { return std::bit_cast<float>(uint32_t(bits) << 16); }

float from_f16(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const int exponent = (h >> 10) & 0x1F;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) return (sign ? -1.0f : 1.0f) * std::ldexp(float(mantissa), -24);
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | (uint32_t(exponent - 15 + 127) << 23) | (mantissa << 13));
}

std::unique_ptr<ModelDirectory> open_dir(const TempDir& dir) {
  auto source = ModelDirectory::open(dir.path());
  REQUIRE_MESSAGE(source.has_value(), source.status().message());
  return std::move(source).value();
}

}  // namespace

TEST_CASE("llama weights: Llama-3-8B has 8,030,261,248 parameters") {
  uint64_t params = 0;
  for (const auto& spec : llama_tensor_specs(llama3_8b_config())) {
    uint64_t n = 1;
    for (auto d : spec.shape) n *= uint64_t(d);
    params += n;
  }
  CHECK(params == 8'030'261'248ull);
}

TEST_CASE("llama weights: random checkpoints in every dtype validate and load back") {
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    CAPTURE(dtype_name(dtype));
    TempDir dir;
    LlamaConfig config = tiny_llama_config();
    RandomLlamaOptions options;
    options.seed = 11;
    options.dtype = dtype;
    REQUIRE(write_random_llama_checkpoint(dir.path(), config, options).is_ok());
    auto source = open_dir(dir);
    Status valid = validate_llama_weights(config, *source);
    CHECK_MESSAGE(valid.is_ok(), valid.message());

    // config.json says what was written, and reads back as the same config.
    auto loaded = read_llama_checkpoint_config(*source);
    REQUIRE_MESSAGE(loaded.has_value(), loaded.status().message());
    config.torch_dtype = std::string(torch_dtype_name(dtype));
    CHECK(loaded->model == config);
    CHECK(loaded->eos_token_ids == config.eos_token_ids);
    CHECK(source->config_json() == llama_config_to_json(config));

    // Norms are ones; linear weights match the documented generator.
    auto norm = source->tensor("model.layers.1.post_attention_layernorm.weight");
    REQUIRE(norm.has_value());
    CHECK(norm->dtype == dtype);
    auto up = source->tensor("model.layers.0.mlp.up_proj.weight");
    REQUIRE(up.has_value());
    double sum = 0, sum_sq = 0;
    const int64_t n = up->numel();
    for (int64_t i = 0; i < n; ++i) {
      const float expected = random_llama_value(11, "model.layers.0.mlp.up_proj.weight", uint64_t(i), 0.02);
      float value = 0;
      if (dtype == DType::f32) value = up->as<const float>()[i];
      if (dtype == DType::bf16) value = from_bf16(up->as<const uint16_t>()[i]);
      if (dtype == DType::f16) value = from_f16(up->as<const uint16_t>()[i]);
      const float tolerance = dtype == DType::f32 ? 0.0f : dtype == DType::bf16 ? 0x1p-8f : 0x1p-11f;
      REQUIRE(std::fabs(value - expected) <= std::fabs(expected) * tolerance + 1e-7f);
      sum += value;
      sum_sq += double(value) * value;
    }
    CHECK(std::fabs(sum / double(n)) < 0.002);
    CHECK(std::sqrt(sum_sq / double(n)) == doctest::Approx(0.02).epsilon(0.05));
    for (int64_t i = 0; i < norm->numel(); ++i) {
      float one = dtype == DType::f32 ? norm->as<const float>()[i]
                  : dtype == DType::bf16 ? from_bf16(norm->as<const uint16_t>()[i])
                                         : from_f16(norm->as<const uint16_t>()[i]);
      REQUIRE(one == 1.0f);
    }
  }
}

TEST_CASE("llama weights: the writer is deterministic in its seed") {
  TempDir a, b, c;
  LlamaConfig config = tiny_llama_config();
  RandomLlamaOptions options;
  options.seed = 3;
  REQUIRE(write_random_llama_checkpoint(a.path(), config, options).is_ok());
  REQUIRE(write_random_llama_checkpoint(b.path(), config, options).is_ok());
  options.seed = 4;
  REQUIRE(write_random_llama_checkpoint(c.path(), config, options).is_ok());
  CHECK(read_file(a / "model.safetensors") == read_file(b / "model.safetensors"));
  CHECK(read_file(a / "model.safetensors") != read_file(c / "model.safetensors"));
  // transformers refuses safetensors files without format "pt".
  auto file = SafetensorsFile::open(a / "model.safetensors");
  REQUIRE(file.has_value());
  CHECK(file->metadata().at("format") == "pt");
}

TEST_CASE("llama weights: tied embeddings, biases and the writer's own checks") {
  TempDir dir;
  LlamaConfig config = tiny_llama_config();
  config.tie_word_embeddings = true;
  config.attention_bias = true;
  config.mlp_bias = true;
  REQUIRE(write_random_llama_checkpoint(dir.path(), config).is_ok());
  auto source = open_dir(dir);
  CHECK_FALSE(source->tensor("lm_head.weight").has_value());
  auto bias = source->tensor("model.layers.0.self_attn.k_proj.bias");
  REQUIRE(bias.has_value());
  CHECK(bias->shape[0] == config.kv_size());
  Status valid = validate_llama_weights(config, *source);
  CHECK_MESSAGE(valid.is_ok(), valid.message());
  // Without the tie, lm_head is required.
  config.tie_word_embeddings = false;
  expect_error(validate_llama_weights(config, *source), ErrorCode::not_found, {"'lm_head.weight'", "[256, 64]"});

  RandomLlamaOptions bad;
  bad.dtype = DType::i8;
  expect_error(write_random_llama_checkpoint(dir / "x", config, bad), ErrorCode::invalid_argument, {"i8"});
  config.num_key_value_heads = 3;
  expect_error(write_random_llama_checkpoint(dir / "y", config), ErrorCode::invalid_argument,
               {"config.json", "'num_key_value_heads'"});
}

TEST_CASE("llama weights: a wrong shape is named with expected and found shapes") {
  TempDir dir;
  LlamaConfig written = tiny_llama_config();
  REQUIRE(write_random_llama_checkpoint(dir.path(), written).is_ok());
  auto source = open_dir(dir);
  LlamaConfig claimed = written;
  claimed.num_key_value_heads = 4;  // k/v_proj should then be [64, 64]; the file has [32, 64]
  Status status = validate_llama_weights(claimed, *source);
  expect_error(status, ErrorCode::corrupt_data,
               {dir.path().string(), "'model.layers.0.self_attn.k_proj.weight': expected shape [64, 64], found [32, 64]",
                "'model.layers.1.self_attn.v_proj.weight'", "4 Llama weight problems"});
  CHECK_FALSE(contains(status.message(), "q_proj"));
}

TEST_CASE("llama weights: a missing tensor and a non-float dtype") {
  TempDir dir;
  LlamaConfig config = tiny_llama_config();
  write_file(dir / "config.json", bytes_of(llama_config_to_json(config)));
  std::vector<std::vector<std::byte>> storage;
  std::vector<TensorData> tensors;
  for (auto& spec : llama_tensor_specs(config)) {
    if (spec.name == "model.norm.weight") continue;
    const DType dtype = spec.name == "model.layers.1.input_layernorm.weight" ? DType::i32 : DType::f32;
    uint64_t n = 4;
    for (auto d : spec.shape) n *= uint64_t(d);
    storage.emplace_back(n);
    tensors.push_back({spec.name, dtype, spec.shape, storage.back()});
  }
  REQUIRE(write_safetensors(dir / "model.safetensors", tensors).is_ok());
  auto source = open_dir(dir);
  Status status = validate_llama_weights(config, *source);
  expect_error(status, ErrorCode::not_found,
               {"'model.norm.weight': missing (expected shape [64])",
                "'model.layers.1.input_layernorm.weight': expected a float dtype", "found i32"});

  config.quant_method = "awq";
  expect_error(validate_llama_weights(config, *source), ErrorCode::unsupported, {"awq"});
}

TEST_CASE("llama weights: random Llama checkpoints agree single and sharded") {
  TempDir single, sharded;
  LlamaConfig config = tiny_llama_config();
  RandomLlamaOptions options;
  options.seed = 7;
  options.dtype = DType::bf16;
  REQUIRE(write_random_llama_checkpoint(single.path(), config, options).is_ok());
  options.max_shard_bytes = 40'000;  // several shards for the tiny model
  REQUIRE(write_random_llama_checkpoint(sharded.path(), config, options).is_ok());
  CHECK(fs::exists(single / "model.safetensors"));
  CHECK_FALSE(fs::exists(single / "model.safetensors.index.json"));
  CHECK(fs::exists(sharded / "model.safetensors.index.json"));
  CHECK_FALSE(fs::exists(sharded / "model.safetensors"));

  auto a = ModelDirectory::open(single.path());
  auto b = ModelDirectory::open(sharded.path());
  REQUIRE_MESSAGE(a.has_value(), a.status().message());
  REQUIRE_MESSAGE(b.has_value(), b.status().message());
  CHECK((*b)->files().size() > 2);
  CHECK((*a)->tensor_names() == (*b)->tensor_names());
  CHECK((*a)->total_tensor_bytes() == (*b)->total_tensor_bytes());
  for (const auto& name : (*a)->tensor_names()) {
    auto x = (*a)->tensor(name);
    auto y = (*b)->tensor(name);
    REQUIRE(x.has_value());
    REQUIRE(y.has_value());
    CHECK(x->nbytes() == y->nbytes());
    CHECK_MESSAGE(std::memcmp(x->data, y->data, x->nbytes()) == 0, name);
  }
  // The index's total_size is what the shards hold, as transformers expects.
  auto index = json::parse(read_text(sharded / "model.safetensors.index.json"));
  CHECK(index["metadata"]["total_size"].get<uint64_t>() == (*b)->total_tensor_bytes());
  CHECK(index["weight_map"].size() == (*b)->tensor_names().size());
}
