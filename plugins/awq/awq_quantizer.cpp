// awq: reads AutoAWQ's 4-bit "GEMM" checkpoints as AutoAWQ, LMDeploy and vLLM
// write them (kernels/ref/awq.hpp has the format), so a folder quantized
// elsewhere loads as it is.
//
// load_linear reads `<prefix>.qweight` (int32 [in, out/8]), `.qzeros` (int32
// [in/group, out/8]) and `.scales` (f16 [in/group, out]) of each prefix and
// fuses several prefixes along the output dimension by concatenating their
// packed columns (each prefix's out_features is a multiple of 8, so words
// never straddle two of them). config.json's quantization_config must say
// quant_method "awq", bits 4, zero_point true, version "gemm" (or "GEMM") and a
// group_size of 32, 64 or 128 that the tensors' shapes agree with.
//
// On the CPU the layers compute in f32 with kernels/ref's awq_gemm on the
// packed weights (nothing dequantized ahead); on a CUDA GPU (builds with
// CUDA) in bf16/f16 with kernels/cuda's W4A16 GEMM (awq_cuda_linear.hpp).
// Neither fuses an epilogue yet. quantize() is `hostrun lite auto_awq`
// (auto_awq.hpp): calibration, AWQ's scale and clipping searches, and an
// AutoAWQ folder written.
#include <hostrun/json_bounds.hpp>
#include <hostrun/sdk.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "auto_awq.hpp"
#include "ref/awq.hpp"
#if HOSTRUN_AWQ_CUDA
#include "awq_cuda_linear.hpp"
#endif

