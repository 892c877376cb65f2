// `hostrun-llama-checkpoint rtn-awq SRC DST`: a Llama checkpoint's linear
// layers rounded to nearest 4-bit and written in AutoAWQ's GEMM format
// (kernels/ref/awq.hpp), everything else copied: the plain-rounding baseline
// that AWQ's calibrated scales must beat, and AWQ folders for tests. Optionally
// also the dequantized twin: the same model with W = (q - z) * s as dense f32,
// which must compute what the AWQ folder computes.
#pragma once

#include <cstdint>
#include <filesystem>

#include "hostrun/status.hpp"

namespace hostrun::llama {

struct RtnAwqOptions {
  int64_t group_size = 128;               // 32, 64 or 128
  std::filesystem::path dequantized_twin;  // empty: not written
};

// Reads SRC (an unquantized Llama folder: f32, bf16 or f16), writes DST
// (config.json with quantization_config, model.safetensors, and SRC's
// tokenizer and generation files). Holds the output in memory: for test and
// small models.
Status write_rtn_awq_checkpoint(const std::filesystem::path& source, const std::filesystem::path& destination,
                                const RtnAwqOptions& options) noexcept;

}  // namespace hostrun::llama
