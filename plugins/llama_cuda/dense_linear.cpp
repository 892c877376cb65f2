#include "dense_linear.hpp"

#include <fmt/format.h>

#include <limits>
#include <vector>

#include "cuda/small_gemm.hpp"
#include "errors.hpp"
#include "ref/dtype.hpp"

namespace hostrun::llama_cuda {

namespace {

cuda::DType kernel_dtype(DType dtype) { return dtype == DType::f16 ? cuda::DType::f16 : cuda::DType::bf16; }

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace

DenseGemm::DenseGemm(DType dtype, int64_t small_gemm_max_rows, cudaStream_t stream)
    : dtype_(dtype), small_gemm_max_rows_(small_gemm_max_rows) {
  if (cublasCreate(&cublas_) != CUBLAS_STATUS_SUCCESS) fail(ErrorCode::internal, "cublasCreate failed");
  bind(stream);
}

DenseGemm::~DenseGemm() {
  if (cublas_) cublasDestroy(cublas_);
}

void DenseGemm::bind(cudaStream_t stream) {
  if (stream == bound_) return;
  if (const cublasStatus_t status = cublasSetStream(cublas_, stream); status != CUBLAS_STATUS_SUCCESS)
    fail(ErrorCode::internal, fmt::format("cublasSetStream failed: {}", cublasGetStatusString(status)));
  bound_ = stream;
}

bool DenseGemm::small(int64_t m, int64_t k, const void* weight) const {
  return m <= small_gemm_max_rows_ && k <= std::numeric_limits<int>::max() &&
         cuda::small_gemm_supported(kernel_dtype(dtype_), int(m), int(k), nullptr, weight);
}

void DenseGemm::multiply(const void* x, int64_t x_stride, const void* weight, int m, int n, int k, void* y,
                         int64_t y_stride, bool f32_out, cudaStream_t stream) {
  if (small(m, k, weight) && x_stride == k && y_stride == n && aligned16(x)) {
    check_cuda(cuda::small_gemm(x, weight, kernel_dtype(dtype_), m, n, k, y, f32_out, stream), "small_gemm");
    return;
  }
  bind(stream);
  // Row-major y[m, n] = x[m, k] . weight[n, k]^T is column-major y^T = weight^T . x^T.
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t in = dtype_ == DType::f16 ? CUDA_R_16F : CUDA_R_16BF;
  const cublasStatus_t status =
      cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, weight, in, k, x, in, int(x_stride), &beta, y,
                   f32_out ? CUDA_R_32F : in, int(y_stride), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS)
    fail(ErrorCode::internal,
         fmt::format("cublasGemmEx (m {}, n {}, k {}) failed: {}", m, n, k, cublasGetStatusString(status)));
}

DenseLinear::DenseLinear(DenseGemm& gemm, const void* weight, int64_t out_features, int64_t in_features, Device device)
    : gemm_(gemm), weight_(weight), out_features_(out_features), in_features_(in_features), device_(device) {}

LinearInfo DenseLinear::info() const noexcept {
  LinearInfo info;
  info.in_features = in_features_;
  info.out_features = out_features_;
  info.weight_bytes = size_t(in_features_) * size_t(out_features_) * (dtype_bits(gemm_.dtype()) / 8);
  info.activation_dtype = gemm_.dtype();
  info.device = device_;
  info.format = std::string(dtype_name(gemm_.dtype()));
  return info;
}

uint32_t DenseLinear::fused_epilogues(int64_t rows) const noexcept {
  return gemm_.small(rows, in_features_, weight_) ? (kEpilogueRope | kEpilogueSiluMul) : kEpilogueNone;
}

size_t DenseLinear::workspace_bytes(int64_t max_rows) const noexcept {
  (void)max_rows;
  return 0;
}

Status DenseLinear::forward(const LinearCall& call, const ExecContext& exec) noexcept {
  return guard([&]() -> Status {
    const TensorView& x = call.x;
    const TensorView& y = call.y;
    const int64_t rows = x.rank == 2 ? x.shape[0] : -1;
    const bool silu_mul = (call.epilogue & kEpilogueSiluMul) != 0;
    const int64_t y_columns = silu_mul ? out_features_ / 2 : out_features_;
    auto matrix = [&](const TensorView& v, int64_t columns) {
      return v.rank == 2 && v.shape[0] == rows && v.shape[1] == columns && v.strides[1] == 1 &&
             v.strides[0] >= columns && v.dtype == gemm_.dtype() && v.device == device_ && v.data != nullptr;
    };
    if (rows < 0 || rows > std::numeric_limits<int>::max() || !matrix(x, in_features_) || !matrix(y, y_columns))
      return Status(ErrorCode::invalid_argument,
                    fmt::format("llama_cuda: linear [{} x {}]: expected x [rows, {}] and y [rows, {}] in {} on cuda:{} "
                                "with contiguous rows",
                                out_features_, in_features_, in_features_, y_columns, dtype_name(gemm_.dtype()),
                                device_.index));
    const uint32_t unfused = call.epilogue & ~fused_epilogues(rows);
    if (unfused != 0)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("llama_cuda: linear [{} x {}]: epilogue bits {:#x} are not fused for {} rows",
                                out_features_, in_features_, unfused, rows));
    const auto stream = static_cast<cudaStream_t>(exec.stream);
    if (rows == 0) return {};
    if (call.epilogue == kEpilogueNone) {
      gemm_.multiply(x.data, x.strides[0], weight_, int(rows), int(out_features_), int(in_features_), y.data,
                     y.strides[0], false, stream);
      return {};
    }
    if (!x.is_contiguous() || !y.is_contiguous() || !aligned16(x.data) || !aligned16(y.data))
      return Status(ErrorCode::invalid_argument,
                    fmt::format("llama_cuda: linear [{} x {}]: a fused epilogue needs contiguous, 16-byte aligned x "
                                "and y",
                                out_features_, in_features_));
    const cuda::DType dtype = kernel_dtype(gemm_.dtype());
    if (silu_mul) {
      check_cuda(cuda::small_gemm_silu_mul(x.data, weight_, dtype, int(rows), int(y_columns), int(in_features_), y.data,
                                           stream),
                 "small_gemm_silu_mul");
    } else {
      const LinearRope& rope = call.rope;
      check_cuda(cuda::small_gemm_rope(x.data, weight_, dtype, int(rows), int(out_features_), int(in_features_),
                                       rope.rotated_heads, rope.head_dim, rope.positions, rope.inv_freq, y.data, stream),
                 "small_gemm_rope");
    }
    return {};
  });
}

Status DenseLinear::dequantize(std::span<float> weight) const noexcept {
  return guard([&]() -> Status {
    const size_t count = size_t(out_features_) * size_t(in_features_);
    if (weight.size() != count)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("llama_cuda: dequantize: expected room for {} x {} floats, found {}", out_features_,
                                in_features_, weight.size()));
    std::vector<std::byte> stored(count * (dtype_bits(gemm_.dtype()) / 8));
    check_cuda(cudaMemcpy(stored.data(), weight_, stored.size(), cudaMemcpyDeviceToHost), "reading a weight");
    ref::convert_to_f32(stored.data(), gemm_.dtype() == DType::f16 ? ref::DType::f16 : ref::DType::bf16, count,
                        weight.data());
    return {};
  });
}

}  // namespace hostrun::llama_cuda
