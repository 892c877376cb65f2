// awq's CUDA layers (awq_cuda_linear.hpp).
#include "awq_cuda_linear.hpp"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <vector>

#include "cuda/awq_gemm.hpp"
#include "cuda/device_memory.hpp"

namespace hostrun::awq {

namespace {

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw Error(ErrorCode::internal, fmt::format("awq: {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e)));
}

// One cuBLAS handle per device, shared by the layers on it
// (cuda::shared_for_device: a handle holds a workspace of its own).
class Cublas {
 public:
  explicit Cublas(int device) {
    cuda::DeviceScope scope(device, "awq");
    if (const cublasStatus_t status = cublasCreate(&handle_); status != CUBLAS_STATUS_SUCCESS)
      throw Error(ErrorCode::internal, fmt::format("awq: cublasCreate failed: {}", cublasGetStatusString(status)));
  }
  ~Cublas() { cublasDestroy(handle_); }
  Cublas(const Cublas&) = delete;
  Cublas& operator=(const Cublas&) = delete;
  cublasHandle_t handle() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

template <typename T>
using DeviceArray = cuda::DeviceArray<T>;

class AwqCudaLinear final : public LinearLayer {
 public:
  AwqCudaLinear(const ref::AwqWeights& weights, Device device, DType activation_dtype)
      : device_(device), dtype_(activation_dtype) {
    cuda::DeviceScope scope(device.index, "awq");
    const cuda::AwqRepacked repacked = cuda::awq_repack(weights);
    codes_ = std::make_unique<DeviceArray<uint32_t>>(repacked.codes, "awq", "AWQ weights");
    zeros_ = std::make_unique<DeviceArray<uint32_t>>(repacked.zeros, "awq", "AWQ weights");
    scales_ = std::make_unique<DeviceArray<uint16_t>>(repacked.scales, "awq", "AWQ weights");
    weights_ = {codes_->data(),         zeros_->data(),         scales_->data(),
                repacked.in_features, repacked.out_features, repacked.group_size,
                repacked.padded_in};
    format_ = fmt::format("awq-w4-g{}", repacked.group_size);
    cublas_ = cuda::shared_for_device<Cublas>(device.index);
    // The kernel's split counters for any row count it takes (it leaves them zero).
    // Above direct_rows_ rows W is dequantized into the workspace and
    // multiplied by cuBLAS (the kernels' own choice: awq_gemm_direct_rows).
    direct_rows_ = cuda::awq_gemm_direct_rows(weights_);
    counter_count_ = cuda::awq_gemm_counters(weights_, int(direct_rows_));
    counters_ = std::make_unique<DeviceArray<uint32_t>>(std::vector<uint32_t>(size_t(std::max(counter_count_, 1)), 0u),
                                                        "awq", "AWQ weights");
  }

  LinearInfo info() const noexcept override {
    LinearInfo out;
    out.in_features = weights_.in_features;
    out.out_features = weights_.out_features;
    out.weight_bytes = codes_->bytes() + zeros_->bytes() + scales_->bytes();
    out.activation_dtype = dtype_;
    out.device = device_;
    out.format = format_;
    return out;
  }

  // SiLU-and-multiply where the decode kernel takes the rows (up to 192 at
  // group 128; the tile kernel and the cuBLAS path leave it to the model).
  uint32_t fused_epilogues(int64_t rows) const noexcept override {
    return rows <= direct_rows_ && cuda::awq_gemm_fuses_silu_mul(weights_, int(rows))
               ? kEpilogueSiluMul
               : kEpilogueNone;
  }

  size_t workspace_bytes(int64_t max_rows) const noexcept override {
    const size_t kernel = cuda::awq_gemm_workspace_bytes(weights_, int(std::min(max_rows, direct_rows_)));
    return max_rows > direct_rows_ ? std::max(kernel, dequantized_bytes()) : kernel;
  }

  Status forward(const LinearCall& call, const ExecContext& exec) noexcept override {
    return guard([&]() -> Status {
      const TensorView& x = call.x;
      const TensorView& y = call.y;
      const int64_t rows = x.rank == 2 ? x.shape[0] : -1;
      const bool silu = call.epilogue == kEpilogueSiluMul;
      const int64_t y_columns = silu ? weights_.out_features / 2 : weights_.out_features;
      const auto matrix = [&](const TensorView& v, int64_t columns) {
        return v.rank == 2 && v.shape[0] == rows && v.shape[1] == columns && v.strides[1] == 1 &&
               v.strides[0] >= columns && v.dtype == dtype_ && v.device == device_ && v.data != nullptr;
      };
      if (rows < 0 || rows > std::numeric_limits<int>::max() || !matrix(x, weights_.in_features) ||
          !matrix(y, y_columns))
        return Status(ErrorCode::invalid_argument,
                      fmt::format("awq: linear [{} x {}]{}: expected x [rows, {}] and y [rows, {}] in {} on cuda:{} "
                                  "with contiguous rows",
                                  weights_.out_features, weights_.in_features, silu ? " with SiLU-and-multiply" : "",
                                  weights_.in_features, y_columns, dtype_name(dtype_), device_.index));
      if (rows == 0) return {};
      if (call.epilogue != kEpilogueNone && (call.epilogue & ~fused_epilogues(rows)) != 0)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("awq: forward: epilogue mask {:#x} asked for at {} rows, where this layer fuses "
                                  "{:#x}",
                                  call.epilogue, rows, fused_epilogues(rows)));
      const size_t given = exec.workspace.data != nullptr ? exec.workspace.nbytes() : 0;
      const auto stream = static_cast<cudaStream_t>(exec.stream);
      if (rows > direct_rows_) return multiply_dequantized(x, y, int(rows), exec.workspace.data, given, stream);
      const cuda::DType kernel_dtype = dtype_ == DType::bf16 ? cuda::DType::bf16 : cuda::DType::f16;
      const cudaError_t e =
          silu ? cuda::awq_gemm_silu_mul(weights_, x.data, x.strides[0], kernel_dtype, int(rows), y.data, y.strides[0],
                                         exec.workspace.data, given, counters_->data(), counter_count_, stream)
               : cuda::awq_gemm(weights_, x.data, x.strides[0], kernel_dtype, int(rows), y.data, y.strides[0],
                                exec.workspace.data, given, counters_->data(), counter_count_, stream);
      if (e == cudaErrorInvalidValue)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("awq: linear [{} x {}], {} rows: refused by awq_gemm: x needs 16-byte alignment and "
                                  "a row stride that is a multiple of 8, y 4-byte alignment and an even row stride, "
                                  "and the workspace {} bytes (workspace_bytes(); {} given)",
                                  weights_.out_features, weights_.in_features, rows,
                                  cuda::awq_gemm_workspace_bytes(weights_, int(rows)), given));
      check_cuda(e, "awq_gemm");
      return {};
    });
  }

  // (q - z) * s from the device copy, so what is checked is what runs.
  Status dequantize(std::span<float> weight) const noexcept override {
    return guard([&]() -> Status {
      const size_t n = size_t(weights_.out_features), k = size_t(weights_.in_features);
      if (weight.size() != n * k)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("awq: dequantize: expected room for {} x {} values, found {}", n, k, weight.size()));
      cuda::DeviceScope scope(device_.index, "awq");
      cuda::AwqRepacked r;
      r.codes = codes_->download();
      r.zeros = zeros_->download();
      r.scales = scales_->download();
      r.in_features = weights_.in_features;
      r.out_features = weights_.out_features;
      r.group_size = weights_.group_size;
      r.padded_in = weights_.padded_in;
      std::vector<float> scales(r.scales.size());
      ref::convert_to_f32(r.scales.data(), ref::DType::f16, scales.size(), scales.data());
      for (size_t kk = 0; kk < k; ++kk) {
        const size_t g = kk / size_t(r.group_size);
        for (size_t nn = 0; nn < n; ++nn) {
          const uint32_t zero = (r.zeros[g * (n / 8) + nn / 8] >> (4 * (nn % 8))) & 0xfu;
          const float code = float(cuda::awq_repacked_code(r, int(kk), int(nn)));
          weight[nn * k + kk] = (code - float(zero)) * scales[g * n + nn];
        }
      }
      return {};
    });
  }

