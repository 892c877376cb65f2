// fp8's CUDA layers (fp8_cuda_linear.hpp).
#include "fp8_cuda_linear.hpp"

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "cuda/device_memory.hpp"
#include "cuda/fp8_quant.hpp"
#include "cuda/fp8_small_gemm.hpp"
#include "ref/dtype.hpp"

namespace hostrun::fp8 {

namespace {

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw Error(ErrorCode::internal, fmt::format("fp8: {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e)));
}

void check_lt(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw Error(ErrorCode::internal, fmt::format("fp8: {} failed: {}", what, cublasLtGetStatusString(status)));
}

// One cuBLASLt handle per device, shared by the layers on it (cuda::shared_for_device).
class LtHandle {
 public:
  explicit LtHandle(int device) {
    cuda::DeviceScope scope(device, "fp8");
    check_lt(cublasLtCreate(&handle_), "cublasLtCreate");
  }
  ~LtHandle() { cublasLtDestroy(handle_); }
  LtHandle(const LtHandle&) = delete;
  LtHandle& operator=(const LtHandle&) = delete;
  cublasLtHandle_t get() const { return handle_; }

 private:
  cublasLtHandle_t handle_ = nullptr;
};

constexpr size_t kAlign = 256;
constexpr size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }
// cuBLASLt's own scratch for an FP8 GEMM (split-K partial sums and the like).
constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;

// Rows of x one cuBLASLt product takes at most: its f32 sums [rows, out]
// live in the workspace until the scales are applied.
constexpr int64_t kSumRows = 1024;

// One cuBLASLt product shape: sums^T [n, m] = W [n, k] . codes(x)^T [k, m] in
// column-major terms (row-major sums = x W^T), FP8 in, f32 sums out, unit
// scales. cuBLASLt's per-row / per-channel scale mode
// (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F) is refused on the H100 with
// CUDA 13's library, so the scales are applied afterwards
// (cuda::apply_fp8_scales), which is also ref::fp8_linear's formula exactly.
class Fp8Plan {
 public:
  Fp8Plan(cublasLtHandle_t lt, int m, int n, int k) {
    check_lt(cublasLtMatmulDescCreate(&op_, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    const cublasOperation_t transpose = CUBLAS_OP_T, none = CUBLAS_OP_N;
    set(CUBLASLT_MATMUL_DESC_TRANSA, transpose);
    set(CUBLASLT_MATMUL_DESC_TRANSB, none);
    check_lt(cublasLtMatrixLayoutCreate(&w_, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(n), k), "layout W");
    check_lt(cublasLtMatrixLayoutCreate(&x_, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(m), k), "layout x");
    check_lt(cublasLtMatrixLayoutCreate(&y_, CUDA_R_32F, uint64_t(n), uint64_t(m), n), "layout sums");
    cublasLtMatmulPreference_t preference = nullptr;
    check_lt(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
    const uint64_t workspace = kLtWorkspaceBytes;
    cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                         sizeof(workspace));
    int found = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(lt, op_, w_, x_, y_, y_, preference, 1, &heuristic_, &found);
    cublasLtMatmulPreferenceDestroy(preference);
    if (status != CUBLAS_STATUS_SUCCESS || found == 0) {
      destroy();
      throw Error(ErrorCode::unsupported,
                  fmt::format("fp8: cuBLASLt offers no FP8 GEMM with f32 sums for m {}, n {}, k {} ({}) on this GPU "
                              "and library",
                              m, n, k, status == CUBLAS_STATUS_SUCCESS ? "no algorithm" : cublasLtGetStatusString(status)));
    }
  }
  ~Fp8Plan() { destroy(); }
  Fp8Plan(const Fp8Plan&) = delete;
  Fp8Plan& operator=(const Fp8Plan&) = delete;

  void run(cublasLtHandle_t lt, const void* w_codes, const uint8_t* x_codes, float* sums, void* lt_workspace,
           cudaStream_t stream) {
    const float one = 1.0f, zero = 0.0f;
    check_lt(cublasLtMatmul(lt, op_, &one, w_codes, w_, x_codes, x_, &zero, sums, y_, sums, y_, &heuristic_.algo,
                            lt_workspace, kLtWorkspaceBytes, stream),
             "cublasLtMatmul (FP8)");
  }

 private:
  template <typename T>
  void set(cublasLtMatmulDescAttributes_t attribute, const T& value) {
    check_lt(cublasLtMatmulDescSetAttribute(op_, attribute, &value, sizeof(value)), "cublasLtMatmulDescSetAttribute");
  }
  void destroy() {
    if (y_) cublasLtMatrixLayoutDestroy(y_);
    if (x_) cublasLtMatrixLayoutDestroy(x_);
    if (w_) cublasLtMatrixLayoutDestroy(w_);
    if (op_) cublasLtMatmulDescDestroy(op_);
    y_ = x_ = w_ = nullptr;
    op_ = nullptr;
  }

  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t w_ = nullptr, x_ = nullptr, y_ = nullptr;
  cublasLtMatmulHeuristicResult_t heuristic_{};
};

class Fp8CudaLinear final : public LinearLayer {
 public:
  Fp8CudaLinear(const HostFp8Layer& layer, Device device, DType activation_dtype)
      : device_(device), dtype_(activation_dtype), in_(layer.in_features), out_(int64_t(layer.scales.size())),
        input_scale_(layer.input_scale) {
    cuda::DeviceScope scope(device.index, "fp8");
    codes_ = std::make_unique<cuda::DeviceArray<uint8_t>>(layer.codes, "fp8", "FP8 weights");
    scales_ = std::make_unique<cuda::DeviceArray<float>>(layer.scales, "fp8", "FP8 weights");
    lt_ = cuda::shared_for_device<LtHandle>(device.index);
    format_ = input_scale_ > 0.0f ? "fp8-e4m3-static" : "fp8-e4m3";  // within the small-string buffer
    plan(int(kSumRows));  // refuse at load, not at the first step, where cuBLASLt cannot do it
  }

  LinearInfo info() const noexcept override {
    LinearInfo out;
    out.in_features = in_;
    out.out_features = out_;
    out.weight_bytes = codes_->bytes() + scales_->bytes();
    out.activation_dtype = dtype_;
    out.device = device_;
    out.format = format_;
    return out;
  }

  // SiLU-and-multiply: in fp8_small_gemm's epilogue up to 16 rows, above in the pass that scales cuBLASLt's sums.
  uint32_t fused_epilogues(int64_t) const noexcept override {
    return out_ % 2 == 0 ? kEpilogueSiluMul : kEpilogueNone;
  }

  // x's codes and row scales, then the f32 sums of up to kSumRows rows, then cuBLASLt's scratch.
  size_t workspace_bytes(int64_t max_rows) const noexcept override {
    const size_t rows = size_t(std::max<int64_t>(max_rows, 0));
    return aligned(rows * size_t(in_)) + aligned(rows * sizeof(float)) + sums_bytes(max_rows) + kLtWorkspaceBytes;
  }

  Status forward(const LinearCall& call, const ExecContext& exec) noexcept override {
    return guard([&]() -> Status {
      const TensorView& x = call.x;
      const TensorView& y = call.y;
      const int64_t rows = x.rank == 2 ? x.shape[0] : -1;
      const auto matrix = [&](const TensorView& v, int64_t columns) {
        return v.rank == 2 && v.shape[0] == rows && v.shape[1] == columns && v.strides[1] == 1 &&
               v.strides[0] >= columns && v.dtype == dtype_ && v.device == device_ && v.data != nullptr;
      };
      const bool silu_mul = call.epilogue == kEpilogueSiluMul;
      const int64_t y_columns = silu_mul ? out_ / 2 : out_;
      if (rows < 0 || rows > std::numeric_limits<int>::max() || !matrix(x, in_) || !matrix(y, y_columns))
        return Status(ErrorCode::invalid_argument,
                      fmt::format("fp8: linear [{} x {}]: expected x [rows, {}] and y [rows, {}] in {} on cuda:{} "
                                  "with contiguous rows",
                                  out_, in_, in_, y_columns, dtype_name(dtype_), device_.index));
      if (call.epilogue != kEpilogueNone && (call.epilogue & ~fused_epilogues(rows)) != 0)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("fp8: forward: epilogue mask {:#x} asked for {} rows; this layer fuses {:#x} there",
                                  call.epilogue, rows, fused_epilogues(rows)));
      if (rows == 0) return {};
      const size_t needed = workspace_bytes(rows);
      const size_t given = exec.workspace.data != nullptr ? exec.workspace.nbytes() : 0;
      if (given < needed || reinterpret_cast<uintptr_t>(exec.workspace.data) % kAlign != 0)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("fp8: linear [{} x {}], {} rows: needs {} bytes of 256-byte aligned workspace "
                                  "(workspace_bytes(); {} given)",
                                  out_, in_, rows, needed, given));
      auto* x_codes = static_cast<uint8_t*>(exec.workspace.data);
      auto* x_scales = reinterpret_cast<float*>(x_codes + aligned(size_t(rows) * size_t(in_)));
      auto* sums = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(x_scales) + aligned(size_t(rows) * sizeof(float)));
      void* lt_workspace = reinterpret_cast<uint8_t*>(sums) + sums_bytes(rows);
      const auto stream = static_cast<cudaStream_t>(exec.stream);
      const cuda::DType x_dtype = dtype_ == DType::bf16 ? cuda::DType::bf16 : cuda::DType::f16;
      // At one or two rows the small GEMM rounds x to e4m3 itself (fp8_small_gemm_quantizes says where it pays).
      const bool quantize_in_gemm = small(rows) && cuda::fp8_small_gemm_quantizes(int(rows), int(in_), x.data, x.strides[0]);
      if (!quantize_in_gemm)
        check_cuda(cuda::quantize_rows_e4m3(x.data, x_dtype, x.strides[0], int(rows), int(in_), x_codes, x_scales,
                                            input_scale_, stream),
                   "quantize_rows_e4m3");
      if (small(rows)) {
        cuda::Fp8SmallGemm gemm;
        if (quantize_in_gemm) {
          gemm.x16 = x.data;
          gemm.x16_stride = x.strides[0];
          gemm.static_scale = input_scale_;
        } else {
          gemm.x_codes = x_codes;
          gemm.x_scales = x_scales;
        }
        gemm.w_codes = codes_->data();
        gemm.w_scales = scales_->data();
        gemm.m = int(rows);
        gemm.n = int(out_);
        gemm.k = int(in_);
        gemm.silu_mul = silu_mul;
        gemm.y = y.data;
        gemm.y_stride = y.strides[0];
        gemm.y_dtype = x_dtype;
        check_cuda(cuda::fp8_small_gemm(gemm, stream), "fp8_small_gemm");
      } else {
        const cuda::DType y_dtype = dtype_ == DType::bf16 ? cuda::DType::bf16 : cuda::DType::f16;
        const size_t y_row_bytes = size_t(y.strides[0]) * (dtype_bits(dtype_) / 8);
        for (int64_t first = 0; first < rows; first += kSumRows) {
          const int count = int(std::min(kSumRows, rows - first));
          plan(count).run(lt_->get(), codes_->data(), x_codes + size_t(first) * size_t(in_), sums, lt_workspace,
                          stream);
          void* y_rows = static_cast<uint8_t*>(y.data) + size_t(first) * y_row_bytes;
          check_cuda(silu_mul ? cuda::apply_fp8_scales_silu_mul(sums, count, int(out_), x_scales + first,
                                                                scales_->data(), y_rows, y_dtype, y.strides[0], stream)
                              : cuda::apply_fp8_scales(sums, count, int(out_), x_scales + first, scales_->data(),
                                                       y_rows, y_dtype, y.strides[0], stream),
                     "apply_fp8_scales");
        }
      }
      return {};
    });
  }

