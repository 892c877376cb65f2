// kv_cuda: the paged KV cache on the GPU, 16-bit or quantized.
//
// quant_policy 0: pages hold K and V in the model's activation dtype
// (KvShape::activation_dtype, bf16 or f16): what the model hands write() is
// what is stored. quant_policy 8 / 4: pages hold int8 / int4 codes with a
// per-token, per-KV-head (scale, zero) inside each block (kernels/ref
// kv_quant.hpp, TurboMind's format); the stores quantize, decode attention
// reads the codes straight into mma fragments and prefill attention
// dequantizes tiles in shared memory (kernels/cuda/README.md). Each layer
// has one K pool and one V pool laid out as kernels/cuda expects
// ([num_blocks, block_tokens, kv_heads, head_dim]), all layers in one
// cudaMalloc. write() is a plain copy kernel of rotated keys; write_rotary()
// runs kernels/cuda's rope_kv (RoPE on q in place, rotated k and v into the
// pools, one kernel) on q, k and v views of any row strides; attend() plans
// and runs kernels/cuda's paged_attention, taking its split-K workspace
// (workspace_bytes()) from the caller's ExecContext. Over int4 pages, whose
// keys the stores rotate (kernels/ref kv_quant.hpp), attend() first writes
// the queries rotated alike into that workspace. In a step with both
// decode and prefill tokens the prefill kernels run on a second stream
// beside decode (setting concurrent_prefill); that stream and its fork/join
// events belong to the cache and are made with it, so the operations only
// enqueue.
#include <hostrun/sdk.hpp>

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <string>

#include "cuda/kv_quant.hpp"
#include "cuda/paged_attention.hpp"
#include "cuda/rope_kv.hpp"
#include "kv_write.hpp"
#include "ref/kv_quant.hpp"

namespace {

using hostrun::DType;
using hostrun::ErrorCode;
using hostrun::KvShape;
using hostrun::PagedKvBatch;
using hostrun::Status;
using hostrun::TensorView;

constexpr uint32_t kActivationDtypes = hostrun::dtype_bit(DType::bf16) | hostrun::dtype_bit(DType::f16);

hostrun::cuda::DType kernel_dtype(DType dtype) {
  return dtype == DType::f16 ? hostrun::cuda::DType::f16 : hostrun::cuda::DType::bf16;
}

size_t element_bytes(DType dtype) { return hostrun::dtype_bits(dtype) / 8; }

// Bytes of one block of one pool (K or V); kv_bits 0, 8 or 4.
size_t pool_bytes_per_block(const KvShape& shape, int kv_bits) {
  if (shape.block_tokens <= 0 || shape.kv_heads <= 0 || shape.head_dim <= 0) return 0;
  if (kv_bits != 0)
    return hostrun::ref::KvQuantBlockLayout{size_t(shape.block_tokens), size_t(shape.kv_heads),
                                            size_t(shape.head_dim), kv_bits}
        .block_bytes();
  return size_t(shape.block_tokens) * size_t(shape.kv_heads) * size_t(shape.head_dim) *
         element_bytes(shape.activation_dtype);
}

int parse_quant_policy(int64_t policy) {
  if (policy == 0 || policy == 8 || policy == 4) return int(policy);
  throw hostrun::Error(ErrorCode::invalid_argument,
                       fmt::format("kv_cuda: setting 'quant_policy': expected 0 (bf16/f16 pages), 8 (int8) or 4 "
                                   "(int4), found {}",
                                   policy));
}

Status cuda_status(const std::string& what, cudaError_t error) {
  return Status(error == cudaErrorMemoryAllocation ? ErrorCode::out_of_memory : ErrorCode::internal,
                fmt::format("kv_cuda: {}: {} ({})", what, cudaGetErrorString(error), cudaGetErrorName(error)));
}

Status probe(const hostrun::Device& device) noexcept {
  if (device.kind != hostrun::DeviceKind::cuda)
    return Status(ErrorCode::unsupported, fmt::format("kv_cuda keeps its cache in GPU memory; {} was asked for",
                                                      hostrun::device_kind_name(device.kind)));
  int count = 0;
  if (const cudaError_t error = cudaGetDeviceCount(&count); error != cudaSuccess)
    return Status(ErrorCode::unsupported,
                  fmt::format("no CUDA device: cudaGetDeviceCount failed: {}", cudaGetErrorString(error)));
  if (device.index < 0 || device.index >= count)
    return Status(ErrorCode::unsupported,
                  fmt::format("cuda:{} was asked for but this machine has {} CUDA device(s)", device.index, count));
  return {};
}

int multiprocessors(int device) {
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    throw hostrun::Error(ErrorCode::internal, fmt::format("kv_cuda: cannot read the SM count of cuda:{}", device));
  }
  return count;
}

