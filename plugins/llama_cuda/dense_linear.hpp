// llama_cuda's own linear layers, used when the manifest names no quantizer:
// the checkpoint's weights in the activation dtype on the GPU, multiplied by
// cuBLAS or, for a few rows, by kernels/cuda's small_gemm. At batch 1..8 a
// decode step reads every weight once and does almost no arithmetic, so the
// bandwidth-bound small_gemm beats cuBLAS there (kernels/cuda/NOTES.md), and
// it fuses the two epilogues the model wants at those sizes: RoPE into the
// QKV product and SiLU-and-multiply into the gate/up product. A quantizer's
// layers take their place through the same LinearLayer calls.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <hostrun/quantizer.hpp>

#include <cstdint>

namespace hostrun::llama_cuda {

// cuBLAS and small_gemm behind one call, shared by the dense layers and the
// LM head (whose logits are f32).
class DenseGemm {
 public:
  // small_gemm takes products of at most `small_gemm_max_rows` rows (0: never).
  DenseGemm(DType dtype, int64_t small_gemm_max_rows, cudaStream_t stream);
  ~DenseGemm();
  DenseGemm(const DenseGemm&) = delete;
  DenseGemm& operator=(const DenseGemm&) = delete;

  DType dtype() const { return dtype_; }
  // Whether small_gemm (and so the fused epilogues) takes `m` rows against
  // `weight` [n, k], given x contiguous and 16-byte aligned.
  bool small(int64_t m, int64_t k, const void* weight) const;
  // y[m, n] = x[m, k] . weight[n, k]^T, rows x_stride / y_stride elements
  // apart; y in the activation dtype, or f32. Throws Error.
  void multiply(const void* x, int64_t x_stride, const void* weight, int m, int n, int k, void* y, int64_t y_stride,
                bool f32_out, cudaStream_t stream);

 private:
  void bind(cudaStream_t stream);

  DType dtype_;
  int64_t small_gemm_max_rows_;
  cublasHandle_t cublas_ = nullptr;
  cudaStream_t bound_ = nullptr;  // the stream cublas_ launches on
};

// One dense [out_features, in_features] weight (the model owns the memory).
// Fuses RoPE and SiLU-and-multiply for calls DenseGemm::small takes; such a
// call needs x and y contiguous and 16-byte aligned.
class DenseLinear final : public LinearLayer {
 public:
  DenseLinear(DenseGemm& gemm, const void* weight, int64_t out_features, int64_t in_features, Device device);

  LinearInfo info() const noexcept override;
  uint32_t fused_epilogues(int64_t rows) const noexcept override;
  size_t workspace_bytes(int64_t max_rows) const noexcept override;
  Status forward(const LinearCall& call, const ExecContext& exec) noexcept override;
  Status dequantize(std::span<float> weight) const noexcept override;

 private:
  DenseGemm& gemm_;
  const void* weight_;
  int64_t out_features_;
  int64_t in_features_;
  Device device_;
};

}  // namespace hostrun::llama_cuda
