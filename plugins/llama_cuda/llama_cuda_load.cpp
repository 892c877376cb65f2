// load(): config.json (and generation_config.json), the checks of what this
// plugin supports, the weights on the GPU (linear layers dense, or the
// quantizer's), the workspace; allocate_kv_cache(); and the plain Model
// methods.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>

#include "llama_common/llama_rope.hpp"
#include "llama_common/llama_weights.hpp"
#include "errors.hpp"
#include "llama_cuda_model.hpp"
#include "ref/dtype.hpp"
#include "ref/rope.hpp"

namespace hostrun::llama_cuda {

namespace {

size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

std::string shape_text(std::span<const int64_t> shape) {
  std::string text;
  for (int64_t d : shape) text += (text.empty() ? "" : ", ") + std::to_string(d);
  return text;
}

// One checkpoint tensor of a fused linear layer: its prefix
// ("model.layers.3.self_attn.q_proj") and output rows.
struct LinearPart {
  std::string prefix;
  int64_t out_features = 0;
};

// Puts a checkpoint on the GPU: tensors kept dense go, in the activation
// dtype (converted on the host when stored otherwise), into one device block
// taken front to back; a linear layer is a DenseLinear over that block, or,
// given a quantizer, the quantizer's layer.
class WeightLoader {
 public:
  WeightLoader(const WeightSource& weights, Quantizer* quantizer, DenseGemm& gemm, Device device, DType dtype,
               int64_t max_rows, std::byte* block, size_t block_bytes)
      : weights_(weights), quantizer_(quantizer), gemm_(gemm), device_(device), dtype_(dtype), max_rows_(max_rows),
        cursor_(block), end_(block + block_bytes) {}

  // Bytes the dense block needs for `config` (every linear layer too when dense_linear).
  static size_t block_bytes(const llama::LlamaConfig& config, DType dtype, bool dense_linear) {
    const size_t e = dtype_bits(dtype) / 8;
    const size_t hidden = size_t(config.hidden_size), inter = size_t(config.intermediate_size);
    const size_t q = size_t(config.q_size()), kv = size_t(config.kv_size());
    const size_t norm = align256(hidden * e);
    const size_t embed = align256(size_t(config.vocab_size) * hidden * e);
    const size_t linear = align256((q + 2 * kv) * hidden * e) + align256(hidden * q * e) +
                          align256(2 * inter * hidden * e) + align256(hidden * inter * e);
    return embed * (config.tie_word_embeddings ? 1 : 2) + norm +
           (2 * norm + (dense_linear ? linear : 0)) * size_t(config.num_hidden_layers);
  }

  const void* dense(const std::string& name, std::initializer_list<int64_t> shape) {
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    std::byte* dst = take(size_t(count) * element());
    put(name, shape, dst);
    return dst;
  }

  // out_features = the parts' sum, fused in order.
  PluginPtr<LinearLayer> linear(std::initializer_list<LinearPart> parts, int64_t in_features) {
    int64_t out_features = 0;
    for (const LinearPart& part : parts) out_features += part.out_features;
    if (quantizer_ != nullptr) return quantized(parts, out_features, in_features);
    std::byte* block = take(size_t(out_features * in_features) * element());
    std::byte* dst = block;
    for (const LinearPart& part : parts) {
      put(part.prefix + ".weight", {part.out_features, in_features}, dst);
      dst += size_t(part.out_features * in_features) * element();
    }
    // The model's own object: no library of another plugin to pin.
    return make_pinned<DenseLinear>(LibraryPin{}, gemm_, block, out_features, in_features, device_);
  }

  size_t quantized_bytes() const { return quantized_bytes_; }

 private:
  size_t element() const { return dtype_bits(dtype_) / 8; }

  std::byte* take(size_t bytes) {
    if (size_t(end_ - cursor_) < align256(bytes))
      fail(ErrorCode::internal, fmt::format("{}: the weights outgrew the {} bytes planned for them",
                                            weights_.directory(), end_ - cursor_));
    std::byte* taken = cursor_;
    cursor_ += align256(bytes);
    return taken;
  }

