// FP8 checkpoints: F8_E4M3 / F8_E5M2 tensors with their per-tensor and
// per-channel scales, written, read back through ModelDirectory, and the
// scales found by hostrun::find_weight_scale (sdk weights.hpp), with each of
// its errors.
#include <cstdint>
#include <cstring>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/model_directory.hpp"
#include "checkpoint/safetensors.hpp"
#include "hostrun/weights.hpp"
#include "ref/dtype.hpp"
#include "test_util.hpp"

using namespace hostrun;
using namespace hostrun::checkpoint;
using namespace checkpoint_test;

namespace {

constexpr int64_t kOut = 4, kIn = 8;

template <typename T>
std::span<const std::byte> bytes_view(const std::vector<T>& values) {
  return std::as_bytes(std::span<const T>(values));
}

// A layer quantized the way FP8 checkpoints are: weight / scale, rounded to
// FP8 (values here stay inside e4m3's range so they need no saturation).
struct Fp8Layer {
  std::vector<float> dequantized;  // what weight * scale gives back
  std::vector<uint8_t> codes;
};

Fp8Layer e4m3_layer(float scale, float salt) {
  Fp8Layer layer;
  for (int64_t i = 0; i < kOut * kIn; ++i) {
    const float value = (float(i % 13) - 6.0f) * salt;
    layer.codes.push_back(ref::f32_to_e4m3(value / scale));
    layer.dequantized.push_back(ref::e4m3_to_f32(layer.codes.back()) * scale);
  }
  return layer;
}

// The folder most tests read: config.json and one model.safetensors.
void write_checkpoint(const fs::path& dir, const std::vector<TensorData>& tensors) {
  write_file(dir / "config.json", bytes_of("{}"));
  REQUIRE(write_safetensors(dir / "model.safetensors", tensors).is_ok());
}

std::unique_ptr<ModelDirectory> open_checkpoint(const fs::path& dir) {
  auto opened = ModelDirectory::open(dir);
  REQUIRE_MESSAGE(opened.has_value(), opened.status().message());
  return std::move(opened).value();
}

}  // namespace