// major * 10 + minor, what AttentionProblem::compute_capability takes.
int device_compute_capability(int device) {
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    throw hostrun::Error(ErrorCode::internal,
                         fmt::format("kv_cuda: cannot read the compute capability of cuda:{}", device));
  }
  return major * 10 + minor;
}

// The pools of every layer, and the stream and events attend() runs a mixed
// step's prefill on.
class CudaKvCache final : public hostrun::KvCache {
 public:
  CudaKvCache(const KvShape& shape, int kv_bits, int32_t num_blocks, int device, bool concurrent_prefill)
      : shape_(shape), kv_bits_(kv_bits), num_blocks_(num_blocks), device_(device) {
    pool_bytes_ = pool_bytes_per_block(shape, kv_bits) * size_t(num_blocks);
    bytes_ = 2 * pool_bytes_ * size_t(shape.layers);
    if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) throw hostrun::Error(cuda_status("cudaSetDevice", e));
    num_sms_ = multiprocessors(device);
    compute_capability_ = device_compute_capability(device);
    void* memory = nullptr;
    if (cudaError_t e = cudaMalloc(&memory, bytes_); e != cudaSuccess) {
      size_t free_bytes = 0, total_bytes = 0;
      cudaGetLastError();
      cudaMemGetInfo(&free_bytes, &total_bytes);
      throw hostrun::Error(ErrorCode::out_of_memory,
                           fmt::format("kv_cuda: cannot allocate {} blocks ({} MiB) on cuda:{}: {} MiB free of {} MiB ({})",
                                       num_blocks, bytes_ >> 20, device, free_bytes >> 20, total_bytes >> 20,
                                       cudaGetErrorString(e)));
    }
    memory_ = static_cast<std::byte*>(memory);
    if (concurrent_prefill) {
      // Made here, not on first use: attend() may run under stream capture,
      // where creating a stream or an event is not allowed.
      if (cudaError_t e = cudaStreamCreateWithFlags(&side_.stream, cudaStreamNonBlocking); e != cudaSuccess)
        throw hostrun::Error(cuda_status("creating the prefill stream", e));
      for (cudaEvent_t* event : {&side_.fork, &side_.join})
        if (cudaError_t e = cudaEventCreateWithFlags(event, cudaEventDisableTiming); e != cudaSuccess)
          throw hostrun::Error(cuda_status("creating the prefill stream's events", e));
    }
  }
  ~CudaKvCache() override {
    if (side_.stream) cudaStreamDestroy(side_.stream);
    if (side_.fork) cudaEventDestroy(side_.fork);
    if (side_.join) cudaEventDestroy(side_.join);
    if (memory_) cudaFree(memory_);
  }

  int32_t num_blocks() const noexcept override { return num_blocks_; }
  size_t bytes() const noexcept override { return bytes_; }
  KvShape shape() const noexcept override { return shape_; }

  void* k_pool(int32_t layer) const { return memory_ + size_t(2 * layer) * pool_bytes_; }
  void* v_pool(int32_t layer) const { return memory_ + size_t(2 * layer + 1) * pool_bytes_; }
  DType dtype() const { return shape_.activation_dtype; }
  int kv_bits() const { return kv_bits_; }
  int device() const { return device_; }
  int num_sms() const { return num_sms_; }
  int compute_capability() const { return compute_capability_; }
  int64_t num_slots() const { return int64_t(num_blocks_) * shape_.block_tokens; }
  // Null without concurrent_prefill.
  const hostrun::cuda::SideStream* prefill_stream() const { return side_.stream ? &side_ : nullptr; }

 private:
  KvShape shape_;
  int kv_bits_;  // 0, 8 or 4
  int32_t num_blocks_;
  int device_;
  int num_sms_ = 0;
  int compute_capability_ = 0;
  size_t pool_bytes_ = 0;
  size_t bytes_ = 0;
  std::byte* memory_ = nullptr;
  hostrun::cuda::SideStream side_;
};

