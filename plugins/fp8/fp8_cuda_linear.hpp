// fp8's layers on a CUDA GPU of compute capability 8.9 or newer (FP8 tensor
// cores): e4m3 codes and per-channel scales uploaded once; each forward
// quantizes x's rows to e4m3 (kernels/cuda fp8_quant.hpp, the twin of the
// CPU path's rounding) and multiplies them with the weights: up to 16
// rows (fp8_small_gemm_supported) with kernels/cuda's weight-streaming
// fp8_small_gemm (decode of a few sequences), more with cuBLASLt's FP8 GEMM
// into f32 sums, to which cuda::apply_fp8_scales applies both scale vectors
// (cuBLASLt's own per-row scale mode is refused on Hopper). Both write bf16
// or f16.
// Built only with CUDA (HOSTRUN_FP8_CUDA).
#pragma once

#include <hostrun/quantizer.hpp>

#include <cstdint>
#include <vector>

namespace hostrun::fp8 {

// Whether `device` can run these layers; the reason when not.
Status cuda_probe(const Device& device) noexcept;

// A fused layer in host memory, as load_linear assembled it.
struct HostFp8Layer {
  std::vector<uint8_t> codes;  // [out, in]
  std::vector<float> scales;   // [out]
  int64_t in_features = 0;
  float input_scale = 0.0f;    // 0: dynamic
};

// Throws Error (including when cuBLASLt offers no FP8 GEMM for the shape).
PluginPtr<LinearLayer> make_cuda_linear(const LibraryPin& library, const HostFp8Layer& layer, Device device,
                                        DType activation_dtype);

}  // namespace hostrun::fp8