namespace {

using hostrun::DeviceKind;
using hostrun::DType;
using hostrun::ErrorCode;
using hostrun::Status;
using hostrun::TensorView;
using nlohmann::json;

constexpr const char* kFormat = "awq";

Status probe(const hostrun::Device& device) noexcept {
  if (device.kind == DeviceKind::cpu) return {};
#if HOSTRUN_AWQ_CUDA
  return hostrun::awq::cuda_probe(device);
#else
  return Status(ErrorCode::unsupported,
                fmt::format("awq: this build computes AWQ layers on the CPU only (built without CUDA); {}:{} was "
                            "asked for",
                            hostrun::device_kind_name(device.kind), device.index));
#endif
}

// The checkpoint's quantization_config, checked: the group size it names.
int64_t awq_group_size(const hostrun::WeightSource& weights) {
  const std::string source = weights.directory() + "/config.json";
  auto parsed = hostrun::parse_json_bounded<json>(weights.config_json(), hostrun::JsonLimits{}, source);
  if (!parsed) throw hostrun::Error(parsed.status());
  const json& root = parsed.value();
  const auto fail = [&](const std::string& what) {
    throw hostrun::Error(ErrorCode::invalid_argument,
                         fmt::format("awq: {}: quantization_config: {}; this plugin reads AutoAWQ's GEMM format "
                                     "(quant_method \"awq\", bits 4, zero_point true, version \"gemm\", group_size "
                                     "32, 64 or 128)",
                                     source, what));
  };
  if (!root.is_object() || !root.contains("quantization_config") || !root["quantization_config"].is_object())
    fail("missing (not an AWQ folder)");
  const json& q = root["quantization_config"];
  const auto text = [&](const char* key) -> std::string {
    if (!q.contains(key) || !q[key].is_string()) fail(fmt::format("'{}' missing or not a string", key));
    std::string value = q[key].get<std::string>();
    std::transform(value.begin(), value.end(), value.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    return value;
  };
  const auto integer = [&](const char* key) -> int64_t {
    if (!q.contains(key) || !q[key].is_number_integer()) fail(fmt::format("'{}' missing or not an integer", key));
    return q[key].get<int64_t>();
  };
  if (const std::string method = text("quant_method"); method != "awq")
    fail(fmt::format("quant_method is \"{}\"", method));
  if (const int64_t bits = integer("bits"); bits != 4) fail(fmt::format("bits is {}", bits));
  if (!q.contains("zero_point") || !q["zero_point"].is_boolean() || !q["zero_point"].get<bool>())
    fail("zero_point is not true (symmetric AWQ is not this format)");
  if (const std::string version = text("version"); version != "gemm")
    fail(fmt::format("version is \"{}\" (GEMV and Marlin layouts pack differently)", version));
  const int64_t group = integer("group_size");
  if (group != 32 && group != 64 && group != 128) fail(fmt::format("group_size is {}", group));
  return group;
}

// One prefix's three tensors, checked against each other and the group size.
struct PrefixTensors {
  TensorView qweight, qzeros, scales;
  int64_t in_features = 0, out_features = 0;
};

PrefixTensors prefix_tensors(const hostrun::WeightSource& weights, const std::string& prefix, int64_t group) {
  PrefixTensors t;
  const auto get = [&](const char* suffix, DType dtype) {
    const std::string name = prefix + suffix;
    auto found = weights.tensor(name);
    if (!found) throw hostrun::Error(found.status());
    const TensorView& view = found.value();
    if (view.dtype != dtype || view.rank != 2 || !view.is_contiguous() || view.device.kind != DeviceKind::cpu)
      throw hostrun::Error(ErrorCode::corrupt_data,
                           fmt::format("awq: {}: tensor '{}': expected a {} matrix in host memory, found {} rank {}",
                                       weights.directory(), name, hostrun::dtype_name(dtype),
                                       hostrun::dtype_name(view.dtype), view.rank));
    return view;
  };
  t.qweight = get(".qweight", DType::i32);
  t.qzeros = get(".qzeros", DType::i32);
  t.scales = get(".scales", DType::f16);
  t.in_features = t.qweight.shape[0];
  t.out_features = t.qweight.shape[1] * 8;
  if (t.in_features % group != 0 || t.qzeros.shape[0] != t.in_features / group || t.qzeros.shape[1] != t.qweight.shape[1] ||
      t.scales.shape[0] != t.in_features / group || t.scales.shape[1] != t.out_features)
    throw hostrun::Error(ErrorCode::corrupt_data,
                         fmt::format("awq: {}: '{}': shapes qweight [{}, {}], qzeros [{}, {}], scales [{}, {}] do not "
                                     "fit group_size {} (expected [in, out/8], [in/group, out/8], [in/group, out])",
                                     weights.directory(), prefix, t.qweight.shape[0], t.qweight.shape[1],
                                     t.qzeros.shape[0], t.qzeros.shape[1], t.scales.shape[0], t.scales.shape[1],
                                     group));
  return t;
}

// The fused layer: the packed tensors of its prefixes side by side.
class AwqCpuLinear final : public hostrun::LinearLayer {
 public:
  AwqCpuLinear(std::vector<int32_t> qweight, std::vector<int32_t> qzeros, std::vector<uint16_t> scales,
               int64_t in_features, int64_t out_features, int64_t group)
      : qweight_(std::move(qweight)), qzeros_(std::move(qzeros)), scales_(std::move(scales)) {
    layer_ = {qweight_.data(), qzeros_.data(), scales_.data(), size_t(in_features), size_t(out_features),
              size_t(group)};
    format_ = fmt::format("awq-w4-g{}", group);
  }

  hostrun::LinearInfo info() const noexcept override {
    hostrun::LinearInfo out;
    out.in_features = int64_t(layer_.in_features);
    out.out_features = int64_t(layer_.out_features);
    out.weight_bytes = qweight_.size() * 4 + qzeros_.size() * 4 + scales_.size() * 2;
    out.activation_dtype = DType::f32;
    out.device = hostrun::Device{DeviceKind::cpu, 0};
    out.format = format_;  // "awq-w4-g128": within the small-string buffer, no allocation
    return out;
  }

  uint32_t fused_epilogues(int64_t) const noexcept override { return hostrun::kEpilogueNone; }

  size_t workspace_bytes(int64_t) const noexcept override {
    return hostrun::ref::awq_gemm_workspace_floats(layer_) * sizeof(float);
  }

  Status forward(const hostrun::LinearCall& call, const hostrun::ExecContext& exec) noexcept override {
    if (call.epilogue != hostrun::kEpilogueNone)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("awq: forward: epilogue mask {:#x} asked for, but this layer fuses none", call.epilogue));
    const int64_t rows = call.x.rank == 2 ? call.x.shape[0] : -1;
    if (Status s = hostrun::check_linear_view("awq: forward", "x", call.x, rows, int64_t(layer_.in_features),
                                              DType::f32, {});
        !s)
      return s;
    if (Status s = hostrun::check_linear_view("awq: forward", "y", call.y, rows, int64_t(layer_.out_features),
                                              DType::f32, {});
        !s)
      return s;
    const size_t needed = workspace_bytes(rows);
    const size_t given = exec.workspace.data ? exec.workspace.nbytes() : 0;
    if (given < needed || exec.workspace.device.kind != DeviceKind::cpu)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("awq: forward: needs {} bytes of host workspace (workspace_bytes()), the caller gave {} "
                                "on {}",
                                needed, given, hostrun::device_kind_name(exec.workspace.device.kind)));
    hostrun::ref::awq_gemm(layer_, call.x.as<const float>(), size_t(call.x.strides[0]), size_t(rows),
                           call.y.as<float>(), size_t(call.y.strides[0]), static_cast<float*>(exec.workspace.data));
    return {};
  }

