// test_rtn_int8: a quantizer that exists to prove the quantizer path end to
// end (tests only: never installed, never in a manifest users see).
//
// load_linear reads the dense weights of its prefixes (f32, bf16 or f16),
// stacks them along the output dimension and quantizes each output row to
// int8 with one f32 scale, symmetric round-to-nearest:
//
//   scale[o] = max_i |W[o, i]| / 127          (0 for a row of zeros)
//   q[o, i]  = nearest integer to W[o, i] / scale[o], ties to even, in [-127, 127]
//
// forward computes y = x (q * scale)^T in f32 on the CPU, dequantizing a tile
// of output rows at a time into the caller's workspace and multiplying with
// ref::gemm; dequantize() gives q * scale. It fuses no epilogue and answers
// quantize() with unsupported (it only quantizes at load).
#include <hostrun/sdk.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "ref/dtype.hpp"
#include "ref/gemm.hpp"

namespace {

using hostrun::DeviceKind;
using hostrun::DType;
using hostrun::ErrorCode;
using hostrun::Status;
using hostrun::TensorView;

constexpr const char* kFormat = "rtn-int8";
// Output rows dequantized at once: the workspace holds [kTileRows, in_features] f32.
constexpr int64_t kTileRows = 32;

Status probe(const hostrun::Device& device) noexcept {
  if (device.kind != DeviceKind::cpu)
    return Status(ErrorCode::unsupported, fmt::format("test_rtn_int8 computes on the CPU; {}:{} was asked for",
                                                      hostrun::device_kind_name(device.kind), device.index));
  return {};
}

class RtnLinear final : public hostrun::LinearLayer {
 public:
  RtnLinear(std::vector<int8_t> values, std::vector<float> scales, int64_t in_features)
      : values_(std::move(values)),
        scales_(std::move(scales)),
        in_features_(in_features),
        out_features_(int64_t(scales_.size())) {}

  hostrun::LinearInfo info() const noexcept override {
    hostrun::LinearInfo out;
    out.in_features = in_features_;
    out.out_features = out_features_;
    out.weight_bytes = values_.size() + scales_.size() * sizeof(float);
    out.activation_dtype = DType::f32;
    out.device = hostrun::Device{DeviceKind::cpu, 0};
    out.format = kFormat;  // fits the small-string buffer: no allocation in this noexcept call
    return out;
  }

  uint32_t fused_epilogues(int64_t) const noexcept override { return hostrun::kEpilogueNone; }

  size_t workspace_bytes(int64_t) const noexcept override {
    return size_t(std::min(kTileRows, out_features_) * in_features_) * sizeof(float);
  }

  Status forward(const hostrun::LinearCall& call, const hostrun::ExecContext& exec) noexcept override {
    if (call.epilogue != hostrun::kEpilogueNone)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("test_rtn_int8: forward: epilogue mask {:#x} asked for, but this layer fuses none",
                                call.epilogue));
    const int64_t rows = call.x.rank == 2 ? call.x.shape[0] : -1;
    if (Status s = hostrun::check_linear_view("test_rtn_int8: forward", "x", call.x, rows, in_features_,
                                              DType::f32, {});
        !s)
      return s;
    if (Status s = hostrun::check_linear_view("test_rtn_int8: forward", "y", call.y, rows, out_features_,
                                              DType::f32, {});
        !s)
      return s;
    const size_t needed = workspace_bytes(rows);
    const size_t given = exec.workspace.data ? exec.workspace.nbytes() : 0;
    if (given < needed || exec.workspace.device.kind != DeviceKind::cpu)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("test_rtn_int8: forward: needs {} bytes of host workspace (workspace_bytes()), the "
                                "caller gave {} on {}",
                                needed, given, hostrun::device_kind_name(exec.workspace.device.kind)));
    auto* tile = static_cast<float*>(exec.workspace.data);
    const auto* x = call.x.as<const float>();
    float* y = call.y.as<float>();
    for (int64_t first = 0; first < out_features_; first += kTileRows) {
      const int64_t count = std::min(kTileRows, out_features_ - first);
      dequantize_rows(first, count, tile);
      // One row of x at a time: rows may sit at any stride, and ref::gemm's
      // sums do not depend on how many rows it is given.
      for (int64_t r = 0; r < rows; ++r)
        hostrun::ref::gemm(x + r * call.x.strides[0], tile, hostrun::ref::DType::f32, 1, size_t(count),
                           size_t(in_features_), y + r * call.y.strides[0] + first);
    }
    return {};
  }

  Status dequantize(std::span<float> weight) const noexcept override {
    if (int64_t(weight.size()) != out_features_ * in_features_)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("test_rtn_int8: dequantize: expected room for {} x {} values, found {}", out_features_,
                                in_features_, weight.size()));
    dequantize_rows(0, out_features_, weight.data());
    return {};
  }

 private:
  void dequantize_rows(int64_t first, int64_t count, float* out) const noexcept {
    for (int64_t o = first; o < first + count; ++o)
      for (int64_t i = 0; i < in_features_; ++i)
        *out++ = float(values_[size_t(o * in_features_ + i)]) * scales_[size_t(o)];
  }

  std::vector<int8_t> values_;  // [out_features, in_features]
  std::vector<float> scales_;   // [out_features]
  int64_t in_features_;
  int64_t out_features_;
};

