#include "llama_model.hpp"

#include "llama_common/llama_weights.hpp"

#include <fmt/format.h>

#include <memory>

namespace hostrun::llama_cpu {

namespace {

// Image embeddings the engine keeps for a request: host memory, f32.
class HostEmbeddings final : public DeviceTensor {
 public:
  HostEmbeddings(int64_t rows, int64_t hidden)
      : values_(std::make_unique<float[]>(size_t(rows) * size_t(hidden))), rows_(rows), hidden_(hidden) {}
  TensorView view() const noexcept override {
    return TensorView::contiguous(values_.get(), DType::f32, {rows_, hidden_}, Device{DeviceKind::cpu, 0});
  }

 private:
  std::unique_ptr<float[]> values_;
  int64_t rows_;
  int64_t hidden_;
};

}  // namespace

LlamaCpuModel::LlamaCpuModel(const CreateContext& context)
    : log_(plugin_logger(context, "llama_cpu")),
      library_(context.library),
      threads_(int(context.settings->get_int("threads"))) {}

Status LlamaCpuModel::load(const LoadContext& context) noexcept {
  return guard([&] { load_checked(context); });
}

Status LlamaCpuModel::step(const StepInput& input, StepOutput& output) noexcept {
  return guard([&] { run_step(input, output); });
}

std::vector<LinearInputGroup> LlamaCpuModel::linear_input_groups() const noexcept {
  try {
    return loaded_ ? llama::llama_linear_input_groups(config_) : std::vector<LinearInputGroup>{};
  } catch (...) {  // out of memory: no groups, and the quantizer says so
    return {};
  }
}

Status LlamaCpuModel::observe_linear_inputs(std::span<const TokenId> tokens, CalibrationObserver& observer) noexcept {
  return guard([&] { observe(tokens, observer); });
}

ModelInfo LlamaCpuModel::info() const noexcept {
  ModelInfo out;
  if (loaded_) {
    try {
      out = llama::llama_model_info(config_, eos_ids_, bos_id_);
    } catch (...) {
      // Out of memory copying the eos list: report the device, not a half-filled shape.
      out = ModelInfo{};
    }
    out.weight_bytes = weights_.bytes;
  }
  out.device = Device{DeviceKind::cpu, 0};
  out.activation_dtype = DType::f32;
  return out;
}

Result<MemoryReport> LlamaCpuModel::memory() const noexcept {
  // The CPU has no device memory of its own to report; the engine sizes the
  // KV cache from its CPU budget instead.
  MemoryReport report;
  report.weight_bytes = weights_.bytes;
  return report;
}

Status LlamaCpuModel::allocate_kv_cache(int32_t num_blocks, int32_t block_tokens) noexcept {
  return guard([&]() -> Status {
    if (!loaded_) return Status(ErrorCode::invalid_argument, "llama_cpu: allocate_kv_cache before load");
    if (num_blocks <= 0 || block_tokens <= 0)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("llama_cpu: allocate_kv_cache: expected positive block count and block size, found {} "
                                "blocks of {} tokens",
                                num_blocks, block_tokens));
    const KvShape shape{int32_t(config_.num_hidden_layers), int32_t(config_.num_key_value_heads),
                        int32_t(config_.head_dim), block_tokens, DType::f32};
    kv_cache_.reset();  // the old cache's memory goes back before the new one is taken
    auto made = kv_policy_->allocate(shape, num_blocks, Device{DeviceKind::cpu, 0});
    if (!made) return made.status();
    kv_cache_ = std::move(made.value());
    if (!kv_cache_) return Status(ErrorCode::internal, "llama_cpu: the KV cache policy returned no cache");
    block_tokens_ = block_tokens;
    log_.info("KV cache: {} blocks of {} tokens, {} MiB ({})", num_blocks, block_tokens, kv_cache_->bytes() >> 20,
              kv_policy_->format().name);
    return {};
  });
}

Result<PluginPtr<DeviceTensor>> LlamaCpuModel::allocate_embeddings(int64_t rows) noexcept {
  if (!loaded_) return Status(ErrorCode::invalid_argument, "llama_cpu: allocate_embeddings before load");
  if (rows <= 0)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("llama_cpu: allocate_embeddings: expected a positive row count, found {}", rows));
  return guard_result<PluginPtr<DeviceTensor>>([&] {
    return PluginPtr<DeviceTensor>(make_pinned<HostEmbeddings>(library_, rows, int64_t(config_.hidden_size)));
  });
}

}  // namespace hostrun::llama_cpu