TEST_CASE("fp8: F8_E4M3 weights with a per-tensor and a per-channel scale round-trip through ModelDirectory") {
  TempDir dir;
  const float down_scale = 0.0625f;
  const Fp8Layer down = e4m3_layer(down_scale, 0.5f);
  const std::vector<float> down_scales = {down_scale};
  const std::vector<float> gate_scales_f32 = {0.5f, 0.25f, 2.0f, 1.0f};
  std::vector<uint16_t> gate_scales;  // stored as bf16, [out, 1], as some exporters write them
  for (float s : gate_scales_f32) gate_scales.push_back(ref::f32_to_bf16(s));
  std::vector<uint8_t> gate_codes;
  for (int64_t i = 0; i < kOut * kIn; ++i) gate_codes.push_back(ref::f32_to_e4m3(float(i) * 0.75f));
  std::vector<uint8_t> e5m2_codes;
  for (float v : {1.0f, -2.5f, 57344.0f, 0.0f}) e5m2_codes.push_back(ref::f32_to_e5m2(v));

  write_checkpoint(dir.path(),
                   {{"model.layers.0.mlp.down_proj.weight", DType::f8_e4m3, {kOut, kIn}, bytes_view(down.codes)},
                    {"model.layers.0.mlp.down_proj.weight_scale", DType::f32, {}, bytes_view(down_scales)},
                    {"model.layers.0.mlp.gate_proj.weight", DType::f8_e4m3, {kOut, kIn}, bytes_view(gate_codes)},
                    {"model.layers.0.mlp.gate_proj.weight_scale", DType::bf16, {kOut, 1}, bytes_view(gate_scales)},
                    {"model.layers.0.mlp.up_proj.weight", DType::f8_e5m2, {4}, bytes_view(e5m2_codes)}});

  // The header spells the dtypes as safetensors (and PyTorch) do.
  const std::string raw = read_text(dir / "model.safetensors");
  uint64_t header_len = 0;
  std::memcpy(&header_len, raw.data(), 8);
  const auto header = nlohmann::json::parse(raw.substr(8, header_len));
  CHECK(header["model.layers.0.mlp.down_proj.weight"]["dtype"] == "F8_E4M3");
  CHECK(header["model.layers.0.mlp.up_proj.weight"]["dtype"] == "F8_E5M2");

  auto source = open_checkpoint(dir.path());
  const WeightSource& weights = *source;

  auto down_weight = weights.tensor("model.layers.0.mlp.down_proj.weight");
  REQUIRE(down_weight.has_value());
  CHECK(down_weight->dtype == DType::f8_e4m3);
  REQUIRE(down_weight->rank == 2);
  CHECK(down_weight->shape[0] == kOut);
  CHECK(down_weight->shape[1] == kIn);
  CHECK(down_weight->nbytes() == size_t(kOut * kIn));
  REQUIRE(std::memcmp(down_weight->data, down.codes.data(), down.codes.size()) == 0);

  auto per_tensor = find_weight_scale(weights, "model.layers.0.mlp.down_proj", kOut);
  REQUIRE_MESSAGE(per_tensor.has_value(), per_tensor.status().message());
  CHECK(per_tensor->name == "model.layers.0.mlp.down_proj.weight_scale");
  CHECK(per_tensor->granularity == ScaleGranularity::per_tensor);
  REQUIRE(per_tensor->values.dtype == DType::f32);
  const float read_scale = *per_tensor->values.as<const float>();
  CHECK(read_scale == down_scale);
  // The weight as a model would use it: code * scale, element by element.
  const auto* stored = down_weight->as<const uint8_t>();
  for (size_t i = 0; i < down.dequantized.size(); ++i)
    REQUIRE(ref::e4m3_to_f32(stored[i]) * read_scale == down.dequantized[i]);

  auto per_channel = find_weight_scale(weights, "model.layers.0.mlp.gate_proj", kOut);
  REQUIRE_MESSAGE(per_channel.has_value(), per_channel.status().message());
  CHECK(per_channel->granularity == ScaleGranularity::per_channel);
  REQUIRE(per_channel->values.dtype == DType::bf16);
  for (int64_t row = 0; row < kOut; ++row)
    CHECK(ref::bf16_to_f32(per_channel->values.as<const uint16_t>()[row]) == gate_scales_f32[size_t(row)]);

  auto e5m2 = weights.tensor("model.layers.0.mlp.up_proj.weight");
  REQUIRE(e5m2.has_value());
  CHECK(e5m2->dtype == DType::f8_e5m2);
  const auto* e5m2_stored = e5m2->as<const uint8_t>();
  CHECK(ref::e5m2_to_f32(e5m2_stored[1]) == -2.5f);
  CHECK(ref::e5m2_to_f32(e5m2_stored[2]) == 57344.0f);
}

TEST_CASE("fp8: a file from another writer with F8 dtypes opens") {
  TempDir dir;
  write_file(dir / "config.json", bytes_of("{}"));
  write_file(dir / "model.safetensors",
             make_file(R"({"w":{"dtype":"F8_E4M3","shape":[2,3],"data_offsets":[0,6]},)"
                       R"("v":{"dtype":"F8_E5M2","shape":[2],"data_offsets":[6,8]}})",
                       8));
  auto source = open_checkpoint(dir.path());
  auto w = source->tensor("w");
  REQUIRE(w.has_value());
  CHECK(w->dtype == DType::f8_e4m3);
  CHECK(w->nbytes() == 6);
  CHECK(w->as<const uint8_t>()[5] == 5);  // make_file's counting pattern
  auto v = source->tensor("v");
  REQUIRE(v.has_value());
  CHECK(v->dtype == DType::f8_e5m2);
  CHECK(v->as<const uint8_t>()[0] == 6);
}

