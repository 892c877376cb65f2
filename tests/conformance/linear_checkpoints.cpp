// Checkpoint writers of the LinearLayer suite's rows (linear_checkpoints.hpp).
#include "linear_checkpoints.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#include "checkpoint/safetensors.hpp"
#include "ref/awq.hpp"
#include "ref/dtype.hpp"
#include "ref/fp8_linear.hpp"
#include "support.hpp"

namespace conformance {

using namespace hostrun;

void write_dense_checkpoint(const fs::path& directory, std::span<const DenseLinearWeight> layers) {
  std::vector<std::vector<std::byte>> storage;
  std::vector<checkpoint::TensorData> tensors;
  for (const DenseLinearWeight& layer : layers) {
    storage.emplace_back(layer.values.size() * 2);
    ref::convert_from_f32(layer.values.data(), layer.values.size(), storage.back().data(), ref::DType::bf16);
    tensors.push_back({layer.prefix + ".weight", DType::bf16, {layer.out_features, layer.in_features},
                       std::span<const std::byte>(storage.back())});
  }
  Status written = checkpoint::write_safetensors(directory / "model.safetensors", tensors);
  REQUIRE_MESSAGE(written.is_ok(), written.message());
  std::ofstream(directory / "config.json") << "{}\n";
}

void write_awq_checkpoint_grouped(const fs::path& directory, std::span<const DenseLinearWeight> layers, int group) {
  std::vector<std::vector<std::byte>> storage;
  std::vector<checkpoint::TensorData> tensors;
  const auto add = [&](std::string name, DType dtype, std::vector<int64_t> shape, const void* data, size_t bytes) {
    storage.emplace_back(bytes);
    std::memcpy(storage.back().data(), data, bytes);
    tensors.push_back({std::move(name), dtype, std::move(shape), std::span<const std::byte>(storage.back())});
  };
  for (const DenseLinearWeight& layer : layers) {
    const size_t out = size_t(layer.out_features), in = size_t(layer.in_features), groups = in / size_t(group);
    const ref::AwqPackedLayer packed = ref::awq_quantize_rtn_packed(layer.values.data(), out, in, size_t(group));
    add(layer.prefix + ".qweight", DType::i32, {int64_t(in), int64_t(out / 8)}, packed.qweight.data(),
        packed.qweight.size() * 4);
    add(layer.prefix + ".qzeros", DType::i32, {int64_t(groups), int64_t(out / 8)}, packed.qzeros.data(),
        packed.qzeros.size() * 4);
    add(layer.prefix + ".scales", DType::f16, {int64_t(groups), int64_t(out)}, packed.scales.data(),
        packed.scales.size() * 2);
  }
  Status written = checkpoint::write_safetensors(directory / "model.safetensors", tensors);
  REQUIRE_MESSAGE(written.is_ok(), written.message());
  std::ofstream(directory / "config.json")
      << fmt::format(R"({{"quantization_config": {{"quant_method": "awq", "bits": 4, "group_size": {}, )"
                     R"("zero_point": true, "version": "gemm"}}}})",
                     group)
      << "\n";
}

void write_fp8_checkpoint_as(const fs::path& directory, std::span<const DenseLinearWeight> layers,
                             Fp8CheckpointOptions options) {
  std::vector<std::vector<std::byte>> storage;
  std::vector<checkpoint::TensorData> tensors;
  const auto add = [&](std::string name, DType dtype, std::vector<int64_t> shape, const void* data, size_t bytes) {
    storage.emplace_back(bytes);
    std::memcpy(storage.back().data(), data, bytes);
    tensors.push_back({std::move(name), dtype, std::move(shape), std::span<const std::byte>(storage.back())});
  };
  for (const DenseLinearWeight& layer : layers) {
    const size_t out = size_t(layer.out_features), in = size_t(layer.in_features);
    std::vector<uint8_t> codes(out * in);
    std::vector<float> scales(out);
    if (options.per_channel) {
      ref::quantize_weight_e4m3(layer.values.data(), out, in, codes.data(), scales.data());
      add(layer.prefix + ".weight_scale", DType::f32, {int64_t(out), 1}, scales.data(), out * 4);
    } else {
      float amax = 0.0f;
      for (float v : layer.values) amax = std::max(amax, std::fabs(v));
      const float scale = amax > 0.0f ? amax / ref::kE4m3Max : 1.0f;
      for (size_t i = 0; i < codes.size(); ++i) codes[i] = ref::f32_to_e4m3(layer.values[i] / scale);
      add(layer.prefix + ".weight_scale", DType::f32, {}, &scale, 4);
    }
    add(layer.prefix + ".weight", DType::f8_e4m3, {int64_t(out), int64_t(in)}, codes.data(), codes.size());
    if (options.static_input_scale > 0.0f)
      add(layer.prefix + ".input_scale", DType::f32, {}, &options.static_input_scale, 4);
  }
  Status written = checkpoint::write_safetensors(directory / "model.safetensors", tensors);
  REQUIRE_MESSAGE(written.is_ok(), written.message());
  std::ofstream(directory / "config.json")
      << fmt::format(R"({{"quantization_config": {{"quant_method": "fp8", "activation_scheme": "{}"}}}})",
                     options.static_input_scale > 0.0f ? "static" : "dynamic")
      << "\n";
}

}  // namespace conformance
