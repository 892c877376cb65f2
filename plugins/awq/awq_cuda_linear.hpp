// awq's layers on a CUDA GPU: the checkpoint's packed tensors repacked once
// into kernels/cuda's W4A16 layout (cuda/awq_gemm.hpp) and multiplied by
// awq_gemm in bf16 or f16 for up to 64 rows (SiLU-and-multiply fused when
// asked where the decode kernel takes the rows: awq_gemm_silu_mul); above that W is
// dequantized into the workspace and multiplied by cuBLAS (faster there,
// measured). Built only with CUDA (HOSTRUN_AWQ_CUDA).
#pragma once

#include <hostrun/quantizer.hpp>

#include "ref/awq.hpp"

namespace hostrun::awq {

// Whether `device` can run these layers (a CUDA GPU of compute capability
// 8.0 or newer: bf16 tensor cores); the reason when not.
Status cuda_probe(const Device& device) noexcept;

// The fused layer `weights` (host memory, read during the call) on `device`.
// Throws Error.
PluginPtr<LinearLayer> make_cuda_linear(const LibraryPin& library, const ref::AwqWeights& weights, Device device,
                                        DType activation_dtype);

}  // namespace hostrun::awq