 private:
  size_t dequantized_bytes() const { return size_t(weights_.out_features) * size_t(weights_.in_features) * 2; }

  // W dequantized into the workspace, then cuBLAS: row-major y = x W^T is
  // column-major y^T = W x^T (W read transposed from its [n, k] rows).
  Status multiply_dequantized(const TensorView& x, const TensorView& y, int rows, void* workspace, size_t given,
                              cudaStream_t stream) {
    if (workspace == nullptr || given < dequantized_bytes())
      return Status(ErrorCode::invalid_argument,
                    fmt::format("awq: linear [{} x {}], {} rows: needs {} bytes of workspace (workspace_bytes()), {} "
                                "given",
                                weights_.out_features, weights_.in_features, rows, dequantized_bytes(), given));
    const cuda::DType kernel_dtype = dtype_ == DType::bf16 ? cuda::DType::bf16 : cuda::DType::f16;
    check_cuda(cuda::awq_dequantize(weights_, kernel_dtype, workspace, stream), "awq_dequantize");
    cublasHandle_t handle = cublas_->handle();
    if (const cublasStatus_t status = cublasSetStream(handle, stream); status != CUBLAS_STATUS_SUCCESS)
      throw Error(ErrorCode::internal, fmt::format("awq: cublasSetStream failed: {}", cublasGetStatusString(status)));
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t type = dtype_ == DType::f16 ? CUDA_R_16F : CUDA_R_16BF;
    const int n = weights_.out_features, k = weights_.in_features;
    const cublasStatus_t status =
        cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, rows, k, &alpha, workspace, type, k, x.data, type,
                     int(x.strides[0]), &beta, y.data, type, int(y.strides[0]), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (status != CUBLAS_STATUS_SUCCESS)
      throw Error(ErrorCode::internal, fmt::format("awq: cublasGemmEx (m {}, n {}, k {}) failed: {}", rows, n, k,
                                                   cublasGetStatusString(status)));
    return {};
  }