  // Copies one checkpoint tensor (its shape checked) to `dst`.
  void put(const std::string& name, std::initializer_list<int64_t> shape, std::byte* dst) {
    auto found = weights_.tensor(name);
    throw_if_error(found.status());
    const TensorView& view = found.value();
    const std::span<const int64_t> expected(shape.begin(), shape.size());
    if (!std::equal(expected.begin(), expected.end(), view.shape.begin(), view.shape.begin() + view.rank))
      fail(ErrorCode::corrupt_data,
           fmt::format("{}: tensor '{}': expected shape [{}], found [{}]", weights_.directory(), name,
                       shape_text(expected), shape_text(std::span<const int64_t>(view.shape.data(), view.rank))));
    if (!view.is_contiguous() || view.device.kind != DeviceKind::cpu)
      fail(ErrorCode::invalid_argument,
           fmt::format("{}: tensor '{}': expected a contiguous host view", weights_.directory(), name));
    const size_t count = size_t(view.numel());
    if (view.dtype == dtype_) {
      check_cuda(cudaMemcpy(dst, view.data, count * element(), cudaMemcpyHostToDevice), "uploading weights");
      return;
    }
    ref::DType stored;
    switch (view.dtype) {
      case DType::f32: stored = ref::DType::f32; break;
      case DType::bf16: stored = ref::DType::bf16; break;
      case DType::f16: stored = ref::DType::f16; break;
      default:
        fail(ErrorCode::unsupported, fmt::format("{}: tensor '{}': expected f32, bf16 or f16, found {}",
                                                 weights_.directory(), name, dtype_name(view.dtype)));
    }
    f32_.resize(count);
    converted_.resize(count * element());
    ref::convert_to_f32(view.data, stored, count, f32_.data());
    ref::convert_from_f32(f32_.data(), count, converted_.data(),
                          dtype_ == DType::bf16 ? ref::DType::bf16 : ref::DType::f16);
    check_cuda(cudaMemcpy(dst, converted_.data(), count * element(), cudaMemcpyHostToDevice), "uploading weights");
  }

  PluginPtr<LinearLayer> quantized(std::initializer_list<LinearPart> parts, int64_t out_features,
                                   int64_t in_features) {
    std::vector<std::string> prefixes;
    for (const LinearPart& part : parts) prefixes.push_back(part.prefix);
    std::string named;
    for (const std::string& prefix : prefixes) named += (named.empty() ? "" : " + ") + prefix;
    LinearLoad load;
    load.weights = &weights_;
    load.prefixes = prefixes;
    load.device = device_;
    load.activation_dtype = dtype_;
    load.max_rows = max_rows_;
    auto made = quantizer_->load_linear(load);
    if (!made)
      throw Error(made.status().code(), fmt::format("llama_cuda: {}: the quantizer ('{}') could not load {}: {}",
                                                    weights_.directory(), quantizer_->format(), named,
                                                    made.status().message()));
    PluginPtr<LinearLayer> layer = std::move(made.value());
    if (!layer) fail(ErrorCode::internal, fmt::format("the quantizer returned no layer for {}", named));
    const LinearInfo info = layer->info();
    if (info.in_features != in_features || info.out_features != out_features || info.activation_dtype != dtype_ ||
        info.device != device_)
      fail(ErrorCode::internal,
           fmt::format("the quantizer's layer for {} is [{} x {}] {} on {}:{}; expected [{} x {}] {} on cuda:{}", named,
                       info.out_features, info.in_features, dtype_name(info.activation_dtype),
                       device_kind_name(info.device.kind), info.device.index, out_features, in_features,
                       dtype_name(dtype_), device_.index));
    quantized_bytes_ += info.weight_bytes;
    return layer;
  }