  // e4m3(code) * scale from the device copy, so what is checked is what runs.
  Status dequantize(std::span<float> weight) const noexcept override {
    return guard([&]() -> Status {
      if (weight.size() != size_t(out_ * in_))
        return Status(ErrorCode::invalid_argument,
                      fmt::format("fp8: dequantize: expected room for {} x {} values, found {}", out_, in_,
                                  weight.size()));
      cuda::DeviceScope scope(device_.index, "fp8");
      const std::vector<uint8_t> codes = codes_->download();
      const std::vector<float> scales = scales_->download();
      for (int64_t j = 0; j < out_; ++j)
        for (int64_t c = 0; c < in_; ++c)
          weight[size_t(j * in_ + c)] = ref::e4m3_to_f32(codes[size_t(j * in_ + c)]) * scales[size_t(j)];
      return {};
    });
  }

 private:
  // Whether fp8_small_gemm takes `rows` rows (its codes and the workspace are 256-byte aligned).
  bool small(int64_t rows) const {
    return rows >= 1 && rows <= cuda::fp8_small_gemm_max_rows &&
           cuda::fp8_small_gemm_supported(int(rows), int(in_), codes_->data(), codes_->data());
  }

  size_t sums_bytes(int64_t rows) const { return aligned(size_t(std::clamp<int64_t>(rows, 0, kSumRows)) * size_t(out_) * 4); }