// A [num_tokens, heads, head_dim] view of the cache's dtype on its GPU, heads
// back to back in a row, rows `*row_stride` elements apart.
Status check_heads(const char* what, const TensorView& view, int32_t num_tokens, int64_t heads, int64_t head_dim,
                   const CudaKvCache& cache, int64_t* row_stride) {
  if (view.device.kind != hostrun::DeviceKind::cuda || view.device.index != cache.device() ||
      view.dtype != cache.dtype() || view.data == nullptr)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("kv_cuda: {}: expected a {} tensor on cuda:{}, found {} on {}:{}", what,
                              hostrun::dtype_name(cache.dtype()), cache.device(), hostrun::dtype_name(view.dtype),
                              hostrun::device_kind_name(view.device.kind), view.device.index));
  if (view.rank != 3 || view.shape[0] != num_tokens || view.shape[1] != heads || view.shape[2] != head_dim ||
      view.strides[2] != 1 || view.strides[1] != head_dim || view.strides[0] < heads * head_dim)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("kv_cuda: {}: expected [{} tokens, {} heads, {}] with heads back to back and a row "
                              "stride of at least {}, found rank {} [{}, {}, {}] strides [{}, {}, {}]",
                              what, num_tokens, heads, head_dim, heads * head_dim, view.rank, view.shape[0],
                              view.shape[1], view.shape[2], view.strides[0], view.strides[1], view.strides[2]));
  *row_stride = view.strides[0];
  return {};
}

// The query heads a [tokens, q_heads, head_dim] view holds (a multiple of kv_heads).
Status query_heads(const char* what, const TensorView& queries, const KvShape& shape, int64_t* q_heads) {
  if (queries.rank != 3 || queries.shape[2] != shape.head_dim || queries.shape[1] <= 0 ||
      queries.shape[1] % shape.kv_heads != 0)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("kv_cuda: {}: queries: expected [tokens, q_heads (a multiple of {}), {}]", what,
                              shape.kv_heads, shape.head_dim));
  *q_heads = queries.shape[1];
  return {};
}

class CudaKvPolicy final : public hostrun::KvCachePolicy {
 public:
  explicit CudaKvPolicy(const hostrun::CreateContext& context)
      : library_(context.library),
        concurrent_prefill_(context.settings->get_bool("concurrent_prefill")),
        wgmma_prefill_(context.settings->get_bool("wgmma_prefill")),
        kv_bits_(parse_quant_policy(context.settings->get_int("quant_policy"))) {}

  hostrun::KvFormat format() const noexcept override {
    hostrun::KvFormat format;
    // 16-bit pages are in the activation dtype, whichever of the two it is.
    format.name = kv_bits_ == 8 ? "int8" : kv_bits_ == 4 ? "int4" : "bf16/f16";
    format.quant_policy = kv_bits_;
    format.value_bits = kv_bits_ != 0 ? kv_bits_ : 16;
    format.activation_dtypes = kActivationDtypes;
    format.device = hostrun::DeviceKind::cuda;
    format.rotary_write = true;
    return format;
  }

  size_t bytes_per_block(const KvShape& shape) const noexcept override {
    if (shape.layers <= 0) return 0;
    return 2 * size_t(shape.layers) * pool_bytes_per_block(shape, kv_bits_);
  }