TEST_CASE("fp8: find_weight_scale takes the first suffix present, [out] as per channel, and input scales") {
  TempDir dir;
  const std::vector<float> inverse = {1.0f, 2.0f, 3.0f, 4.0f};
  const std::vector<float> plain = {9.0f};
  const std::vector<uint16_t> input = {ref::f32_to_f16(0.5f)};
  write_checkpoint(dir.path(), {{"layer.weight_scale_inv", DType::f32, {kOut}, bytes_view(inverse)},
                                {"layer.weight_scale", DType::f32, {1}, bytes_view(plain)},
                                {"layer.input_scale", DType::f16, {1}, bytes_view(input)}});
  auto source = open_checkpoint(dir.path());

  auto inverse_first = find_weight_scale(*source, "layer", kOut, {"weight_scale_inv", "weight_scale"});
  REQUIRE_MESSAGE(inverse_first.has_value(), inverse_first.status().message());
  CHECK(inverse_first->name == "layer.weight_scale_inv");
  CHECK(inverse_first->granularity == ScaleGranularity::per_channel);
  CHECK(inverse_first->values.as<const float>()[3] == 4.0f);

  auto plain_first = find_weight_scale(*source, "layer", kOut, {"weight_scale", "weight_scale_inv"});
  REQUIRE(plain_first.has_value());
  CHECK(plain_first->name == "layer.weight_scale");
  CHECK(plain_first->granularity == ScaleGranularity::per_tensor);

  auto missing_then_found = find_weight_scale(*source, "layer", kOut, {"scale", "input_scale"});
  REQUIRE(missing_then_found.has_value());
  CHECK(missing_then_found->name == "layer.input_scale");
  CHECK(ref::f16_to_f32(missing_then_found->values.as<const uint16_t>()[0]) == 0.5f);
}

TEST_CASE("fp8: find_weight_scale errors name the directory, the tensor and what was expected") {
  TempDir dir;
  const std::vector<uint8_t> fp8_scale = {0x38};
  const std::vector<int32_t> int_scale = {1};
  const std::vector<float> three(3, 1.0f), wide(kOut * 2, 1.0f), row(kOut, 1.0f);
  write_checkpoint(dir.path(), {{"fp8.weight_scale", DType::f8_e4m3, {1}, bytes_view(fp8_scale)},
                                {"int.weight_scale", DType::i32, {1}, bytes_view(int_scale)},
                                {"short.weight_scale", DType::f32, {3}, bytes_view(three)},
                                {"short.weight_scale_inv", DType::f32, {kOut}, bytes_view(row)},
                                {"wide.weight_scale", DType::f32, {kOut, 2}, bytes_view(wide)},
                                {"row.weight_scale", DType::f32, {1, kOut}, bytes_view(row)}});
  auto source = open_checkpoint(dir.path());
  const std::string where = dir.path().string();

  expect_error(find_weight_scale(*source, "absent", kOut, {"weight_scale", "weight_scale_inv"}).status(),
               ErrorCode::not_found, {where, "'absent'", "absent.weight_scale, absent.weight_scale_inv"});
  expect_error(find_weight_scale(*source, "fp8", kOut).status(), ErrorCode::corrupt_data,
               {where, "'fp8.weight_scale'", "f8_e4m3", "expected f32, bf16 or f16"});
  expect_error(find_weight_scale(*source, "int", kOut).status(), ErrorCode::corrupt_data,
               {"'int.weight_scale'", "i32"});
  expect_error(find_weight_scale(*source, "short", kOut).status(), ErrorCode::corrupt_data,
               {where, "'short.weight_scale'", "[3]", "expected one value or 4"});
  expect_error(find_weight_scale(*source, "wide", kOut).status(), ErrorCode::corrupt_data,
               {"'wide.weight_scale'", "[4, 2]"});
  // [1, out] is a row, not one value per output channel.
  expect_error(find_weight_scale(*source, "row", kOut).status(), ErrorCode::corrupt_data,
               {"'row.weight_scale'", "[1, 4]"});
  // A malformed scale is an error even when a later suffix names a good one:
  // the checkpoint says which tensor is the scale, and it is wrong.
  expect_error(find_weight_scale(*source, "short", kOut, {"weight_scale", "weight_scale_inv"}).status(),
               ErrorCode::corrupt_data, {"'short.weight_scale'"});
}
