// The checkpoints the LinearLayer suite's rows load from, shared by the CPU
// and GPU executables (conformance_linear.cpp, conformance_linear_gpu.cpp).
#pragma once

#include <filesystem>
#include <span>

#include "linear_suite.hpp"

namespace conformance {

// For quantizers that quantize at load: the dense weights as bf16 safetensors.
void write_dense_checkpoint(const std::filesystem::path& directory, std::span<const DenseLinearWeight> layers);

// For quantizers that read AutoAWQ's GEMM format: each layer rounded to
// nearest 4-bit (ref::awq_quantize_rtn_packed) and packed as AutoAWQ packs,
// with its quantization_config.
void write_awq_checkpoint_grouped(const std::filesystem::path& directory, std::span<const DenseLinearWeight> layers,
                                  int group);
template <int kGroup>
void write_awq_checkpoint(const std::filesystem::path& directory, std::span<const DenseLinearWeight> layers) {
  write_awq_checkpoint_grouped(directory, layers, kGroup);
}

// For quantizers that read FP8 folders: each layer's rows rounded to e4m3
// (ref::quantize_weight_e4m3), with one weight_scale per output channel
// ([out, 1] f32) or, per tensor, the largest of them for every row; with a
// static input_scale per layer when `static_input_scale` > 0.
struct Fp8CheckpointOptions {
  bool per_channel = true;
  float static_input_scale = 0.0f;
};
void write_fp8_checkpoint_as(const std::filesystem::path& directory, std::span<const DenseLinearWeight> layers,
                             Fp8CheckpointOptions options);
template <bool kPerChannel, int kStaticInputScaleMilli = 0>
void write_fp8_checkpoint(const std::filesystem::path& directory, std::span<const DenseLinearWeight> layers) {
  write_fp8_checkpoint_as(directory, layers, {kPerChannel, float(kStaticInputScaleMilli) / 1000.0f});
}

}  // namespace conformance
