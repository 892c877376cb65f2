// The linear layers llama_cpu builds itself when the manifest names no
// quantizer: the checkpoint's weights as f32 rows (prefixes fused along the
// output dimension), multiplied by parallel_gemm. It fuses no epilogue and
// needs no workspace, so the model's own code path (no quantizer) and a
// quantizer's differ only in the object behind LinearLayer.
#pragma once

#include <hostrun/sdk.hpp>

#include <vector>

namespace hostrun::llama_cpu {

class DenseLinear final : public LinearLayer {
 public:
  // `weight` is [out_features, in_features] f32.
  DenseLinear(std::vector<float> weight, int64_t in_features, int threads);

  LinearInfo info() const noexcept override;
  uint32_t fused_epilogues(int64_t) const noexcept override { return kEpilogueNone; }
  size_t workspace_bytes(int64_t) const noexcept override { return 0; }
  Status forward(const LinearCall& call, const ExecContext& exec) noexcept override;
  Status dequantize(std::span<float> weight) const noexcept override;

 private:
  std::vector<float> weight_;
  int64_t in_features_;
  int64_t out_features_;
  int threads_;
};

}  // namespace hostrun::llama_cpu
