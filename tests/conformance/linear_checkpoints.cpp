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

namespace {

// Tensors copied in as they are added, then written as one safetensors file.
class SafetensorsFile {
 public:
  void add(std::string name, DType dtype, std::vector<int64_t> shape, const void* data, size_t bytes) {
    storage_.emplace_back(bytes);
    std::memcpy(storage_.back().data(), data, bytes);
    tensors_.push_back({std::move(name), dtype, std::move(shape), std::span<const std::byte>(storage_.back())});
  }
  void write(const fs::path& path) const {
    Status written = checkpoint::write_safetensors(path, tensors_);
    REQUIRE_MESSAGE(written.is_ok(), written.message());
  }

 private:
  std::vector<std::vector<std::byte>> storage_;  // one buffer a tensor: it stays put as the list grows
  std::vector<checkpoint::TensorData> tensors_;
};

}  // namespace

void write_dense_checkpoint(const fs::path& directory, std::span<const DenseLinearWeight> layers) {
  SafetensorsFile file;
  for (const DenseLinearWeight& layer : layers) {
    std::vector<uint16_t> bf16(layer.values.size());
    ref::convert_from_f32(layer.values.data(), layer.values.size(), bf16.data(), ref::DType::bf16);
    file.add(layer.prefix + ".weight", DType::bf16, {layer.out_features, layer.in_features}, bf16.data(),
             bf16.size() * 2);
  }
  file.write(directory / "model.safetensors");
  std::ofstream(directory / "config.json") << "{}\n";
}

void write_awq_checkpoint_grouped(const fs::path& directory, std::span<const DenseLinearWeight> layers, int group) {
  SafetensorsFile file;
  for (const DenseLinearWeight& layer : layers) {
    const size_t out = size_t(layer.out_features), in = size_t(layer.in_features), groups = in / size_t(group);
    const ref::AwqPackedLayer packed = ref::awq_quantize_rtn_packed(layer.values.data(), out, in, size_t(group));
    file.add(layer.prefix + ".qweight", DType::i32, {int64_t(in), int64_t(out / 8)}, packed.qweight.data(),
        packed.qweight.size() * 4);
    file.add(layer.prefix + ".qzeros", DType::i32, {int64_t(groups), int64_t(out / 8)}, packed.qzeros.data(),
        packed.qzeros.size() * 4);
    file.add(layer.prefix + ".scales", DType::f16, {int64_t(groups), int64_t(out)}, packed.scales.data(),
        packed.scales.size() * 2);
  }
  file.write(directory / "model.safetensors");
  std::ofstream(directory / "config.json")
      << fmt::format(R"({{"quantization_config": {{"quant_method": "awq", "bits": 4, "group_size": {}, )"
                     R"("zero_point": true, "version": "gemm"}}}})",
                     group)
      << "\n";
}

void write_fp8_checkpoint_as(const fs::path& directory, std::span<const DenseLinearWeight> layers,
                             Fp8CheckpointOptions options) {
  SafetensorsFile file;
  for (const DenseLinearWeight& layer : layers) {
    const size_t out = size_t(layer.out_features), in = size_t(layer.in_features);
    std::vector<uint8_t> codes(out * in);
    std::vector<float> scales(out);
    if (options.per_channel) {
      ref::quantize_weight_e4m3(layer.values.data(), out, in, codes.data(), scales.data());
      file.add(layer.prefix + ".weight_scale", DType::f32, {int64_t(out), 1}, scales.data(), out * 4);
    } else {
      float amax = 0.0f;
      for (float v : layer.values) amax = std::max(amax, std::fabs(v));
      const float scale = amax > 0.0f ? amax / ref::kE4m3Max : 1.0f;
      for (size_t i = 0; i < codes.size(); ++i) codes[i] = ref::f32_to_e4m3(layer.values[i] / scale);
      file.add(layer.prefix + ".weight_scale", DType::f32, {}, &scale, 4);
    }
    file.add(layer.prefix + ".weight", DType::f8_e4m3, {int64_t(out), int64_t(in)}, codes.data(), codes.size());
    if (options.static_input_scale > 0.0f)
      file.add(layer.prefix + ".input_scale", DType::f32, {}, &options.static_input_scale, 4);
  }
  file.write(directory / "model.safetensors");
  std::ofstream(directory / "config.json")
      << fmt::format(R"({{"quantization_config": {{"quant_method": "fp8", "activation_scheme": "{}"}}}})",
                     options.static_input_scale > 0.0f ? "static" : "dynamic")
      << "\n";
}

}  // namespace conformance
