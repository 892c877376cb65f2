// fp8: reads FP8 (e4m3) checkpoints as vLLM, AutoFP8 and llm-compressor
// write them (fp8_checkpoint.hpp has the format), so a folder quantized
// elsewhere loads as it is, and writes them (`hostrun lite fp8`, lite_fp8.hpp).
//
// load_linear fuses several prefixes along the output dimension: their code
// rows stacked, their scales as one per output channel (a per-tensor scale
// repeated over its rows, which is exact). With static activation scales the
// fused layer takes the largest of its prefixes' input scales, as vLLM does:
// the prefixes read one input, and a larger scale saturates nothing more.
//
// On the CPU the layers compute in f32 with kernels/ref's fp8_linear: each
// input row quantized to e4m3 with its own scale (or the static one), the
// products of codes summed in f32, the two scales applied once; nothing is
// dequantized ahead. On a CUDA GPU of sm_89 or newer (builds with CUDA) the
// same arithmetic runs on FP8 tensor cores (fp8_cuda_linear.hpp).
#include <hostrun/sdk.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fp8_checkpoint.hpp"
#include "lite_fp8.hpp"
#include "ref/dtype.hpp"
#include "ref/fp8_linear.hpp"
#if HOSTRUN_FP8_CUDA
#include "fp8_cuda_linear.hpp"
#endif

namespace {

using hostrun::DeviceKind;
using hostrun::DType;
using hostrun::ErrorCode;
using hostrun::Status;
using hostrun::TensorView;

constexpr const char* kFormat = "fp8";

Status probe(const hostrun::Device& device) noexcept {
  if (device.kind == DeviceKind::cpu) return {};
#if HOSTRUN_FP8_CUDA
  return hostrun::fp8::cuda_probe(device);
#else
  return Status(ErrorCode::unsupported,
                fmt::format("fp8: this build computes FP8 layers on the CPU only (built without CUDA); {}:{} was "
                            "asked for",
                            hostrun::device_kind_name(device.kind), device.index));
#endif
}

// The fused layer: codes [out, in] row-major and one scale per output channel.
class Fp8CpuLinear final : public hostrun::LinearLayer {
 public:
  Fp8CpuLinear(std::vector<uint8_t> codes, std::vector<float> scales, int64_t in_features, float input_scale)
      : codes_(std::move(codes)), scales_(std::move(scales)), in_(in_features), out_(int64_t(scales_.size())),
        input_scale_(input_scale) {
    format_ = input_scale > 0.0f ? "fp8-e4m3-static" : "fp8-e4m3";
  }

  hostrun::LinearInfo info() const noexcept override {
    hostrun::LinearInfo out;
    out.in_features = in_;
    out.out_features = out_;
    out.weight_bytes = codes_.size() + scales_.size() * sizeof(float);
    out.activation_dtype = DType::f32;
    out.device = hostrun::Device{DeviceKind::cpu, 0};
    out.format = format_;  // within the small-string buffer, no allocation
    return out;
  }

  uint32_t fused_epilogues(int64_t) const noexcept override { return hostrun::kEpilogueNone; }

  size_t workspace_bytes(int64_t max_rows) const noexcept override {
    return hostrun::ref::fp8_linear_workspace_floats(size_t(std::max<int64_t>(max_rows, 0)), size_t(in_)) *
           sizeof(float);
  }

  Status forward(const hostrun::LinearCall& call, const hostrun::ExecContext& exec) noexcept override {
    if (call.epilogue != hostrun::kEpilogueNone)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("fp8: forward: epilogue mask {:#x} asked for, but this layer fuses none", call.epilogue));
    const int64_t rows = call.x.rank == 2 ? call.x.shape[0] : -1;
    if (Status s = hostrun::check_linear_view("fp8: forward", "x", call.x, rows, in_, DType::f32, {}); !s) return s;
    if (Status s = hostrun::check_linear_view("fp8: forward", "y", call.y, rows, out_, DType::f32, {}); !s) return s;
    const size_t needed = workspace_bytes(rows);
    const size_t given = exec.workspace.data ? exec.workspace.nbytes() : 0;
    if (given < needed || exec.workspace.device.kind != DeviceKind::cpu)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("fp8: forward: needs {} bytes of host workspace (workspace_bytes()), the caller gave {} "
                                "on {}",
                                needed, given, hostrun::device_kind_name(exec.workspace.device.kind)));
    const hostrun::ref::Fp8Rows io{call.x.as<const float>(), size_t(call.x.strides[0]), call.y.as<float>(),
                                   size_t(call.y.strides[0]), size_t(rows)};
    hostrun::ref::fp8_linear(io, size_t(in_), {codes_.data(), scales_.data(), true}, size_t(out_), input_scale_,
                             static_cast<float*>(exec.workspace.data));
    return {};
  }

  Status dequantize(std::span<float> weight) const noexcept override {
    if (weight.size() != codes_.size())
      return Status(ErrorCode::invalid_argument, fmt::format("fp8: dequantize: expected room for {} x {} values, found {}",
                                                             out_, in_, weight.size()));
    for (int64_t j = 0; j < out_; ++j)
      for (int64_t c = 0; c < in_; ++c)
        weight[size_t(j * in_ + c)] = hostrun::ref::e4m3_to_f32(codes_[size_t(j * in_ + c)]) * scales_[size_t(j)];
    return {};
  }

 private:
  std::vector<uint8_t> codes_;  // [out, in]
  std::vector<float> scales_;   // [out]
  int64_t in_, out_;
  float input_scale_;           // 0: each row its own
  std::string format_;
};