  Status dequantize(std::span<float> weight) const noexcept override {
    if (weight.size() != layer_.out_features * layer_.in_features)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("awq: dequantize: expected room for {} x {} values, found {}", layer_.out_features,
                                layer_.in_features, weight.size()));
    hostrun::ref::awq_dequantize(layer_, weight.data());
    return {};
  }

 private:
  std::vector<int32_t> qweight_;   // [in, out/8]
  std::vector<int32_t> qzeros_;    // [in/group, out/8]
  std::vector<uint16_t> scales_;   // [in/group, out]
  hostrun::ref::AwqWeights layer_;
  std::string format_;
};

// Rows of `src` ([rows, src_cols] elements of T) placed at column `at` of
// `dst` ([rows, dst_cols]).
template <typename T>
void place_columns(const T* src, int64_t rows, int64_t src_cols, std::vector<T>& dst, int64_t dst_cols, int64_t at) {
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst.data() + r * dst_cols + at, src + r * src_cols, size_t(src_cols) * sizeof(T));
}

class AwqQuantizer final : public hostrun::Quantizer {
 public:
  explicit AwqQuantizer(const hostrun::CreateContext& context) : library_(context.library) {}

  std::string format() const noexcept override { return kFormat; }

  hostrun::Result<hostrun::PluginPtr<hostrun::LinearLayer>> load_linear(const hostrun::LinearLoad& load) noexcept override {
    return hostrun::guard_result<hostrun::PluginPtr<hostrun::LinearLayer>>([&] { return load_checked(load); });
  }

  Status quantize(const hostrun::QuantizeJob& job) noexcept override { return hostrun::awq::run_auto_awq(job); }

 private:
  hostrun::PluginPtr<hostrun::LinearLayer> load_checked(const hostrun::LinearLoad& load) const {
    if (load.weights == nullptr || load.prefixes.empty())
      throw hostrun::Error(ErrorCode::invalid_argument, "awq: load_linear needs a weight source and prefixes");
    if (Status s = probe(load.device); !s) throw hostrun::Error(s.code(), "awq: load_linear: " + s.message());
    if (load.device.kind == DeviceKind::cpu && load.activation_dtype != DType::f32)
      throw hostrun::Error(ErrorCode::unsupported,
                           fmt::format("awq: load_linear: the CPU path computes in f32; {} activations were asked for",
                                       hostrun::dtype_name(load.activation_dtype)));
    const int64_t group = awq_group_size(*load.weights);
    std::vector<PrefixTensors> parts;
    int64_t out_total = 0;
    for (const std::string& prefix : load.prefixes) {
      parts.push_back(prefix_tensors(*load.weights, prefix, group));
      if (parts.back().in_features != parts.front().in_features)
        throw hostrun::Error(ErrorCode::invalid_argument,
                             fmt::format("awq: {}: fused prefixes {} must share in_features; '{}' has {}, the first had {}",
                                         load.weights->directory(), fmt::join(load.prefixes, ", "), prefix,
                                         parts.back().in_features, parts.front().in_features));
      out_total += parts.back().out_features;
    }
    const int64_t in = parts.front().in_features, groups = in / group;
    std::vector<int32_t> qweight(size_t(in * out_total / 8)), qzeros(size_t(groups * out_total / 8));
    std::vector<uint16_t> scales(size_t(groups * out_total));
    int64_t at = 0;
    for (const PrefixTensors& t : parts) {
      place_columns(t.qweight.as<const int32_t>(), in, t.out_features / 8, qweight, out_total / 8, at / 8);
      place_columns(t.qzeros.as<const int32_t>(), groups, t.out_features / 8, qzeros, out_total / 8, at / 8);
      place_columns(t.scales.as<const uint16_t>(), groups, t.out_features, scales, out_total, at);
      at += t.out_features;
    }
#if HOSTRUN_AWQ_CUDA
    if (load.device.kind == DeviceKind::cuda)
      return hostrun::awq::make_cuda_linear(
          library_,
          {qweight.data(), qzeros.data(), scales.data(), size_t(in), size_t(out_total), size_t(group)},
          load.device, load.activation_dtype);
#endif
    return hostrun::make_pinned<AwqCpuLinear>(library_, std::move(qweight), std::move(qzeros), std::move(scales), in,
                                              out_total, group);
  }

  hostrun::LibraryPin library_;
};

const hostrun::RoleEntry kRoles[] = {hostrun::role_entry_without_settings<hostrun::Quantizer, AwqQuantizer>(&probe)};

}  // namespace

HOSTRUN_PLUGIN("awq", "0.3.0",
               "AutoAWQ 4-bit GEMM checkpoints as they are (qweight / qzeros / scales, group 32/64/128); CPU and CUDA "
               "layers; auto_awq writes them",
               kRoles)