  Device device_;
  DType dtype_;
  std::unique_ptr<DeviceArray<uint32_t>> codes_, zeros_;
  std::unique_ptr<DeviceArray<uint16_t>> scales_;
  cuda::AwqDeviceWeights weights_;
  std::string format_;
  std::shared_ptr<Cublas> cublas_;
  std::unique_ptr<DeviceArray<uint32_t>> counters_;
  int64_t direct_rows_ = 0;
  int counter_count_ = 0;
};

}  // namespace

Status cuda_probe(const Device& device) noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device.index < 0 || device.index >= count) {
    cudaGetLastError();
    return Status(ErrorCode::unsupported,
                  fmt::format("awq: cuda:{} is not a CUDA device here ({} found)", device.index, count));
  }
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device.index);
  if (major < 8)
    return Status(ErrorCode::unsupported,
                  fmt::format("awq: cuda:{} is sm_{}{}; the W4A16 kernels need sm_80 or newer (bf16 tensor cores)",
                              device.index, major, minor));
  return {};
}

PluginPtr<LinearLayer> make_cuda_linear(const LibraryPin& library, const ref::AwqWeights& weights, Device device,
                                        DType activation_dtype) {
  if (activation_dtype != DType::bf16 && activation_dtype != DType::f16)
    throw Error(ErrorCode::unsupported,
                fmt::format("awq: load_linear: the CUDA path computes in bf16 or f16; {} activations were asked for",
                            dtype_name(activation_dtype)));
  if (weights.in_features % 8 != 0 || weights.in_features > std::numeric_limits<int>::max())
    throw Error(ErrorCode::unsupported,
                fmt::format("awq: load_linear: in_features {} is not a multiple of 8, which the W4A16 kernel reads in "
                            "16-byte rows",
                            weights.in_features));
  return make_pinned<AwqCudaLinear>(library, weights, device, activation_dtype);
}

}  // namespace hostrun::awq