class Fp8Quantizer final : public hostrun::Quantizer {
 public:
  explicit Fp8Quantizer(const hostrun::CreateContext& context) : library_(context.library) {}

  std::string format() const noexcept override { return kFormat; }

  hostrun::Result<hostrun::PluginPtr<hostrun::LinearLayer>> load_linear(const hostrun::LinearLoad& load) noexcept override {
    return hostrun::guard_result<hostrun::PluginPtr<hostrun::LinearLayer>>([&] { return load_checked(load); });
  }

  Status quantize(const hostrun::QuantizeJob& job) noexcept override { return hostrun::fp8::run_lite_fp8(job); }

 private:
  hostrun::PluginPtr<hostrun::LinearLayer> load_checked(const hostrun::LinearLoad& load) const {
    if (load.weights == nullptr || load.prefixes.empty())
      throw hostrun::Error(ErrorCode::invalid_argument, "fp8: load_linear needs a weight source and prefixes");
    if (Status s = probe(load.device); !s) throw hostrun::Error(s.code(), "fp8: load_linear: " + s.message());
    if (load.device.kind == DeviceKind::cpu && load.activation_dtype != DType::f32)
      throw hostrun::Error(ErrorCode::unsupported,
                           fmt::format("fp8: load_linear: the CPU path computes in f32; {} activations were asked for",
                                       hostrun::dtype_name(load.activation_dtype)));
    const hostrun::fp8::Fp8Config config = hostrun::fp8::read_fp8_config(*load.weights);
    std::vector<uint8_t> codes;
    std::vector<float> scales;
    int64_t in = -1;
    float input_scale = 0.0f;
    for (const std::string& prefix : load.prefixes) {
      const hostrun::fp8::Fp8Prefix p = hostrun::fp8::read_fp8_prefix(*load.weights, prefix, config);
      if (in >= 0 && p.in_features != in)
        throw hostrun::Error(ErrorCode::invalid_argument,
                             fmt::format("fp8: {}: fused prefixes {} must share in_features; '{}' has {}, the first had {}",
                                         load.weights->directory(), fmt::join(load.prefixes, ", "), prefix,
                                         p.in_features, in));
      in = p.in_features;
      const auto* bytes = p.codes.as<const uint8_t>();
      codes.insert(codes.end(), bytes, bytes + p.out_features * p.in_features);
      scales.insert(scales.end(), p.channel_scales.begin(), p.channel_scales.end());
      input_scale = std::max(input_scale, p.input_scale);
    }
#if HOSTRUN_FP8_CUDA
    if (load.device.kind == DeviceKind::cuda)
      return hostrun::fp8::make_cuda_linear(library_, {std::move(codes), std::move(scales), in, input_scale},
                                            load.device, load.activation_dtype);
#endif
    return hostrun::make_pinned<Fp8CpuLinear>(library_, std::move(codes), std::move(scales), in, input_scale);
  }

  hostrun::LibraryPin library_;
};

const hostrun::RoleEntry kRoles[] = {hostrun::role_entry_without_settings<hostrun::Quantizer, Fp8Quantizer>(&probe)};

}  // namespace

HOSTRUN_PLUGIN("fp8", "0.1.0",
               "FP8 e4m3 checkpoints as vLLM and AutoFP8 write them (per-tensor or per-channel weight scales, dynamic "
               "or static activation scales); CPU layers, and CUDA ones on FP8 tensor cores; lite fp8 writes them",
               kRoles)
