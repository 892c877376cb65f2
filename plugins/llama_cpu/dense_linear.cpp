#include "dense_linear.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "parallel_gemm.hpp"

namespace hostrun::llama_cpu {

DenseLinear::DenseLinear(std::vector<float> weight, int64_t in_features, int threads)
    : weight_(std::move(weight)),
      in_features_(in_features),
      out_features_(int64_t(weight_.size()) / in_features),
      threads_(threads) {}

LinearInfo DenseLinear::info() const noexcept {
  LinearInfo out;
  out.in_features = in_features_;
  out.out_features = out_features_;
  out.weight_bytes = weight_.size() * sizeof(float);
  out.activation_dtype = DType::f32;
  out.device = Device{DeviceKind::cpu, 0};
  out.format = "f32";  // fits the small-string buffer: no allocation in this noexcept call
  return out;
}

Status DenseLinear::forward(const LinearCall& call, const ExecContext&) noexcept {
  if (call.epilogue != kEpilogueNone)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("llama_cpu dense linear: epilogue mask {:#x} asked for, but this layer fuses none "
                              "(fused_epilogues() is 0)",
                              call.epilogue));
  const int64_t rows = call.x.rank == 2 ? call.x.shape[0] : -1;
  if (Status s = hostrun::check_linear_view("llama_cpu dense linear", "x", call.x, rows, in_features_,
                                            DType::f32, {});
      !s)
    return s;
  if (Status s = hostrun::check_linear_view("llama_cpu dense linear", "y", call.y, rows, out_features_,
                                            DType::f32, {});
      !s)
    return s;
  return guard([&] {
    const auto* x = call.x.as<const float>();
    float* y = call.y.as<float>();
    if (call.x.strides[0] == in_features_ && call.y.strides[0] == out_features_) {
      parallel_gemm(x, weight_.data(), size_t(rows), size_t(out_features_), size_t(in_features_), y, threads_);
      return;
    }
    // Strided rows: one product per row (the same bits: parallel_gemm's sums
    // do not depend on the row count).
    for (int64_t r = 0; r < rows; ++r)
      parallel_gemm(x + r * call.x.strides[0], weight_.data(), 1, size_t(out_features_), size_t(in_features_),
                    y + r * call.y.strides[0], threads_);
  });
}

Status DenseLinear::dequantize(std::span<float> weight) const noexcept {
  if (weight.size() != weight_.size())
    return Status(ErrorCode::invalid_argument,
                  fmt::format("llama_cpu dense linear: dequantize: expected room for {} x {} = {} values, found {}",
                              out_features_, in_features_, weight_.size(), weight.size()));
  std::copy(weight_.begin(), weight_.end(), weight.begin());
  return {};
}

}  // namespace hostrun::llama_cpu
