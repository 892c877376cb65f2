// load(): config.json (and generation_config.json beside it), checks of what
// this plugin supports, the dense weights converted to f32, and the linear
// layers from the quantizer (or dense ones of our own).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "llama_common/llama_rope.hpp"
#include "dense_linear.hpp"
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

PluginPtr<LinearLayer> LlamaCpuModel::load_linear(const LoadContext& context, const std::vector<std::string>& prefixes,
                                                   int64_t in_features, const std::vector<int64_t>& out_features) const {
  const WeightSource& weights = *context.weights;
  const int64_t total_out = std::accumulate(out_features.begin(), out_features.end(), int64_t(0));
  if (context.quantizer == nullptr) {
    std::vector<float> stacked;
    stacked.reserve(size_t(total_out * in_features));
    for (size_t i = 0; i < prefixes.size(); ++i) {
      std::vector<float> rows = take_tensor(weights, prefixes[i] + ".weight", {out_features[i], in_features});
      stacked.insert(stacked.end(), rows.begin(), rows.end());
    }
    return make_pinned<DenseLinear>(LibraryPin{}, std::move(stacked), in_features, threads_);
  }
  LinearLoad request;
  request.weights = &weights;
  request.prefixes = prefixes;
  request.device = Device{DeviceKind::cpu, 0};
  request.activation_dtype = DType::f32;
  request.max_rows = kLinearRows;
  const std::string which = fmt::format("{}", fmt::join(prefixes, " + "));
  auto made = context.quantizer->load_linear(request);
  if (!made)
    throw Error(made.status().code(), fmt::format("llama_cpu: the quantizer ({}) could not build {}: {}",
                                                  context.quantizer->format(), which, made.status().message()));
  PluginPtr<LinearLayer> layer = std::move(made.value());
  if (!layer) fail(ErrorCode::internal, fmt::format("the quantizer returned no layer for {}", which));
  const LinearInfo info = layer->info();
  if (info.in_features != in_features || info.out_features != total_out || info.activation_dtype != DType::f32 ||
      info.device.kind != DeviceKind::cpu)
    fail(ErrorCode::invalid_argument,
         fmt::format("the quantizer's layer for {}: expected {} -> {} features, f32 activations on the CPU, found {} "
                     "-> {}, {} on {}",
                     which, in_features, total_out, info.in_features, info.out_features,
                     dtype_name(info.activation_dtype), device_kind_name(info.device.kind)));
  return layer;
}

void LlamaCpuModel::load_checked(const LoadContext& context) {
  if (loaded_) fail(ErrorCode::invalid_argument, "load() called twice; make a new model object instead");
  if (context.weights == nullptr) fail(ErrorCode::invalid_argument, "load() needs a weight source");
  if (context.device.kind != DeviceKind::cpu)
    fail(ErrorCode::unsupported,
         fmt::format("this plugin runs on the CPU; device cuda:{} was asked for (use a CUDA model plugin)",
                     context.device.index));
  if (context.activation_dtype != DType::f32)
    fail(ErrorCode::unsupported, fmt::format("this plugin computes in f32; activation dtype {} was asked for "
                                             "(engine.activation_dtype)",
                                             dtype_name(context.activation_dtype)));
  if (context.tensor_parallel_size != 1)
    fail(ErrorCode::unsupported,
         fmt::format("tensor parallelism is not supported (tensor_parallel_size {})", context.tensor_parallel_size));
  if (context.kv_policy == nullptr)
    fail(ErrorCode::invalid_argument, "a causal LM needs a KV cache policy (the manifest's [kv_cache] table)");
  throw_if_error(check_kv_format(context.kv_policy->format(), context.device, DType::f32));
  const WeightSource& weights = *context.weights;
  const std::string directory = weights.directory();
  // A quantized folder is read only through a quantizer; its embeddings,
  // norms and LM head are still dense tensors, read below like any others.
  auto checkpoint = llama::read_llama_checkpoint(weights, context.quantizer != nullptr);
  throw_if_error(checkpoint.status());
  llama::LlamaConfig config = checkpoint->config;

  const int64_t hidden = config.hidden_size;
  const int64_t intermediate = config.intermediate_size;
  LlamaWeights loaded;
  loaded.embed_tokens = take_tensor(weights, config.names.embed_tokens(), {config.vocab_size, hidden});
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string prefix = config.names.layer(l);
    LayerWeights layer;
    layer.input_norm = take_tensor(weights, prefix + "input_layernorm.weight", {hidden});
    layer.qkv = load_linear(context,
                            {prefix + "self_attn.q_proj", prefix + "self_attn.k_proj", prefix + "self_attn.v_proj"},
                            hidden, {config.q_size(), config.kv_size(), config.kv_size()});
    layer.o_proj = load_linear(context, {prefix + "self_attn.o_proj"}, config.q_size(), {hidden});
    layer.post_norm = take_tensor(weights, prefix + "post_attention_layernorm.weight", {hidden});
    layer.gate_up = load_linear(context, {prefix + "mlp.gate_proj", prefix + "mlp.up_proj"}, hidden,
                                {intermediate, intermediate});
    layer.down_proj = load_linear(context, {prefix + "mlp.down_proj"}, intermediate, {hidden});
    loaded.layers.push_back(std::move(layer));
  }
  loaded.final_norm = take_tensor(weights, config.names.final_norm(), {hidden});
  // Tied checkpoints may still carry lm_head.weight; HF ignores it then, and so do we.
  if (!config.tie_word_embeddings) loaded.lm_head = take_tensor(weights, config.names.lm_head, {config.vocab_size, hidden});

  size_t bytes = (loaded.embed_tokens.size() + loaded.final_norm.size() + loaded.lm_head.size()) * sizeof(float);
  size_t workspace = 0;
  for (const auto& layer : loaded.layers) {
    bytes += (layer.input_norm.size() + layer.post_norm.size()) * sizeof(float);
    for (const LinearLayer* linear : {layer.qkv.get(), layer.o_proj.get(), layer.gate_up.get(), layer.down_proj.get()}) {
      bytes += linear->info().weight_bytes;
      workspace = std::max(workspace, linear->workspace_bytes(kLinearRows));
    }
  }
  loaded.bytes = bytes;

  const ref::RopeParams rope = llama::rope_params(config);

  rope_ = ref::make_rope_table(rope);
  // HF's eager attention multiplies the scores by head_dim ** -0.5.
  softmax_scale_ = float(1.0 / std::sqrt(double(config.head_dim)));
  linear_workspace_.memory = workspace > 0 ? std::make_unique<std::byte[]>(workspace) : nullptr;
  linear_workspace_.bytes = workspace;
  linear_format_ = context.quantizer ? context.quantizer->format() : "f32";
  weights_ = std::move(loaded);
  config_ = std::move(config);
  eos_ids_ = std::move(checkpoint->eos_ids);
  bos_id_ = checkpoint->bos_id;
  kv_policy_ = context.kv_policy;
  loaded_ = true;
  log_.info("loaded {}: {} layers, hidden {}, {} heads ({} KV) x {}, vocab {}{}{}; linear layers {}; {} MiB of "
            "weights, {} thread(s)",
            directory, config_.num_hidden_layers, config_.hidden_size, config_.num_attention_heads,
            config_.num_key_value_heads, config_.head_dim, config_.vocab_size,
            config_.tie_word_embeddings ? ", tied embeddings" : "", config_.rope_scaling ? ", llama3 RoPE scaling" : "",
            linear_format_, weights_.bytes >> 20, threads_);
}

}  // namespace hostrun::llama_cpu
