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

}  // namespace conformance
