// load(): config.json (and generation_config.json beside it), checks of what
// this plugin supports, and the weights converted to f32.
#include <fmt/format.h>

#include <cmath>
#include <filesystem>

#include "llama_model.hpp"
#include "ref/dtype.hpp"

namespace hostrun::llama_cpu {

namespace {

[[noreturn]] void fail(ErrorCode code, std::string message) { throw Error(code, "llama_cpu: " + std::move(message)); }
void throw_if_error(const Status& status) {
  if (!status) throw Error(status);
}

std::string shape_text(const TensorView& view) {
  std::string out = "[";
  for (uint8_t r = 0; r < view.rank; ++r) out += (r ? ", " : "") + std::to_string(view.shape[r]);
  return out + "]";
}

// One tensor of the checkpoint as f32, after checking its dtype and shape.
std::vector<float> take_tensor(const WeightSource& weights, const std::string& name, std::vector<int64_t> shape) {
  auto found = weights.tensor(name);
  if (!found) throw Error(found.status());  // not_found already names the tensor and the directory
  const TensorView& view = found.value();
  ref::DType stored;
  switch (view.dtype) {
    case DType::f32: stored = ref::DType::f32; break;
    case DType::bf16: stored = ref::DType::bf16; break;
    case DType::f16: stored = ref::DType::f16; break;
    default:
      fail(ErrorCode::unsupported, fmt::format("{}: tensor '{}': expected f32, bf16 or f16, found {}",
                                               weights.directory(), name, dtype_name(view.dtype)));
  }
  bool same_shape = view.rank == shape.size();
  for (size_t r = 0; same_shape && r < shape.size(); ++r) same_shape = view.shape[r] == shape[r];
  if (!same_shape) {
    TensorView expected;
    expected.rank = uint8_t(shape.size());
    for (size_t r = 0; r < shape.size(); ++r) expected.shape[r] = shape[r];
    fail(ErrorCode::corrupt_data, fmt::format("{}: tensor '{}': expected shape {}, found {}", weights.directory(), name,
                                              shape_text(expected), shape_text(view)));
  }
  if (view.device.kind != DeviceKind::cpu || !view.is_contiguous() || view.data == nullptr)
    fail(ErrorCode::invalid_argument,
         fmt::format("{}: tensor '{}': expected a contiguous view in host memory", weights.directory(), name));
  std::vector<float> out(size_t(view.numel()));
  ref::convert_to_f32(view.data, stored, out.size(), out.data());
  return out;
}

}  // namespace

void LlamaCpuModel::load_checked(const LoadContext& context) {
  if (loaded_) fail(ErrorCode::invalid_argument, "load() called twice; make a new model object instead");
  if (context.weights == nullptr) fail(ErrorCode::invalid_argument, "load() needs a weight source");
  if (context.device.kind != DeviceKind::cpu)
    fail(ErrorCode::unsupported,
         fmt::format("this plugin runs on the CPU; device cuda:{} was asked for (use a CUDA model plugin)",
                     context.device.index));
  if (context.tensor_parallel_size != 1)
    fail(ErrorCode::unsupported,
         fmt::format("tensor parallelism is not supported (tensor_parallel_size {})", context.tensor_parallel_size));
  if (context.quantizer != nullptr)
    fail(ErrorCode::unsupported, "a quantizer was given; this plugin runs the checkpoint's own f32/bf16/f16 weights");
  if (context.kv_policy == nullptr)
    fail(ErrorCode::invalid_argument, "a causal LM needs a KV cache policy (the manifest's [kv_cache] table)");
  const WeightSource& weights = *context.weights;
  const std::string directory = weights.directory();
  auto dense = llama::read_llama_checkpoint(weights, context.quantizer != nullptr);
  throw_if_error(dense.status());
  llama::LlamaConfig config = dense->config;

  const int64_t hidden = config.hidden_size;
  const int64_t intermediate = config.intermediate_size;
  LlamaWeights loaded;
  loaded.embed_tokens = take_tensor(weights, "model.embed_tokens.weight", {config.vocab_size, hidden});
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string prefix = fmt::format("model.layers.{}.", l);
    LayerWeights layer;
    layer.input_norm = take_tensor(weights, prefix + "input_layernorm.weight", {hidden});
    layer.qkv = take_tensor(weights, prefix + "self_attn.q_proj.weight", {config.q_size(), hidden});
    for (const char* name : {"self_attn.k_proj.weight", "self_attn.v_proj.weight"}) {
      std::vector<float> rows = take_tensor(weights, prefix + name, {config.kv_size(), hidden});
      layer.qkv.insert(layer.qkv.end(), rows.begin(), rows.end());
    }
    layer.o_proj = take_tensor(weights, prefix + "self_attn.o_proj.weight", {hidden, config.q_size()});
    layer.post_norm = take_tensor(weights, prefix + "post_attention_layernorm.weight", {hidden});
    layer.gate_up = take_tensor(weights, prefix + "mlp.gate_proj.weight", {intermediate, hidden});
    std::vector<float> up = take_tensor(weights, prefix + "mlp.up_proj.weight", {intermediate, hidden});
    layer.gate_up.insert(layer.gate_up.end(), up.begin(), up.end());
    layer.down_proj = take_tensor(weights, prefix + "mlp.down_proj.weight", {hidden, intermediate});
    loaded.layers.push_back(std::move(layer));
  }
  loaded.final_norm = take_tensor(weights, "model.norm.weight", {hidden});
  // Tied checkpoints may still carry lm_head.weight; HF ignores it then, and so do we.
  if (!config.tie_word_embeddings) loaded.lm_head = take_tensor(weights, "lm_head.weight", {config.vocab_size, hidden});

  size_t floats = loaded.embed_tokens.size() + loaded.final_norm.size() + loaded.lm_head.size();
  for (const auto& layer : loaded.layers)
    floats += layer.input_norm.size() + layer.qkv.size() + layer.o_proj.size() + layer.post_norm.size() +
              layer.gate_up.size() + layer.down_proj.size();
  loaded.bytes = floats * sizeof(float);

  ref::RopeParams rope;
  rope.head_dim = size_t(config.head_dim);
  rope.theta = config.rope_theta;
  if (config.rope_scaling) {
    rope.scaling_type = ref::RopeScalingType::llama3;
    rope.factor = config.rope_scaling->factor;
    rope.low_freq_factor = config.rope_scaling->low_freq_factor;
    rope.high_freq_factor = config.rope_scaling->high_freq_factor;
    rope.original_max_position_embeddings = double(config.rope_scaling->original_max_position_embeddings);
  }

  rope_ = ref::make_rope_table(rope);
  // HF's eager attention multiplies the scores by head_dim ** -0.5.
  softmax_scale_ = float(1.0 / std::sqrt(double(config.head_dim)));
  weights_ = std::move(loaded);
  config_ = std::move(config);
  eos_ids_ = std::move(dense->eos_ids);
  bos_id_ = dense->bos_id;
  kv_policy_ = context.kv_policy;
  loaded_ = true;
  log_.info("loaded {}: {} layers, hidden {}, {} heads ({} KV) x {}, vocab {}{}{}; {} MiB of f32 weights, {} thread(s)",
            directory, config_.num_hidden_layers, config_.hidden_size, config_.num_attention_heads,
            config_.num_key_value_heads, config_.head_dim, config_.vocab_size,
            config_.tie_word_embeddings ? ", tied embeddings" : "", config_.rope_scaling ? ", llama3 RoPE scaling" : "",
            weights_.bytes >> 20, threads_);
}

}  // namespace hostrun::llama_cpu