  const WeightSource& weights_;
  Quantizer* quantizer_;
  DenseGemm& gemm_;
  Device device_;
  DType dtype_;
  int64_t max_rows_;
  std::byte* cursor_;
  std::byte* end_;
  size_t quantized_bytes_ = 0;
  std::vector<float> f32_;
  std::vector<std::byte> converted_;
};

}  // namespace

LlamaCudaModel::LlamaCudaModel(const CreateContext& context)
    : log_(plugin_logger(context, "llama_cuda")),
      library_(context.library),
      max_tokens_per_step_(context.settings->get_int("max_tokens_per_step")),
      max_batch_(context.settings->get_int("max_batch")),
      small_gemm_max_rows_(context.settings->get_int("small_gemm_max_rows")) {
  if (context.settings->get_bool("profile")) profile_.enable();
  use_graphs_ = context.settings->get_bool("cuda_graphs");
}

LlamaCudaModel::~LlamaCudaModel() {
  if (stream_) cudaStreamSynchronize(stream_);
  clear_graphs();
  if (profile_.enabled())
    log_.info("step profile (CUDA events; times are spans between consecutive ops):\n{}", profile_.report());
  kv_cache_.reset();
  layers_.clear();  // the dense layers use gemm_
  gemm_.reset();
  for (cudaEvent_t done : step_done_)
    if (done) cudaEventDestroy(done);
  if (stream_) cudaStreamDestroy(stream_);
}

Status LlamaCudaModel::load(const LoadContext& context) noexcept {
  return guard([&] { load_checked(context); });
}

Status LlamaCudaModel::step(const StepInput& input, StepOutput& output) noexcept {
  return guard([&] {
    if (!queued_.empty())
      fail(ErrorCode::invalid_argument, "step() while submitted steps wait to be collected; collect them first");
    submit_checked(input);
    collect_checked(output);
  });
}

Status LlamaCudaModel::submit_step(const StepInput& input) noexcept {
  return guard([&] { submit_checked(input); });
}

Status LlamaCudaModel::collect_step(StepOutput& output) noexcept {
  return guard([&] { collect_checked(output); });
}

ModelInfo LlamaCudaModel::info() const noexcept {
  ModelInfo out;
  if (loaded_) {
    try {
      out = llama::llama_model_info(config_, eos_ids_, bos_id_);
    } catch (...) {
      out = ModelInfo{};
    }
    out.weight_bytes = weight_bytes_;
  }
  out.device = device_;
  out.activation_dtype = dtype_;
  return out;
}

std::vector<LinearInputGroup> LlamaCudaModel::linear_input_groups() const noexcept {
  try {
    return loaded_ ? llama::llama_linear_input_groups(config_) : std::vector<LinearInputGroup>{};
  } catch (...) {  // out of memory: no groups, and the quantizer says so
    return {};
  }
}

Result<MemoryReport> LlamaCudaModel::memory() const noexcept {
  // LMDeploy's rule: the KV cache takes a share of the memory free after the
  // weights (and, here, the step workspace) are in place.
  MemoryReport report;
  report.weight_bytes = weight_bytes_;
  if (cudaError_t e = cudaSetDevice(device_.index); e != cudaSuccess)
    return Status(ErrorCode::internal, fmt::format("llama_cuda: cudaSetDevice({}): {}", device_.index, cudaGetErrorString(e)));
  if (cudaError_t e = cudaMemGetInfo(&report.free_bytes, &report.total_bytes); e != cudaSuccess)
    return Status(ErrorCode::internal, fmt::format("llama_cuda: cudaMemGetInfo: {}", cudaGetErrorString(e)));
  return report;
}

Result<PluginPtr<DeviceTensor>> LlamaCudaModel::allocate_embeddings(int64_t rows) noexcept {
  PluginPtr<DeviceTensor> made;
  Status status = guard([&] {
    if (!loaded_) fail(ErrorCode::invalid_argument, "allocate_embeddings before load");
    if (rows <= 0)
      fail(ErrorCode::invalid_argument, fmt::format("allocate_embeddings: expected a positive row count, found {}", rows));
    if (!embedding_pool_) embedding_pool_ = std::make_shared<EmbeddingPool>(stream_, device_.index);
    made = make_pinned<EmbeddingRows>(library_, embedding_pool_, rows, config_.hidden_size, dtype_, device_);
  });
  if (!status) return status;
  return made;
}

Status LlamaCudaModel::allocate_kv_cache(int32_t num_blocks, int32_t block_tokens) noexcept {
  return guard([&] { allocate_kv_cache_checked(num_blocks, block_tokens); });
}

void LlamaCudaModel::allocate_kv_cache_checked(int32_t num_blocks, int32_t block_tokens) {
  if (!loaded_) fail(ErrorCode::invalid_argument, "allocate_kv_cache before load");
  if (num_blocks <= 0 || block_tokens <= 0)
    fail(ErrorCode::invalid_argument,
         fmt::format("allocate_kv_cache: expected positive block count and block size, found {} blocks of {} tokens",
                     num_blocks, block_tokens));
  const KvShape shape{int32_t(config_.num_hidden_layers), int32_t(config_.num_key_value_heads),
                      int32_t(config_.head_dim), block_tokens, dtype_};
  check_cuda(cudaStreamSynchronize(stream_), "waiting for the queued steps");
  clear_graphs();  // they hold the old cache's addresses
  kv_cache_.reset();
  attention_workspace_.reset();
  graph_arena_.reset();
  // Sized for the largest pass: max_tokens_per_step tokens, each perhaps its
  // own sequence, at the model's longest context.
  KvWorkspaceQuery query;
  query.shape = shape;
  query.q_heads = int32_t(config_.num_attention_heads);
  query.max_tokens = int32_t(max_tokens_per_step_);
  query.max_sequences = int32_t(max_tokens_per_step_);
  query.max_context = int32_t(config_.max_position_embeddings);
  query.device = device_;
  auto workspace_bytes = kv_policy_->workspace_bytes(query);
  throw_if_error(workspace_bytes.status());
  attention_workspace_.allocate(workspace_bytes.value(), "the attention workspace");
  auto made = kv_policy_->allocate(shape, num_blocks, device_);
  throw_if_error(made.status());
  kv_cache_ = std::move(made.value());
  if (!kv_cache_) fail(ErrorCode::internal, "the KV cache policy returned no cache");
  block_tokens_ = block_tokens;
  // Block-table capacity of a graphed decode pass: the model's longest context.
  graph_blocks_ = int32_t((config_.max_position_embeddings + block_tokens - 1) / block_tokens);
  if (use_graphs_) graph_arena_.allocate(graph_arena_bytes(), "the graphed decode pass's index arrays");
  log_.info("KV cache: {} blocks of {} tokens, {} MiB ({} policy, {} pages), attention workspace {} KiB", num_blocks,
            block_tokens, kv_cache_->bytes() >> 20, kv_format_.name, dtype_name(dtype_),
            attention_workspace_.bytes() >> 10);
}

void LlamaCudaModel::load_checked(const LoadContext& context) {
  if (loaded_) fail(ErrorCode::invalid_argument, "load() called twice; make a new model object instead");
  if (context.weights == nullptr) fail(ErrorCode::invalid_argument, "load() needs a weight source");
  if (context.device.kind != DeviceKind::cuda)
    fail(ErrorCode::unsupported, "this plugin runs on a CUDA GPU; the CPU was asked for (use llama_cpu)");
  if (context.tensor_parallel_size != 1)
    fail(ErrorCode::unsupported,
         fmt::format("tensor parallelism is not supported yet (tensor_parallel_size {})", context.tensor_parallel_size));
  if (context.kv_policy == nullptr)
    fail(ErrorCode::invalid_argument, "a causal LM needs a KV cache policy (the manifest's [kv_cache] table)");
  if (context.activation_dtype != DType::bf16 && context.activation_dtype != DType::f16)
    fail(ErrorCode::unsupported, fmt::format("activation dtype {}: expected bf16 or f16",
                                             dtype_name(context.activation_dtype)));
  const KvFormat kv_format = context.kv_policy->format();
  if (Status fits = check_kv_format(kv_format, context.device, context.activation_dtype); !fits)
    fail(fits.code(), fits.message());
  device_ = context.device;
  dtype_ = context.activation_dtype;

  const WeightSource& weights = *context.weights;
  const std::string directory = weights.directory();
  auto checkpoint = llama::read_llama_checkpoint(weights, context.quantizer != nullptr);
  throw_if_error(checkpoint.status());
  llama::LlamaConfig config = checkpoint->config;
  const std::string& source = checkpoint->source;
  if (config.head_dim != 64 && config.head_dim != 128)
    fail(ErrorCode::unsupported,
         fmt::format("{}: key 'head_dim': {} (the attention kernels are built for 64 and 128)", source, config.head_dim));
  if (config.num_attention_heads % config.num_key_value_heads != 0)
    fail(ErrorCode::unsupported, fmt::format("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                                             source, config.num_attention_heads, config.num_key_value_heads));
  if (config.hidden_size % 8 != 0 || config.intermediate_size % 8 != 0)
    fail(ErrorCode::unsupported, fmt::format("{}: hidden_size {} and intermediate_size {} must be multiples of 8",
                                             source, config.hidden_size, config.intermediate_size));

  config_ = std::move(config);
  eos_ids_ = std::move(checkpoint->eos_ids);
  bos_id_ = checkpoint->bos_id;

  check_cuda(cudaSetDevice(device_.index), "cudaSetDevice");
  check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  for (cudaEvent_t& done : step_done_)
    check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
  gemm_ = std::make_unique<DenseGemm>(dtype_, small_gemm_max_rows_, stream_);

  load_weights(weights, context.quantizer);
  allocate_workspace();
  upload_rope_table();
  softmax_scale_ = float(1.0 / std::sqrt(double(config_.head_dim)));
  kv_policy_ = context.kv_policy;
  kv_format_ = kv_format;
  loaded_ = true;
  const std::string linear_format = layers_.empty() ? "none" : layers_.front().qkv->info().format;
  size_t free_bytes = 0, total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  log_.info("loaded {} on cuda:{}: {} layers, hidden {}, {} heads ({} KV) x {}, vocab {}{}; {} MiB of weights ({} "
            "activations, linear layers {}), {} MiB workspace ({} tokens/pass, {} rows), {} MiB of {} MiB free",
            directory, device_.index, config_.num_hidden_layers, config_.hidden_size, config_.num_attention_heads,
            config_.num_key_value_heads, config_.head_dim, config_.vocab_size,
            config_.tie_word_embeddings ? ", tied embeddings" : "", weight_bytes_ >> 20, dtype_name(dtype_),
            linear_format, workspace_.bytes() >> 20, max_tokens_per_step_, max_batch_,
            free_bytes >> 20, total_bytes >> 20);
}

void LlamaCudaModel::load_weights(const WeightSource& weights, Quantizer* quantizer) {
  const int64_t hidden = config_.hidden_size, inter = config_.intermediate_size, vocab = config_.vocab_size;
  const int64_t q = config_.q_size(), kv = config_.kv_size();
  const size_t block_bytes = WeightLoader::block_bytes(config_, dtype_, quantizer == nullptr);
  size_t free_bytes = 0, total_bytes = 0;
  check_cuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  if (block_bytes > free_bytes)
    fail(ErrorCode::out_of_memory,
         fmt::format("{}: the {} weights take {} MiB but cuda:{} has {} MiB free of {} MiB", weights.directory(),
                     dtype_name(dtype_), block_bytes >> 20, device_.index, free_bytes >> 20, total_bytes >> 20));
  weight_memory_.allocate(block_bytes, "the weights");
  WeightLoader loader(weights, quantizer, *gemm_, device_, dtype_, max_tokens_per_step_, weight_memory_.data(),
                      block_bytes);

  embed_tokens_ = loader.dense(config_.names.embed_tokens(), {vocab, hidden});
  layers_.clear();
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    const std::string prefix = config_.names.layer(l);
    LayerWeights layer;
    layer.input_norm = loader.dense(prefix + "input_layernorm.weight", {hidden});
    layer.qkv = loader.linear({{prefix + "self_attn.q_proj", q}, {prefix + "self_attn.k_proj", kv},
                               {prefix + "self_attn.v_proj", kv}},
                              hidden);
    layer.o_proj = loader.linear({{prefix + "self_attn.o_proj", hidden}}, q);
    layer.post_norm = loader.dense(prefix + "post_attention_layernorm.weight", {hidden});
    layer.gate_up = loader.linear({{prefix + "mlp.gate_proj", inter}, {prefix + "mlp.up_proj", inter}}, hidden);
    layer.down_proj = loader.linear({{prefix + "mlp.down_proj", hidden}}, inter);
    layers_.push_back(std::move(layer));
  }
  final_norm_ = loader.dense(config_.names.final_norm(), {hidden});
  // A tied checkpoint's own lm_head.weight, if any, is ignored (as HF does).
  lm_head_ = config_.tie_word_embeddings ? embed_tokens_ : loader.dense(config_.names.lm_head, {vocab, hidden});
  weight_bytes_ = block_bytes + loader.quantized_bytes();
}

void LlamaCudaModel::allocate_workspace() {
  WorkspaceSizes sizes;
  sizes.tokens = max_tokens_per_step_;
  sizes.rows = max_batch_;
  sizes.hidden = config_.hidden_size;
  sizes.q_size = config_.q_size();
  sizes.kv_size = config_.kv_size();
  sizes.intermediate = config_.intermediate_size;
  sizes.vocab = config_.vocab_size;
  sizes.head_dim = config_.head_dim;
  sizes.dtype = dtype_;
  sizes.sampling_bytes = cuda::sampling_workspace_bytes(int(max_batch_), int(config_.vocab_size));
  for (const LayerWeights& layer : layers_)
    for (const LinearLayer* linear : {layer.qkv.get(), layer.o_proj.get(), layer.gate_up.get(), layer.down_proj.get()})
      sizes.linear_bytes = std::max(sizes.linear_bytes, linear->workspace_bytes(max_tokens_per_step_));
  workspace_.allocate(sizes);
  check_cuda(cudaMemset(workspace_.error_flag, 0, sizeof(int32_t)), "cudaMemset");
  ensure_sample_capacity(int32_t(max_batch_));
}

void LlamaCudaModel::upload_rope_table() {
  const ref::RopeParams rope = llama::rope_params(config_);
  const ref::RopeTable table = ref::make_rope_table(rope);
  check_cuda(cudaMemcpy(workspace_.inv_freq, table.inv_freq.data(), table.inv_freq.size() * sizeof(float),
                        cudaMemcpyHostToDevice),
             "uploading the RoPE table");
}

}  // namespace hostrun::llama_cuda