  // The plan for `rows` rows, made once.
  Fp8Plan& plan(int rows) {
    std::lock_guard<std::mutex> lock(plans_mutex_);
    auto& slot = plans_[rows];
    if (!slot) slot = std::make_unique<Fp8Plan>(lt_->get(), rows, int(out_), int(in_));
    return *slot;
  }

  Device device_;
  DType dtype_;
  int64_t in_, out_;
  float input_scale_;
  std::unique_ptr<cuda::DeviceArray<uint8_t>> codes_;
  std::unique_ptr<cuda::DeviceArray<float>> scales_;
  std::shared_ptr<LtHandle> lt_;
  std::string format_;
  std::mutex plans_mutex_;
  std::map<int, std::unique_ptr<Fp8Plan>> plans_;
};

}  // namespace

Status cuda_probe(const Device& device) noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device.index < 0 || device.index >= count) {
    cudaGetLastError();
    return Status(ErrorCode::unsupported,
                  fmt::format("fp8: cuda:{} is not a CUDA device here ({} found)", device.index, count));
  }
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device.index);
  if (major * 10 + minor < 89)
    return Status(ErrorCode::unsupported,
                  fmt::format("fp8: cuda:{} is sm_{}{}; FP8 tensor cores need sm_89 or newer (Ada, Hopper); run "
                              "this folder with --device cpu, or quantize it another way (lite auto_awq)",
                              device.index, major, minor));
  return {};
}

PluginPtr<LinearLayer> make_cuda_linear(const LibraryPin& library, const HostFp8Layer& layer, Device device,
                                        DType activation_dtype) {
  if (activation_dtype != DType::bf16 && activation_dtype != DType::f16)
    throw Error(ErrorCode::unsupported,
                fmt::format("fp8: load_linear: the CUDA path computes in bf16 or f16; {} activations were asked for",
                            dtype_name(activation_dtype)));
  if (layer.in_features % 16 != 0 || layer.in_features > (1 << 30))
    throw Error(ErrorCode::unsupported,
                fmt::format("fp8: load_linear: in_features {} is not a multiple of 16, which FP8 GEMMs need",
                            layer.in_features));
  return make_pinned<Fp8CudaLinear>(library, layer, device, activation_dtype);
}

}  // namespace hostrun::fp8
