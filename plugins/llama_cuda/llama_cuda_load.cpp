// load(): config.json (and generation_config.json), the checks of what this
// plugin supports, the weights on the GPU, the workspace; and the plain
// Model methods.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "cuda/paged_attention.hpp"
#include "llama_cuda_model.hpp"
#include "ref/dtype.hpp"
#include "ref/rope.hpp"

namespace hostrun::llama_cuda {

namespace {

[[noreturn]] void fail(ErrorCode code, std::string message) { throw Error(code, "llama_cuda: " + std::move(message)); }
void throw_if_error(const Status& status) {
  if (!status) throw Error(status);
}
void check_cuda(cudaError_t error, const char* what) {
  if (error != cudaSuccess)
    fail(error == cudaErrorMemoryAllocation ? ErrorCode::out_of_memory : ErrorCode::internal,
         fmt::format("{}: {} ({})", what, cudaGetErrorString(error), cudaGetErrorName(error)));
}

size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

void DeviceBuffer::allocate(size_t bytes, const char* what) {
  reset();
  if (bytes == 0) return;
  void* p = nullptr;
  if (cudaError_t e = cudaMalloc(&p, bytes); e != cudaSuccess) {
    cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    fail(ErrorCode::out_of_memory, fmt::format("cannot allocate {} MiB for {}: {} MiB free of {} MiB on the GPU ({})",
                                               bytes >> 20, what, free_bytes >> 20, total_bytes >> 20,
                                               cudaGetErrorString(e)));
  }
  data_ = static_cast<std::byte*>(p);
  bytes_ = bytes;
}
void DeviceBuffer::reset() {
  if (data_) cudaFree(data_);
  data_ = nullptr;
  bytes_ = 0;
}
void PinnedBuffer::allocate(size_t bytes, const char* what) {
  reset();
  if (bytes == 0) return;
  void* p = nullptr;
  if (cudaError_t e = cudaMallocHost(&p, bytes); e != cudaSuccess) {
    cudaGetLastError();
    fail(ErrorCode::out_of_memory,
         fmt::format("cannot allocate {} MiB of pinned host memory for {} ({})", bytes >> 20, what, cudaGetErrorString(e)));
  }
  data_ = static_cast<std::byte*>(p);
  bytes_ = bytes;
}
void PinnedBuffer::reset() {
  if (data_) cudaFreeHost(data_);
  data_ = nullptr;
  bytes_ = 0;
}

LlamaCudaModel::LlamaCudaModel(const CreateContext& context)
    : log_(plugin_logger(context, "llama_cuda")),
      max_tokens_per_step_(context.settings->get_int("max_tokens_per_step")),
      max_batch_(context.settings->get_int("max_batch")),
      small_gemm_max_rows_(context.settings->get_int("small_gemm_max_rows")) {
  if (context.settings->get_bool("profile")) profile_.enable();
  use_graphs_ = context.settings->get_bool("cuda_graphs");
}

void LlamaCudaModel::clear_graphs() { graphs_.clear(); }

LlamaCudaModel::~LlamaCudaModel() {
  if (stream_) cudaStreamSynchronize(stream_);
  graphs_.clear();
  if (profile_.enabled()) log_.info("step profile (CUDA events; times are spans between consecutive ops):\n{}", profile_.report());
  kv_cache_.reset();
  for (cudaEvent_t done : step_done_)
    if (done) cudaEventDestroy(done);
  if (cublas_) cublasDestroy(cublas_);
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

Status LlamaCudaModel::allocate_kv_cache(int32_t num_blocks, int32_t block_tokens) noexcept {
  return guard([&]() -> Status {
    if (!loaded_) return Status(ErrorCode::invalid_argument, "llama_cuda: allocate_kv_cache before load");
    if (num_blocks <= 0 || block_tokens <= 0)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("llama_cuda: allocate_kv_cache: expected positive block count and block size, found {} "
                                "blocks of {} tokens",
                                num_blocks, block_tokens));
    KvShape shape{int32_t(config_.num_hidden_layers), int32_t(config_.num_key_value_heads), int32_t(config_.head_dim),
                  block_tokens};
    if (stream_) cudaStreamSynchronize(stream_);
    clear_graphs();  // they hold the old cache's addresses
    kv_cache_.reset();
    auto made = kv_policy_->allocate(shape, num_blocks, device_);
    if (!made) return made.status();
    kv_cache_ = std::move(made.value());
    if (!kv_cache_) return Status(ErrorCode::internal, "llama_cuda: the KV cache policy returned no cache");
    block_tokens_ = block_tokens;
    // Block-table capacity of a graphed decode pass: the model's longest context.
    graph_blocks_ = int32_t((config_.max_position_embeddings + block_tokens - 1) / block_tokens);
    graph_arena_.reset();
    if (use_graphs_) graph_arena_.allocate(size_t(graph_max_sequences) * (size_t(graph_blocks_) + 16) * 4 + 4096,
                                           "the graphed decode pass's index arrays");
    log_.info("KV cache: {} blocks of {} tokens, {} MiB ({})", num_blocks, block_tokens, kv_cache_->bytes() >> 20,
              kv_policy_->format().name);
    return {};
  });
}

void LlamaCudaModel::load_checked(const LoadContext& context) {
  if (loaded_) fail(ErrorCode::invalid_argument, "load() called twice; make a new model object instead");
  if (context.weights == nullptr) fail(ErrorCode::invalid_argument, "load() needs a weight source");
  if (context.device.kind != DeviceKind::cuda)
    fail(ErrorCode::unsupported, "this plugin runs on a CUDA GPU; the CPU was asked for (use llama_cpu)");
  if (context.tensor_parallel_size != 1)
    fail(ErrorCode::unsupported,
         fmt::format("tensor parallelism is not supported yet (tensor_parallel_size {})", context.tensor_parallel_size));
  if (context.quantizer != nullptr)
    fail(ErrorCode::unsupported, "a quantizer was given; this plugin runs the checkpoint's own bf16/f16/f32 weights");
  if (context.kv_policy == nullptr)
    fail(ErrorCode::invalid_argument, "a causal LM needs a KV cache policy (the manifest's [kv_cache] table)");
  if (context.activation_dtype != DType::bf16 && context.activation_dtype != DType::f16)
    fail(ErrorCode::unsupported, fmt::format("activation dtype {}: expected bf16 or f16",
                                             dtype_name(context.activation_dtype)));
  device_ = context.device;
  dtype_ = context.activation_dtype;
  const std::string kv_format = context.kv_policy->format().name;
  if (kv_format != dtype_name(dtype_))
    fail(ErrorCode::invalid_argument,
         fmt::format("the KV cache format is '{}' but activations are {}: set [kv_cache] dtype = \"{}\"", kv_format,
                     dtype_name(dtype_), dtype_name(dtype_)));

  const WeightSource& weights = *context.weights;
  const std::string directory = weights.directory();
  auto dense = llama::read_dense_llama(weights);
  throw_if_error(dense.status());
  llama::LlamaConfig config = dense->config;
  const std::string& source = dense->source;
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
  eos_ids_ = std::move(dense->eos_ids);
  bos_id_ = dense->bos_id;

  check_cuda(cudaSetDevice(device_.index), "cudaSetDevice");
  check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  for (cudaEvent_t& done : step_done_)
    check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
  if (cublasCreate(&cublas_) != CUBLAS_STATUS_SUCCESS) fail(ErrorCode::internal, "cublasCreate failed");
  cublasSetStream(cublas_, stream_);

  upload_weights(weights);
  allocate_workspace();

  ref::RopeParams rope;
  rope.head_dim = size_t(config_.head_dim);
  rope.theta = config_.rope_theta;
  if (config_.rope_scaling) {
    rope.scaling_type = ref::RopeScalingType::llama3;
    rope.factor = config_.rope_scaling->factor;
    rope.low_freq_factor = config_.rope_scaling->low_freq_factor;
    rope.high_freq_factor = config_.rope_scaling->high_freq_factor;
    rope.original_max_position_embeddings = double(config_.rope_scaling->original_max_position_embeddings);
  }
  const ref::RopeTable table = ref::make_rope_table(rope);
  check_cuda(cudaMemcpy(inv_freq_, table.inv_freq.data(), table.inv_freq.size() * sizeof(float), cudaMemcpyHostToDevice),
             "uploading the RoPE table");
  softmax_scale_ = float(1.0 / std::sqrt(double(config_.head_dim)));
  kv_policy_ = context.kv_policy;
  loaded_ = true;
  size_t free_bytes = 0, total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  log_.info("loaded {} on cuda:{}: {} layers, hidden {}, {} heads ({} KV) x {}, vocab {}{}; {} MiB of {} weights, "
            "{} MiB workspace ({} tokens/pass, {} rows), {} MiB of {} MiB free",
            directory, device_.index, config_.num_hidden_layers, config_.hidden_size, config_.num_attention_heads,
            config_.num_key_value_heads, config_.head_dim, config_.vocab_size,
            config_.tie_word_embeddings ? ", tied embeddings" : "", weight_bytes_ >> 20, dtype_name(dtype_),
            workspace_.bytes() >> 20, max_tokens_per_step_, max_batch_, free_bytes >> 20, total_bytes >> 20);
}

void LlamaCudaModel::upload_weights(const WeightSource& weights) {
  const int64_t hidden = config_.hidden_size, inter = config_.intermediate_size, vocab = config_.vocab_size;
  const int64_t q = config_.q_size(), kv = config_.kv_size();
  const size_t e = 2;
  const size_t per_layer = align256(size_t(hidden) * e) * 2 + align256(size_t((q + 2 * kv) * hidden) * e) +
                           align256(size_t(hidden * q) * e) + align256(size_t(2 * inter * hidden) * e) +
                           align256(size_t(hidden * inter) * e);
  const size_t embed = align256(size_t(vocab * hidden) * e);
  weight_bytes_ = embed * (config_.tie_word_embeddings ? 1 : 2) + align256(size_t(hidden) * e) +
                  per_layer * size_t(config_.num_hidden_layers);
  size_t free_bytes = 0, total_bytes = 0;
  check_cuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  if (weight_bytes_ > free_bytes)
    fail(ErrorCode::out_of_memory,
         fmt::format("{}: the weights take {} MiB ({} parameters in {}) but cuda:{} has {} MiB free of {} MiB",
                     weights.directory(), weight_bytes_ >> 20, weight_bytes_ / e, dtype_name(dtype_), device_.index,
                     free_bytes >> 20, total_bytes >> 20));
  weight_memory_.allocate(weight_bytes_, "the weights");
  std::byte* cursor = weight_memory_.data();
  auto take = [&](size_t bytes) {
    std::byte* p = cursor;
    cursor += align256(bytes);
    return p;
  };
  std::vector<float> f32;
  std::vector<std::byte> converted;
  // Copies one checkpoint tensor (checked dtype and shape) to `dst`, converting to the activation dtype on the host.
  auto put = [&](const std::string& name, std::vector<int64_t> shape, std::byte* dst) {
    auto found = weights.tensor(name);
    if (!found) throw Error(found.status());
    const TensorView& view = found.value();
    bool same = view.rank == shape.size();
    for (size_t r = 0; same && r < shape.size(); ++r) same = view.shape[r] == shape[r];
    if (!same) {
      std::string expected, got;
      for (auto d : shape) expected += (expected.empty() ? "" : ", ") + std::to_string(d);
      for (uint8_t r = 0; r < view.rank; ++r) got += (r ? ", " : "") + std::to_string(view.shape[r]);
      fail(ErrorCode::corrupt_data, fmt::format("{}: tensor '{}': expected shape [{}], found [{}]", weights.directory(),
                                                name, expected, got));
    }
    if (!view.is_contiguous() || view.device.kind != DeviceKind::cpu)
      fail(ErrorCode::invalid_argument, fmt::format("{}: tensor '{}': expected a contiguous host view", weights.directory(), name));
    const size_t count = size_t(view.numel());
    if (view.dtype == dtype_) {
      check_cuda(cudaMemcpy(dst, view.data, count * e, cudaMemcpyHostToDevice), "uploading weights");
      return;
    }
    ref::DType stored;
    switch (view.dtype) {
      case DType::f32: stored = ref::DType::f32; break;
      case DType::bf16: stored = ref::DType::bf16; break;
      case DType::f16: stored = ref::DType::f16; break;
      default:
        fail(ErrorCode::unsupported, fmt::format("{}: tensor '{}': expected f32, bf16 or f16, found {}",
                                                 weights.directory(), name, dtype_name(view.dtype)));
    }
    f32.resize(count);
    converted.resize(count * e);
    ref::convert_to_f32(view.data, stored, count, f32.data());
    ref::convert_from_f32(f32.data(), count, converted.data(), dtype_ == DType::bf16 ? ref::DType::bf16 : ref::DType::f16);
    check_cuda(cudaMemcpy(dst, converted.data(), count * e, cudaMemcpyHostToDevice), "uploading weights");
  };

  std::byte* embed_rows = take(size_t(vocab * hidden) * e);
  put("model.embed_tokens.weight", {vocab, hidden}, embed_rows);
  embed_tokens_ = embed_rows;
  layers_.clear();
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    const std::string prefix = fmt::format("model.layers.{}.", l);
    LayerWeights layer;
    std::byte* p = take(size_t(hidden) * e);
    put(prefix + "input_layernorm.weight", {hidden}, p);
    layer.input_norm = p;
    p = take(size_t((q + 2 * kv) * hidden) * e);
    put(prefix + "self_attn.q_proj.weight", {q, hidden}, p);
    put(prefix + "self_attn.k_proj.weight", {kv, hidden}, p + size_t(q * hidden) * e);
    put(prefix + "self_attn.v_proj.weight", {kv, hidden}, p + size_t((q + kv) * hidden) * e);
    layer.qkv = p;
    p = take(size_t(hidden * q) * e);
    put(prefix + "self_attn.o_proj.weight", {hidden, q}, p);
    layer.o_proj = p;
    p = take(size_t(hidden) * e);
    put(prefix + "post_attention_layernorm.weight", {hidden}, p);
    layer.post_norm = p;
    p = take(size_t(2 * inter * hidden) * e);
    put(prefix + "mlp.gate_proj.weight", {inter, hidden}, p);
    put(prefix + "mlp.up_proj.weight", {inter, hidden}, p + size_t(inter * hidden) * e);
    layer.gate_up = p;
    p = take(size_t(hidden * inter) * e);
    put(prefix + "mlp.down_proj.weight", {hidden, inter}, p);
    layer.down_proj = p;
    layers_.push_back(layer);
  }
  std::byte* norm = take(size_t(hidden) * e);
  put("model.norm.weight", {hidden}, norm);
  final_norm_ = norm;
  if (config_.tie_word_embeddings) {
    lm_head_ = embed_tokens_;  // a tied checkpoint's own lm_head.weight, if any, is ignored (as HF does)
  } else {
    std::byte* head = take(size_t(vocab * hidden) * e);
    put("lm_head.weight", {vocab, hidden}, head);
    lm_head_ = head;
  }
}

void LlamaCudaModel::allocate_workspace() {
  const size_t t = size_t(max_tokens_per_step_), r = size_t(max_batch_), e = 2;
  const size_t hidden = size_t(config_.hidden_size), inter = size_t(config_.intermediate_size);
  const size_t vocab = size_t(config_.vocab_size);
  const size_t q = size_t(config_.q_size()), kv = size_t(config_.kv_size());

  // The largest split-K workspace any decode step up to max_tokens_per_step
  // sequences and the longest context can ask for (the plan caps splits, so
  // sequences x splits stays near a few CTAs per SM; x2 for the sizes between
  // the powers of two sampled here).
  int num_sms = 132;
  cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device_.index);
  size_t attention_bytes = 0;
  for (int64_t sequences = 1;; sequences = std::min<int64_t>(sequences * 2, max_tokens_per_step_)) {
    cuda::AttentionProblem problem;
    problem.dtype = dtype_ == DType::f16 ? cuda::DType::f16 : cuda::DType::bf16;
    problem.head_dim = int(config_.head_dim);
    problem.q_heads = int(config_.num_attention_heads);
    problem.kv_heads = int(config_.num_key_value_heads);
    problem.num_sequences = int(sequences);
    problem.max_query_len = 2;  // decode partials and the prefill schedule both sized
    problem.max_context_len = int(config_.max_position_embeddings);
    problem.max_tokens = int(max_tokens_per_step_);
    problem.num_sms = num_sms;
    const cuda::AttentionPlan plan = cuda::plan_paged_attention(problem);
    if (!plan.valid) fail(ErrorCode::unsupported, fmt::format("no attention kernel for this shape: {}", plan.error));
    attention_bytes = std::max(attention_bytes, plan.workspace_bytes);
    if (sequences == max_tokens_per_step_) break;
  }
  attention_bytes *= 2;
  sampling_workspace_bytes_ = cuda::sampling_workspace_bytes(int(r), int(vocab));

