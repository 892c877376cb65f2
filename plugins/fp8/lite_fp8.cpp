#include "lite_fp8.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ref/dtype.hpp"
#include "ref/fp8_linear.hpp"

namespace hostrun::fp8 {

namespace {

using nlohmann::ordered_json;

[[noreturn]] void fail(ErrorCode code, const std::string& message) { throw Error(code, "lite fp8: " + message); }

TensorView host_matrix(void* data, DType dtype, int64_t rows, int64_t columns) {
  return TensorView::contiguous(data, dtype, {rows, columns});
}

// A linear weight [out, in] as f32.
std::vector<float> read_weight(const WeightSource& source, const std::string& name, int64_t& out, int64_t& in) {
  auto found = source.tensor(name);
  if (!found) throw Error(found.status());
  const TensorView& view = found.value();
  const ref::DType dtype = view.dtype == DType::f32 ? ref::DType::f32 : view.dtype == DType::f16 ? ref::DType::f16
                                                                                                  : ref::DType::bf16;
  if ((view.dtype != DType::f32 && view.dtype != DType::f16 && view.dtype != DType::bf16) || view.rank != 2 ||
      !view.is_contiguous() || view.device.kind != DeviceKind::cpu)
    fail(ErrorCode::invalid_argument, fmt::format("{}: '{}' is {} rank {}; expected an f32, bf16 or f16 matrix",
                                                  source.directory(), name, dtype_name(view.dtype), view.rank));
  out = view.shape[0];
  in = view.shape[1];
  std::vector<float> values(size_t(out * in));
  ref::convert_to_f32(view.data, dtype, values.size(), values.data());
  return values;
}

// ref::quantize_weight_e4m3 over blocks of rows on all cores (rows are
// independent). Returns the first row holding NaN or infinity, or -1.
int64_t quantize_weight(const std::vector<float>& w, int64_t out, int64_t in, std::vector<uint8_t>& codes,
                        std::vector<float>& scales) {
  codes.resize(w.size());
  scales.resize(size_t(out));
  const int64_t workers = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, std::max<int64_t>(out / 64, 1));
  std::vector<std::thread> threads;
  const auto join_all = [&] {
    for (auto& thread : threads) thread.join();
  };
  try {
    for (int64_t t = 0; t < workers; ++t) {
      const int64_t begin = out * t / workers, end = out * (t + 1) / workers;
      threads.emplace_back([&, begin, end] {
        ref::quantize_weight_e4m3(w.data() + begin * in, size_t(end - begin), size_t(in), codes.data() + begin * in,
                                  scales.data() + begin);
      });
    }
  } catch (...) {  // a thread that could not start: the started ones must still be joined
    join_all();
    throw;
  }
  join_all();
  for (int64_t j = 0; j < out; ++j)
    if (!std::isfinite(scales[size_t(j)])) return j;
  return -1;
}

std::string config_with_quantization(const WeightSource& source) {
  ordered_json config = ordered_json::parse(source.config_json(), nullptr, false);
  if (!config.is_object()) fail(ErrorCode::corrupt_data, source.directory() + "/config.json is not a JSON object");
  if (config.contains("quantization_config"))
    fail(ErrorCode::invalid_argument,
         fmt::format("{} is already quantized (config.json has quantization_config); lite fp8 starts from 16- or "
                     "32-bit weights",
                     source.directory()));
  config["quantization_config"] = {{"quant_method", "fp8"},
                                   {"activation_scheme", "dynamic"},
                                   {"fmt", "e4m3"},
                                   {"ignored_layers", {"lm_head"}}};
  return config.dump(2) + "\n";
}

void lite_fp8(const QuantizeJob& job) {
  if (!job.source || !job.model || !job.output)
    fail(ErrorCode::invalid_argument, "a quantize job needs a source checkpoint, a loaded model and an output");
  if (job.bits != 8) fail(ErrorCode::invalid_argument, fmt::format("{}-bit weights asked for; FP8 is 8-bit", job.bits));
  const WeightSource& source = *job.source;
  const std::string config_text = config_with_quantization(source);  // refuses a quantized source first
  std::vector<std::string> linears;
  for (const LinearInputGroup& group : job.model->linear_input_groups())
    for (const CalibratedLinear& linear : group.linears) linears.push_back(linear.prefix);
  if (linears.empty())
    fail(ErrorCode::unsupported, "the model reports no linear layers (Model::linear_input_groups), so there is "
                                 "nothing to quantize");

  std::set<std::string> written;
  const auto progress = [&](const char* stage, size_t done, size_t total) {
    if (job.progress) job.progress->on_progress(stage, int64_t(done), int64_t(total));
  };
  progress("quantizing linears", 0, linears.size());
  for (size_t i = 0; i < linears.size(); ++i) {
    const std::string name = linears[i] + ".weight";
    if (!written.insert(name).second) fail(ErrorCode::internal, fmt::format("the model lists '{}' twice", linears[i]));
    int64_t out = 0, in = 0;
    const std::vector<float> w = read_weight(source, name, out, in);
    std::vector<uint8_t> codes;
    std::vector<float> scales;
    if (const int64_t row = quantize_weight(w, out, in, codes, scales); row >= 0)
      fail(ErrorCode::invalid_argument,
           fmt::format("{}: '{}': row {} holds NaN or infinity, which FP8 cannot scale", source.directory(), name, row));
    if (Status s = job.output->add_tensor(name, host_matrix(codes.data(), DType::f8_e4m3, out, in)); !s) throw Error(s);
    if (Status s = job.output->add_tensor(linears[i] + ".weight_scale", host_matrix(scales.data(), DType::f32, out, 1));
        !s)
      throw Error(s);
    progress("quantizing linears", i + 1, linears.size());
  }

  std::vector<std::string> rest;
  for (const std::string& name : source.tensor_names())
    if (!written.count(name)) rest.push_back(name);
  progress("writing", 0, rest.size());
  for (size_t i = 0; i < rest.size(); ++i) {
    auto view = source.tensor(rest[i]);
    if (!view) throw Error(view.status());
    if (Status s = job.output->add_tensor(rest[i], *view); !s) throw Error(s);
    progress("writing", i + 1, rest.size());
  }
  if (Status s = job.output->write_file("config.json", config_text); !s) throw Error(s);
}

}  // namespace

Status run_lite_fp8(const QuantizeJob& job) noexcept {
  return guard([&] { lite_fp8(job); });
}

}  // namespace hostrun::fp8
