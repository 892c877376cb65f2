// The quantizers whose layers run on a GPU, through the LinearLayer suite
// (linear_suite.cpp): inputs copied to the device, results back, compared on
// the host with ref::gemm on the layer's dequantize()d weights. Built with
// CUDA, run on the GPU machine (ctest label gpu). A new GPU quantizer joins
// with one row.
#include "cuda_memory.hpp"
#include "linear_checkpoints.hpp"
#include "linear_suite.hpp"

namespace conformance {

namespace {

using hostrun::DType;

// label, plugin, settings, activation dtype, checkpoint writer, weight tolerance, tolerance
const QuantizerRow kRows[] = {
    // AutoAWQ 4-bit (see conformance_linear.cpp for the weight bound). Up to
    // 64 rows the W4A16 kernels' products are exact and their sums f32, the
    // output rounded once to the activation dtype: 2^-8 (bf16) / 2^-11 (f16)
    // of the largest output; above 64 rows W is first rounded to the dtype
    // for cuBLAS, which adds about as much again. With margin.
    {"awq, group 128, bf16", "awq", {}, DType::bf16, &write_awq_checkpoint<128>, 1.0 / 15 * 1.01, 6e-3},
    {"awq, group 64, f16", "awq", {}, DType::f16, &write_awq_checkpoint<64>, 1.0 / 15 * 1.01, 1e-3},
    {"awq, group 32, bf16", "awq", {}, DType::bf16, &write_awq_checkpoint<32>, 1.0 / 15 * 1.01, 6e-3},
    // FP8 e4m3 (see conformance_linear.cpp: x's rounding to e4m3 costs up to 0.035 of the largest output, bound
    // 0.05 there), plus the output's rounding to the activation dtype and FP8 tensor cores' own sums.
    {"fp8, per-channel scales, bf16", "fp8", {}, DType::bf16, &write_fp8_checkpoint<true>, 1.0 / 28 * 1.0001, 0.055},
    {"fp8, per-tensor scale, f16", "fp8", {}, DType::f16, &write_fp8_checkpoint<false>, 1.0 / 28 * 1.0001, 0.055},
    {"fp8, static input scale, bf16", "fp8", {}, DType::bf16, &write_fp8_checkpoint<true, 4>, 1.0 / 28 * 1.0001,
     0.055},
};

}  // namespace

std::span<const QuantizerRow> quantizer_rows() { return kRows; }

DeviceMemory& linear_device_memory() {
  static CudaMemory memory;
  return memory;
}

}  // namespace conformance