  hostrun::Result<hostrun::PluginPtr<hostrun::KvCache>> allocate(const KvShape& shape, int32_t num_blocks,
                                                                 hostrun::Device device) noexcept override {
    if (Status s = probe(device); !s) return Status(s.code(), "kv_cuda: allocate: " + s.message());
    if (shape.layers <= 0 || shape.kv_heads <= 0 || shape.head_dim <= 0 || shape.block_tokens <= 0 || num_blocks <= 0)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cuda: expected positive layers, kv_heads, head_dim, block_tokens and block count, "
                                "found {} layers, {} KV heads, head dim {}, {} tokens per block, {} blocks",
                                shape.layers, shape.kv_heads, shape.head_dim, shape.block_tokens, num_blocks));
    if ((kActivationDtypes & hostrun::dtype_bit(shape.activation_dtype)) == 0)
      return Status(ErrorCode::unsupported,
                    fmt::format("kv_cuda: pages hold bf16 or f16 keys and values; the model's activation dtype is {}",
                                hostrun::dtype_name(shape.activation_dtype)));
    if (kv_bits_ != 0 &&
        !hostrun::cuda::quantized_kv_supported(kv_bits_, shape.head_dim, shape.block_tokens, shape.kv_heads))
      return Status(ErrorCode::unsupported,
                    fmt::format("kv_cuda: quant_policy {}: int{} pages need head_dim 64 or 128 and block_tokens x "
                                "kv_heads a multiple of 4; this model has head_dim {}, {} KV heads, {} tokens per "
                                "block (quant_policy 0 keeps bf16/f16 pages for any shape)",
                                kv_bits_, kv_bits_, shape.head_dim, shape.kv_heads, shape.block_tokens));
    if (int64_t(num_blocks) * shape.block_tokens > std::numeric_limits<int32_t>::max())
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cuda: {} blocks x {} tokens overflow the int32 slot numbers", num_blocks,
                                shape.block_tokens));
    hostrun::PluginPtr<hostrun::KvCache> cache;
    Status made = hostrun::guard([&] {
      cache = hostrun::make_pinned<CudaKvCache>(library_, shape, kv_bits_, num_blocks, device.index,
                                                concurrent_prefill_);
    });
    if (!made) return made;
    return cache;
  }

  // The largest split-K partials and prefill schedule of any step within the
  // query. The plan caps splits so that sequences x splits stays near a few
  // CTAs per SM, so the need peaks somewhere between one sequence and many:
  // sampled at every power of two (and the maximum), x2 for the sizes between.
  hostrun::Result<size_t> workspace_bytes(const hostrun::KvWorkspaceQuery& query) const noexcept override {
    if (Status s = probe(query.device); !s) return Status(s.code(), "kv_cuda: workspace_bytes: " + s.message());
    if (query.max_tokens <= 0 || query.max_sequences <= 0 || query.max_context <= 0 || query.q_heads <= 0)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cuda: workspace_bytes: expected positive max_tokens, max_sequences, max_context "
                                "and q_heads, found {}, {}, {} and {}",
                                query.max_tokens, query.max_sequences, query.max_context, query.q_heads));
    if ((kActivationDtypes & hostrun::dtype_bit(query.shape.activation_dtype)) == 0)
      return Status(ErrorCode::unsupported,
                    fmt::format("kv_cuda: workspace_bytes: attention takes bf16 or f16, not {}",
                                hostrun::dtype_name(query.shape.activation_dtype)));
    size_t most = 0;
    Status planned = hostrun::guard([&]() -> Status {
      hostrun::cuda::AttentionProblem problem;
      problem.dtype = kernel_dtype(query.shape.activation_dtype);
      problem.head_dim = query.shape.head_dim;
      problem.q_heads = query.q_heads;
      problem.kv_heads = query.shape.kv_heads;
      problem.max_query_len = 2;  // both kernels: decode partials and the prefill schedule
      problem.kv_bits = kv_bits_;
      problem.max_context_len = query.max_context;
      problem.max_tokens = query.max_tokens;
      problem.num_sms = multiprocessors(query.device.index);
      problem.compute_capability = device_compute_capability(query.device.index);
      for (int32_t sequences = 1;; sequences = std::min<int64_t>(int64_t(sequences) * 2, query.max_sequences)) {
        problem.num_sequences = sequences;
        const hostrun::cuda::AttentionPlan plan = hostrun::cuda::plan_paged_attention(problem);
        if (!plan.valid)
          return Status(ErrorCode::unsupported, fmt::format("kv_cuda: no attention kernel for {} q heads over {} KV "
                                                            "heads of {}: {}",
                                                            query.q_heads, query.shape.kv_heads,
                                                            query.shape.head_dim, plan.error));
        most = std::max(most, plan.workspace_bytes);
        if (sequences == query.max_sequences) break;
      }
      return {};
    });
    if (!planned) return planned;
    const bool rotate_queries = hostrun::ref::kv_keys_rotated(kv_bits_);
    return align256(2 * most) +
           (rotate_queries ? rotated_query_bytes(query.max_tokens, query.q_heads, query.shape.head_dim,
                                                 query.shape.activation_dtype)
                           : 0);
  }

  Status write(hostrun::KvCache& cache, int32_t layer, const TensorView& keys, const TensorView& values,
               const PagedKvBatch& batch, const hostrun::ExecContext& exec) noexcept override {
    return hostrun::guard([&]() -> Status {
      const CudaKvCache* ours = nullptr;
      if (Status s = check_cache("write", cache, layer, batch, ours); !s) return s;
      const KvShape shape = ours->shape();
      if (ours->kv_bits() != 0) return write_quantized(*ours, layer, keys, values, batch, exec);
      hostrun::kv_cuda::KvWriteArgs args;
      if (Status s = check_heads("write: keys", keys, batch.num_tokens, shape.kv_heads, shape.head_dim, *ours,
                                 &args.keys_row_stride);
          !s)
        return s;
      if (Status s = check_heads("write: values", values, batch.num_tokens, shape.kv_heads, shape.head_dim, *ours,
                                 &args.values_row_stride);
          !s)
        return s;
      args.num_tokens = batch.num_tokens;
      args.row_elements = shape.kv_heads * shape.head_dim;
      args.element_bytes = int(element_bytes(ours->dtype()));
      args.keys = keys.data;
      args.values = values.data;
      args.slot_mapping = batch.slot_mapping;
      args.k_pages = ours->k_pool(layer);
      args.v_pages = ours->v_pool(layer);
      args.num_slots = ours->num_slots();
      if (cudaError_t e = hostrun::kv_cuda::write_kv(args, static_cast<cudaStream_t>(exec.stream)); e != cudaSuccess)
        return cuda_status("write", e);
      return {};
    });
  }

  Status write_rotary(hostrun::KvCache& cache, int32_t layer, const TensorView& queries, const TensorView& keys,
                      const TensorView& values, const float* inv_freq, const PagedKvBatch& batch,
                      const hostrun::ExecContext& exec) noexcept override {
    return hostrun::guard([&]() -> Status {
      const CudaKvCache* ours = nullptr;
      if (Status s = check_cache("write_rotary", cache, layer, batch, ours); !s) return s;
      if (batch.num_tokens == 0) return {};
      const KvShape shape = ours->shape();
      int64_t q_heads = 0;
      if (Status s = query_heads("write_rotary", queries, shape, &q_heads); !s) return s;
      hostrun::cuda::RopeKvArgs args;
      if (Status s = check_heads("write_rotary: queries", queries, batch.num_tokens, q_heads, shape.head_dim, *ours,
                                 &args.q_row_stride);
          !s)
        return s;
      if (Status s = check_heads("write_rotary: keys", keys, batch.num_tokens, shape.kv_heads, shape.head_dim, *ours,
                                 &args.k_row_stride);
          !s)
        return s;
      if (Status s = check_heads("write_rotary: values", values, batch.num_tokens, shape.kv_heads, shape.head_dim,
                                 *ours, &args.v_row_stride);
          !s)
        return s;
      if (inv_freq == nullptr || batch.positions == nullptr)
        return Status(ErrorCode::invalid_argument,
                      "kv_cuda: write_rotary: expected an inv_freq table and the batch's positions, found null");
      args.dtype = kernel_dtype(ours->dtype());
      args.num_tokens = batch.num_tokens;
      args.q_heads = int(q_heads);
      args.kv_heads = shape.kv_heads;
      args.head_dim = shape.head_dim;
      args.q = queries.data;
      args.k = keys.data;
      args.v = values.data;
      args.positions = batch.positions;
      args.inv_freq = inv_freq;
      args.slot_mapping = batch.slot_mapping;
      args.k_pages = ours->k_pool(layer);
      args.v_pages = ours->v_pool(layer);
      args.num_slots = ours->num_slots();
      args.kv_bits = ours->kv_bits();
      args.block_tokens = shape.block_tokens;
      if (cudaError_t e = hostrun::cuda::rope_and_write_kv(args, static_cast<cudaStream_t>(exec.stream));
          e != cudaSuccess)
        return cuda_status("write_rotary", e);
      return {};
    });
  }

  Status attend(const hostrun::KvCache& cache, int32_t layer, const TensorView& queries, const PagedKvBatch& batch,
                float softmax_scale, const TensorView& out, const hostrun::ExecContext& exec) noexcept override {
    return hostrun::guard([&]() -> Status {
      const CudaKvCache* ours = nullptr;
      if (Status s = check_cache("attend", cache, layer, batch, ours); !s) return s;
      if (batch.num_tokens == 0) return {};
      const KvShape shape = ours->shape();
      int64_t q_heads = 0;
      if (Status s = query_heads("attend", queries, shape, &q_heads); !s) return s;
      int64_t q_stride = 0, out_stride = 0;
      if (Status s = check_heads("attend: queries", queries, batch.num_tokens, q_heads, shape.head_dim, *ours, &q_stride);
          !s)
        return s;
      if (Status s = check_heads("attend: out", out, batch.num_tokens, q_heads, shape.head_dim, *ours, &out_stride); !s)
        return s;
      if (!std::isfinite(softmax_scale))
        return Status(ErrorCode::invalid_argument,
                      fmt::format("kv_cuda: attend: softmax scale {} is not finite", softmax_scale));

      hostrun::cuda::AttentionProblem problem;
      problem.dtype = kernel_dtype(ours->dtype());
      problem.head_dim = shape.head_dim;
      problem.q_heads = int(q_heads);
      problem.kv_heads = shape.kv_heads;
      problem.num_sequences = batch.num_sequences;
      problem.max_query_len = std::max(1, batch.max_query_len);
      problem.max_context_len = batch.max_context_len;
      problem.max_tokens = batch.num_tokens;
      problem.num_sms = ours->num_sms();
      problem.compute_capability = ours->compute_capability();
      problem.prefill_kernel = wgmma_prefill_ ? hostrun::cuda::PrefillKernelChoice::automatic
                                              : hostrun::cuda::PrefillKernelChoice::mma_sync;
      problem.kv_bits = ours->kv_bits();
      // Every layer of a step has the same problem: plan once per step.
      if (!plan_ || !same_problem(plan_->problem, problem))
        plan_ = std::make_unique<hostrun::cuda::AttentionPlan>(hostrun::cuda::plan_paged_attention(problem));
      const auto& plan = *plan_;
      if (!plan.valid)
        return Status(ErrorCode::unsupported, fmt::format("kv_cuda: attend: no attention kernel: {}", plan.error));
      const size_t workspace_bytes = exec.workspace.data ? exec.workspace.nbytes() : 0;
      // int4 keys are stored rotated (kernels/ref kv_quant.hpp): the queries,
      // rotated alike, go to the workspace after the plan's part.
      const bool rotate_queries = hostrun::ref::kv_keys_rotated(ours->kv_bits());
      const size_t plan_bytes = align256(plan.workspace_bytes);
      const size_t needed = plan_bytes + (rotate_queries ? rotated_query_bytes(batch.num_tokens, q_heads, shape.head_dim,
                                                                                ours->dtype())
                                                         : 0);
      if (needed > workspace_bytes)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("kv_cuda: attend: the attention plan needs {} bytes of workspace, the caller gave {} "
                                  "({}); size it with workspace_bytes()",
                                  needed, workspace_bytes, plan.describe()));
      hostrun::cuda::PagedKvPools pools;
      pools.k_pages = ours->k_pool(layer);
      pools.v_pages = ours->v_pool(layer);
      pools.dtype = kernel_dtype(ours->dtype());
      pools.num_blocks = ours->num_blocks();
      pools.block_tokens = shape.block_tokens;
      pools.kv_heads = shape.kv_heads;
      pools.head_dim = shape.head_dim;
      pools.kv_bits = ours->kv_bits();
      hostrun::cuda::PagedAttentionBatch step;
      step.num_sequences = batch.num_sequences;
      step.query_start = batch.query_start;
      step.context_lens = batch.context_lens;
      step.block_tables = batch.block_tables;
      step.max_blocks_per_sequence = batch.max_blocks_per_sequence;
      const void* q = queries.data;
      if (rotate_queries) {
        void* rotated = static_cast<std::byte*>(exec.workspace.data) + plan_bytes;
        if (cudaError_t e = hostrun::cuda::rotate_kv_rows(queries.data, pools.dtype, q_stride, batch.num_tokens,
                                                          int(q_heads), shape.head_dim, rotated,
                                                          static_cast<cudaStream_t>(exec.stream));
            e != cudaSuccess)
          return cuda_status("attend (rotating the queries)", e);
        q = rotated;
        q_stride = q_heads * shape.head_dim;
      }
      const cudaError_t e = hostrun::cuda::paged_attention(plan, pools, step, q, q_stride, softmax_scale,
                                                           out.data, out_stride, exec.workspace.data, workspace_bytes,
                                                           static_cast<cudaStream_t>(exec.stream),
                                                           ours->prefill_stream());
      if (e != cudaSuccess) return cuda_status(fmt::format("attend ({})", plan.describe()), e);
      return {};
    });
  }

 private:
  static size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }
  // The rotated copy of a step's queries over int4 pages: [tokens, q_heads, head_dim].
  static size_t rotated_query_bytes(int64_t tokens, int64_t q_heads, int64_t head_dim, DType dtype) {
    return align256(size_t(tokens) * size_t(q_heads) * size_t(head_dim) * element_bytes(dtype));
  }
  static bool same_problem(const hostrun::cuda::AttentionProblem& a, const hostrun::cuda::AttentionProblem& b) {
    return a.dtype == b.dtype && a.head_dim == b.head_dim && a.q_heads == b.q_heads && a.kv_heads == b.kv_heads &&
           a.num_sequences == b.num_sequences && a.max_query_len == b.max_query_len &&
           a.max_context_len == b.max_context_len && a.max_tokens == b.max_tokens && a.num_sms == b.num_sms &&
           a.force_splits == b.force_splits && a.kv_bits == b.kv_bits &&
           a.compute_capability == b.compute_capability && a.prefill_kernel == b.prefill_kernel;
  }

  // write() into int8/int4 pages: kernels/cuda's quantizing store.
  static Status write_quantized(const CudaKvCache& cache, int32_t layer, const TensorView& keys,
                                const TensorView& values, const PagedKvBatch& batch, const hostrun::ExecContext& exec) {
    const KvShape shape = cache.shape();
    hostrun::cuda::KvQuantWriteArgs args;
    if (Status s = check_heads("write: keys", keys, batch.num_tokens, shape.kv_heads, shape.head_dim, cache,
                               &args.keys_row_stride);
        !s)
      return s;
    if (Status s = check_heads("write: values", values, batch.num_tokens, shape.kv_heads, shape.head_dim, cache,
                               &args.values_row_stride);
        !s)
      return s;
    args.pages = {cache.k_pool(layer), cache.v_pool(layer), cache.kv_bits(), shape.block_tokens, shape.kv_heads,
                  shape.head_dim, cache.num_slots()};
    args.dtype = kernel_dtype(cache.dtype());
    args.num_tokens = batch.num_tokens;
    args.keys = keys.data;
    args.values = values.data;
    args.slot_mapping = batch.slot_mapping;
    if (cudaError_t e = hostrun::cuda::quantize_and_write_kv(args, static_cast<cudaStream_t>(exec.stream));
        e != cudaSuccess)
      return cuda_status("write", e);
    return {};
  }

  Status check_cache(const char* op, const hostrun::KvCache& cache, int32_t layer, const PagedKvBatch& batch,
                     const CudaKvCache*& ours) const {
    // Both classes live in this library, so dynamic_cast sees the same type information.
    ours = dynamic_cast<const CudaKvCache*>(&cache);
    if (ours == nullptr)
      return Status(ErrorCode::invalid_argument, fmt::format("kv_cuda: {}: the KV cache was not made by kv_cuda", op));
    if (layer < 0 || layer >= ours->shape().layers)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cuda: {}: layer {} is outside 0..{}", op, layer, ours->shape().layers - 1));
    if (batch.device.kind != hostrun::DeviceKind::cuda || batch.device.index != ours->device())
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cuda: {}: the step's index arrays must be on cuda:{} with the cache, found {}:{}",
                                op, ours->device(), hostrun::device_kind_name(batch.device.kind), batch.device.index));
    if (batch.num_sequences < 0 || batch.num_tokens < 0 || batch.max_blocks_per_sequence < 0)
      return Status(ErrorCode::invalid_argument, fmt::format("kv_cuda: {}: negative sizes in the step", op));
    if (batch.num_tokens > 0 && (batch.slot_mapping == nullptr || batch.query_start == nullptr ||
                                 batch.context_lens == nullptr || batch.block_tables == nullptr))
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cuda: {}: query_start, context_lens, block_tables and slot_mapping must be given", op));
    return {};
  }

  hostrun::LibraryPin library_;  // carried by every cache handed out
  bool concurrent_prefill_ = true;
  bool wgmma_prefill_ = true;
  int kv_bits_ = 0;  // quant_policy: 0, 8 or 4
  std::unique_ptr<hostrun::cuda::AttentionPlan> plan_;  // the last step's, reused by its other layers
};

const hostrun::SettingSpec kSettings[] = {
    {"concurrent_prefill", hostrun::SettingType::boolean,
     "In a step with decode and prefill tokens, run the prefill attention on a second stream beside decode", false,
     "true"},
    {"wgmma_prefill", hostrun::SettingType::boolean,
     "On compute capability 9.0 (H100, H200), prefill attention at head_dim 128 on warpgroup MMA (wgmma: "
     "warp-specialized from 512 context positions over every page format); false keeps the mma.sync kernel other "
     "GPUs run",
     false, "true"},
    {"quant_policy", hostrun::SettingType::integer,
     "KV quantization, LMDeploy's --quant-policy: 0 (pages in the activation dtype), 8 (int8) or 4 (int4; "
     "per token and KV head scale/zero, TurboMind's format)",
     false, "0", 0, 8},
};
const hostrun::RoleEntry kRoles[] = {hostrun::role_entry<hostrun::KvCachePolicy, CudaKvPolicy>(kSettings, &probe)};

}  // namespace

HOSTRUN_PLUGIN("kv_cuda", "0.3.0",
               "Paged KV cache in GPU memory (bf16/f16 pages, or int8/int4 with --quant-policy 8/4) with "
               "kernels/cuda attention",
               kRoles)