// One prefix's dense weight as f32 [out, in].
std::vector<float> dense_weight(const hostrun::WeightSource& weights, const std::string& prefix, int64_t& out_features,
                                int64_t& in_features) {
  const std::string name = prefix + ".weight";
  auto found = weights.tensor(name);
  if (!found) throw hostrun::Error(found.status());
  const TensorView& view = found.value();
  hostrun::ref::DType stored;
  switch (view.dtype) {
    case DType::f32: stored = hostrun::ref::DType::f32; break;
    case DType::bf16: stored = hostrun::ref::DType::bf16; break;
    case DType::f16: stored = hostrun::ref::DType::f16; break;
    default:
      throw hostrun::Error(ErrorCode::unsupported,
                           fmt::format("test_rtn_int8: {}: tensor '{}': expected f32, bf16 or f16, found {}",
                                       weights.directory(), name, hostrun::dtype_name(view.dtype)));
  }
  if (view.rank != 2 || !view.is_contiguous() || view.device.kind != DeviceKind::cpu)
    throw hostrun::Error(ErrorCode::corrupt_data,
                         fmt::format("test_rtn_int8: {}: tensor '{}': expected a [out, in] matrix in host memory, "
                                     "found rank {}",
                                     weights.directory(), name, view.rank));
  out_features = view.shape[0];
  in_features = view.shape[1];
  std::vector<float> values(size_t(view.numel()));
  hostrun::ref::convert_to_f32(view.data, stored, values.size(), values.data());
  return values;
}

class RtnQuantizer final : public hostrun::Quantizer {
 public:
  explicit RtnQuantizer(const hostrun::CreateContext& context) : library_(context.library) {}

  std::string format() const noexcept override { return kFormat; }

  hostrun::Result<hostrun::PluginPtr<hostrun::LinearLayer>> load_linear(const hostrun::LinearLoad& load) noexcept override {
    return hostrun::guard_result<hostrun::PluginPtr<hostrun::LinearLayer>>([&] { return load_checked(load); });
  }

  Status quantize(const hostrun::QuantizeJob&) noexcept override {
    return Status(ErrorCode::unsupported, "test_rtn_int8 quantizes at load only; it writes no checkpoints");
  }

 private:
  hostrun::PluginPtr<hostrun::LinearLayer> load_checked(const hostrun::LinearLoad& load) const {
    if (load.weights == nullptr || load.prefixes.empty())
      throw hostrun::Error(ErrorCode::invalid_argument, "test_rtn_int8: load_linear needs a weight source and prefixes");
    if (Status s = probe(load.device); !s) throw hostrun::Error(s.code(), "test_rtn_int8: load_linear: " + s.message());
    if (load.activation_dtype != DType::f32)
      throw hostrun::Error(ErrorCode::unsupported,
                           fmt::format("test_rtn_int8: load_linear: computes in f32; {} activations were asked for",
                                       hostrun::dtype_name(load.activation_dtype)));
    if (load.max_rows <= 0)
      throw hostrun::Error(ErrorCode::invalid_argument,
                           fmt::format("test_rtn_int8: load_linear: max_rows must be positive, found {}", load.max_rows));
    std::vector<int8_t> values;
    std::vector<float> scales;
    int64_t in_features = -1;
    for (const std::string& prefix : load.prefixes) {
      int64_t rows = 0, columns = 0;
      const std::vector<float> weight = dense_weight(*load.weights, prefix, rows, columns);
      if (in_features >= 0 && columns != in_features)
        throw hostrun::Error(ErrorCode::invalid_argument,
                             fmt::format("test_rtn_int8: {}: fused prefixes {} must share in_features; '{}' has {}, the "
                                         "first had {}",
                                         load.weights->directory(), fmt::join(load.prefixes, ", "), prefix, columns,
                                         in_features));
      in_features = columns;
      if (!std::all_of(weight.begin(), weight.end(), [](float w) { return std::isfinite(w); }))
        throw hostrun::Error(ErrorCode::corrupt_data, fmt::format("test_rtn_int8: {}: tensor '{}.weight' holds a NaN or "
                                                                  "an infinity",
                                                                  load.weights->directory(), prefix));
      for (int64_t o = 0; o < rows; ++o) quantize_row(weight.data() + o * columns, columns, values, scales);
    }
    return hostrun::make_pinned<RtnLinear>(library_, std::move(values), std::move(scales), in_features);
  }

  // std::nearbyint rounds in the current rounding mode, which nothing in the
  // process changes from the default: to nearest, ties to even.
  static void quantize_row(const float* row, int64_t columns, std::vector<int8_t>& values, std::vector<float>& scales) {
    float largest = 0.0f;
    for (int64_t i = 0; i < columns; ++i) largest = std::max(largest, std::abs(row[i]));
    const float scale = largest / 127.0f;
    scales.push_back(scale);
    for (int64_t i = 0; i < columns; ++i) {
      const float q = scale == 0.0f ? 0.0f : std::nearbyint(row[i] / scale);
      values.push_back(int8_t(std::clamp(q, -127.0f, 127.0f)));
    }
  }

  hostrun::LibraryPin library_;
};

const hostrun::RoleEntry kRoles[] = {
    hostrun::role_entry_without_settings<hostrun::Quantizer, RtnQuantizer>(&probe)};

}  // namespace

HOSTRUN_PLUGIN("test_rtn_int8", "0.1.0",
               "Test fixture: int8 weights, one f32 scale per output row, quantized at load (round to nearest even)",
               kRoles)