  const size_t sizes[] = {
      t * hidden * e,             // residual
      t * hidden * e,             // normed
      t * hidden * e,             // delta
      t * (q + 2 * kv) * e,       // qkv
      t * q * e,                  // attended
      t * 2 * inter * e,          // gate_up
      t * inter * e,              // activated
      r * hidden * e,             // last_residual
      r * hidden * e,             // last_delta
      r * hidden * e,             // last_normed
      r * vocab * sizeof(float),  // logits
      sampling_workspace_bytes_,
      attention_bytes,
      size_t(config_.head_dim / 2) * sizeof(float),  // inv_freq
      sizeof(int32_t),                               // error flag
  };
  size_t total = 0;
  for (size_t s : sizes) total += align256(s);
  size_t free_bytes = 0, total_bytes = 0;
  check_cuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  if (total > free_bytes)
    fail(ErrorCode::out_of_memory,
         fmt::format("the step workspace ({} tokens, {} rows) takes {} MiB but only {} MiB of {} MiB are free after "
                     "{} MiB of weights; lower [model] max_tokens_per_step or max_batch",
                     t, r, total >> 20, free_bytes >> 20, total_bytes >> 20, weight_bytes_ >> 20));
  workspace_.allocate(total, "the step workspace");
  std::byte* cursor = workspace_.data();
  void* parts[std::size(sizes)];
  for (size_t i = 0; i < std::size(sizes); ++i) {
    parts[i] = cursor;
    cursor += align256(sizes[i]);
  }
  residual_ = parts[0];
  normed_ = parts[1];
  delta_ = parts[2];
  qkv_ = parts[3];
  attended_ = parts[4];
  gate_up_ = parts[5];
  activated_ = parts[6];
  last_residual_ = parts[7];
  last_delta_ = parts[8];
  last_normed_ = parts[9];
  logits_ = static_cast<float*>(parts[10]);
  sampling_workspace_ = parts[11];
  attention_workspace_ = parts[12];
  attention_workspace_bytes_ = attention_bytes;
  inv_freq_ = static_cast<float*>(parts[13]);
  error_flag_ = static_cast<int32_t*>(parts[14]);
  check_cuda(cudaMemset(error_flag_, 0, sizeof(int32_t)), "cudaMemset");
  ensure_sample_capacity(int32_t(max_batch_));
}

}  // namespace hostrun::llama_cuda
