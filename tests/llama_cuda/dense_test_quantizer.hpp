// A Quantizer written in the test, to drive llama_cuda's quantizer path on a
// GPU before any GPU quantizer plugin exists: its "format" is the
// checkpoint's own bf16 weights, fused along the output dimension in the
// order load_linear is given the prefixes, multiplied by cuBLAS with a
// handle of its own. It fuses no epilogue, so the model runs its own RoPE
// and SiLU-and-multiply after these layers: the path any quantizer without
// fused epilogues takes.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <hostrun/quantizer.hpp>

#include <cstring>
#include <string>
#include <vector>

namespace llama_cuda_test {

using namespace hostrun;

class DenseTestLinear final : public LinearLayer {
 public:
  DenseTestLinear(std::vector<uint16_t> weight, int64_t out_features, int64_t in_features, Device device)
      : host_(std::move(weight)), out_(out_features), in_(in_features), device_(device) {
    if (cudaSetDevice(device.index) != cudaSuccess || cudaMalloc(&weight_, host_.size() * 2) != cudaSuccess ||
        cudaMemcpy(weight_, host_.data(), host_.size() * 2, cudaMemcpyHostToDevice) != cudaSuccess)
      throw Error(ErrorCode::out_of_memory, "dense test quantizer: cannot put a weight on the GPU");
    if (cublasCreate(&cublas_) != CUBLAS_STATUS_SUCCESS)
      throw Error(ErrorCode::internal, "dense test quantizer: cublasCreate failed");
  }
  ~DenseTestLinear() override {
    if (cublas_) cublasDestroy(cublas_);
    if (weight_) cudaFree(weight_);
  }

  LinearInfo info() const noexcept override {
    LinearInfo info;
    info.in_features = in_;
    info.out_features = out_;
    info.weight_bytes = host_.size() * 2;
    info.activation_dtype = DType::bf16;
    info.device = device_;
    info.format = "test-bf16";
    return info;
  }
  uint32_t fused_epilogues(int64_t) const noexcept override { return kEpilogueNone; }
  size_t workspace_bytes(int64_t) const noexcept override { return 0; }

  Status forward(const LinearCall& call, const ExecContext& exec) noexcept override {
    const TensorView& x = call.x;
    const TensorView& y = call.y;
    if (call.epilogue != kEpilogueNone)
      return Status(ErrorCode::invalid_argument, "dense test quantizer: asked for an epilogue it does not fuse");
    if (x.rank != 2 || y.rank != 2 || x.shape[0] != y.shape[0] || x.shape[1] != in_ || y.shape[1] != out_ ||
        x.strides[1] != 1 || y.strides[1] != 1 || x.dtype != DType::bf16 || y.dtype != DType::bf16)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("dense test quantizer: expected bf16 x [rows, {}] and y [rows, {}]", in_, out_));
    if (x.shape[0] == 0) return {};
    if (cublasSetStream(cublas_, static_cast<cudaStream_t>(exec.stream)) != CUBLAS_STATUS_SUCCESS)
      return Status(ErrorCode::internal, "dense test quantizer: cublasSetStream failed");
    // Row-major y = x W^T as column-major y^T = W^T x^T, as llama_cuda's dense layers call it.
    const float alpha = 1.0f, beta = 0.0f;
    const cublasStatus_t status =
        cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, int(out_), int(x.shape[0]), int(in_), &alpha, weight_,
                     CUDA_R_16BF, int(in_), x.data, CUDA_R_16BF, int(x.strides[0]), &beta, y.data, CUDA_R_16BF,
                     int(y.strides[0]), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (status != CUBLAS_STATUS_SUCCESS)
      return Status(ErrorCode::internal,
                    fmt::format("dense test quantizer: cublasGemmEx failed: {}", cublasGetStatusString(status)));
    return {};
  }

  Status dequantize(std::span<float> weight) const noexcept override {
    if (weight.size() != host_.size())
      return Status(ErrorCode::invalid_argument, "dense test quantizer: dequantize into the wrong size");
    for (size_t i = 0; i < host_.size(); ++i) {
      const uint32_t bits = uint32_t(host_[i]) << 16;  // bf16 is the top half of an f32
      std::memcpy(&weight[i], &bits, sizeof(float));
    }
    return {};
  }

 private:
  std::vector<uint16_t> host_;
  int64_t out_;
  int64_t in_;
  Device device_;
  void* weight_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
};

class DenseTestQuantizer final : public Quantizer {
 public:
  std::string format() const noexcept override { return "test-bf16"; }

  Result<PluginPtr<LinearLayer>> load_linear(const LinearLoad& load) noexcept override {
    PluginPtr<LinearLayer> layer;
    Status made = guard([&]() -> Status {
      if (load.activation_dtype != DType::bf16 || load.device.kind != DeviceKind::cuda)
        return Status(ErrorCode::unsupported, "dense test quantizer: bf16 on a GPU only");
      std::vector<uint16_t> fused;
      int64_t out_features = 0, in_features = -1;
      for (const std::string& prefix : load.prefixes) {
        auto found = load.weights->tensor(prefix + ".weight");
        if (!found) return found.status();
        const TensorView& w = found.value();
        if (w.rank != 2 || w.dtype != DType::bf16 || !w.is_contiguous() || (in_features >= 0 && w.shape[1] != in_features))
          return Status(ErrorCode::invalid_argument,
                        fmt::format("dense test quantizer: {}.weight: expected a contiguous bf16 [out, in]", prefix));
        in_features = w.shape[1];
        out_features += w.shape[0];
        const auto* values = static_cast<const uint16_t*>(w.data);
        fused.insert(fused.end(), values, values + w.numel());
      }
      ++layers_loaded;
      // Made in the test binary: no library to pin.
      layer = make_pinned<DenseTestLinear>(LibraryPin{}, std::move(fused), out_features, in_features, load.device);
      return {};
    });
    if (!made) return made;
    return layer;
  }

  Status quantize(const QuantizeJob&) noexcept override {
    return Status(ErrorCode::unsupported, "dense test quantizer: loads only");
  }

  int layers_loaded = 0;
};

}  // namespace llama_cuda_test
