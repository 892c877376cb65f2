// kv_cuda: the floating-point paged KV cache on the GPU.
//
// Pages hold K and V in the activation dtype (bf16 or f16, the `dtype`
// setting, which must match the model's). Each layer has one K pool and one
// V pool laid out as kernels/cuda expects ([num_blocks, block_tokens,
// kv_heads, head_dim]), all layers in one cudaMalloc. write() is a plain copy
// kernel of rotated keys; write_rotary() runs kernels/cuda's rope_kv (RoPE on
// q in place, rotated k and v into the pools, one kernel) when q, k and v are
// the consecutive head groups of one fused QKV row, as llama_cuda lays them
// out, and answers unsupported otherwise; attend() plans and runs
// kernels/cuda's paged_attention, taking its split-K workspace from the
// caller's ExecContext; in a step with both decode and prefill tokens the
// prefill kernels run on a second stream of the policy's, beside decode
// (setting concurrent_prefill). quant_policy is 0 (no quantization).
#include <hostrun/sdk.hpp>

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <string>

#include "cuda/paged_attention.hpp"
#include "cuda/rope_kv.hpp"
#include "kv_write.hpp"

namespace {

using hostrun::DType;
using hostrun::ErrorCode;
using hostrun::KvShape;
using hostrun::PagedKvBatch;
using hostrun::Status;
using hostrun::TensorView;

DType parse_dtype_setting(const std::string& name) {
  if (name == "bf16") return DType::bf16;
  if (name == "f16") return DType::f16;
  throw hostrun::Error(ErrorCode::invalid_argument,
                       fmt::format("kv_cuda: setting 'dtype': expected \"bf16\" or \"f16\", found \"{}\"", name));
}

hostrun::cuda::DType kernel_dtype(DType dtype) {
  return dtype == DType::f16 ? hostrun::cuda::DType::f16 : hostrun::cuda::DType::bf16;
}

size_t pool_bytes_per_block(const KvShape& shape) {
  if (shape.block_tokens <= 0 || shape.kv_heads <= 0 || shape.head_dim <= 0) return 0;
  return size_t(shape.block_tokens) * size_t(shape.kv_heads) * size_t(shape.head_dim) * 2;
}

Status cuda_status(const char* what, cudaError_t error) {
  return Status(error == cudaErrorMemoryAllocation ? ErrorCode::out_of_memory : ErrorCode::internal,
                fmt::format("kv_cuda: {}: {} ({})", what, cudaGetErrorString(error), cudaGetErrorName(error)));
}

Status probe() noexcept {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess)
    return Status(ErrorCode::unsupported,
                  fmt::format("no CUDA device: cudaGetDeviceCount failed: {}", cudaGetErrorString(error)));
  if (count == 0) return Status(ErrorCode::unsupported, "no CUDA device: cudaGetDeviceCount found 0 devices");
  return {};
}

class CudaKvCache final : public hostrun::KvCache {
 public:
  CudaKvCache(const KvShape& shape, int32_t num_blocks, DType dtype, int device)
      : shape_(shape), num_blocks_(num_blocks), dtype_(dtype), device_(device) {
    pool_bytes_ = pool_bytes_per_block(shape) * size_t(num_blocks);
    bytes_ = 2 * pool_bytes_ * size_t(shape.layers);
    if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) throw hostrun::Error(cuda_status("cudaSetDevice", e));
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
  }
  ~CudaKvCache() override {
    if (memory_) cudaFree(memory_);
  }

  int32_t num_blocks() const noexcept override { return num_blocks_; }
  size_t bytes() const noexcept override { return bytes_; }
  KvShape shape() const noexcept override { return shape_; }

  void* k_pool(int32_t layer) const { return memory_ + size_t(2 * layer) * pool_bytes_; }
  void* v_pool(int32_t layer) const { return memory_ + size_t(2 * layer + 1) * pool_bytes_; }
  DType dtype() const { return dtype_; }

 private:
  KvShape shape_;
  int32_t num_blocks_;
  DType dtype_;
  int device_;
  size_t pool_bytes_ = 0;
  size_t bytes_ = 0;
  std::byte* memory_ = nullptr;
};

// Device tensors of [num_tokens, heads, head_dim] rows with a row stride.
Status check_rows(const char* what, const TensorView& view, int32_t num_tokens, int64_t heads_times_dim,
                  DType dtype, int64_t* row_stride) {
  if (view.device.kind != hostrun::DeviceKind::cuda || view.dtype != dtype || view.data == nullptr)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("kv_cuda: {}: expected a {} tensor in GPU memory, found {} on {}", what,
                              hostrun::dtype_name(dtype), hostrun::dtype_name(view.dtype),
                              view.device.kind == hostrun::DeviceKind::cuda ? "a GPU" : "the CPU"));
  if (view.rank != 3 || view.shape[0] != num_tokens || view.shape[1] * view.shape[2] != heads_times_dim ||
      view.strides[2] != 1 || view.strides[1] != view.shape[2] || view.strides[0] < heads_times_dim)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("kv_cuda: {}: expected [{} tokens, heads, head_dim] rows of {} contiguous values", what,
                              num_tokens, heads_times_dim));
  *row_stride = view.strides[0];
  return {};
}

class CudaKvPolicy final : public hostrun::KvCachePolicy {
 public:
  explicit CudaKvPolicy(const hostrun::CreateContext& context)
      : dtype_(parse_dtype_setting(context.settings->get_string("dtype"))),
        concurrent_prefill_(context.settings->get_bool("concurrent_prefill")) {}
  ~CudaKvPolicy() override {
    if (side_.stream) cudaStreamDestroy(side_.stream);
    if (side_.fork) cudaEventDestroy(side_.fork);
    if (side_.join) cudaEventDestroy(side_.join);
  }

  hostrun::KvFormat format() const noexcept override {
    return hostrun::KvFormat{dtype_ == DType::f16 ? "f16" : "bf16", 0, 16};
  }

  size_t bytes_per_block(const KvShape& shape) const noexcept override {
    if (shape.layers <= 0) return 0;
    return 2 * size_t(shape.layers) * pool_bytes_per_block(shape);
  }

  hostrun::Result<std::unique_ptr<hostrun::KvCache>> allocate(const KvShape& shape, int32_t num_blocks,
                                                              hostrun::Device device) noexcept override {
    if (device.kind != hostrun::DeviceKind::cuda)
      return Status(ErrorCode::unsupported, "kv_cuda: the KV cache lives in GPU memory; the CPU was asked for");
    if (shape.layers <= 0 || shape.kv_heads <= 0 || shape.head_dim <= 0 || shape.block_tokens <= 0 || num_blocks <= 0)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cuda: expected positive layers, kv_heads, head_dim, block_tokens and block count, "
                                "found {} layers, {} KV heads, head dim {}, {} tokens per block, {} blocks",
                                shape.layers, shape.kv_heads, shape.head_dim, shape.block_tokens, num_blocks));
    if (int64_t(num_blocks) * shape.block_tokens > std::numeric_limits<int32_t>::max())
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cuda: {} blocks x {} tokens overflow the int32 slot numbers", num_blocks,
                                shape.block_tokens));
    std::unique_ptr<hostrun::KvCache> cache;
    Status made = hostrun::guard([&] { cache = std::make_unique<CudaKvCache>(shape, num_blocks, dtype_, device.index); });
    if (!made) return made;
    if (cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device.index) != cudaSuccess) num_sms_ = 132;
    return cache;
  }

  Status write(hostrun::KvCache& cache, int32_t layer, const TensorView& keys, const TensorView& values,
               const PagedKvBatch& batch, const hostrun::ExecContext& exec) noexcept override {
    return hostrun::guard([&]() -> Status {
      CudaKvCache* ours = nullptr;
      if (Status s = check_cache("write", cache, layer, batch, ours); !s) return s;
      const KvShape shape = ours->shape();
      const int64_t row = int64_t(shape.kv_heads) * shape.head_dim;
      hostrun::kv_cuda::KvWriteArgs args;
      if (Status s = check_rows("write: keys", keys, batch.num_tokens, row, dtype_, &args.keys_row_stride); !s)
        return s;
      if (Status s = check_rows("write: values", values, batch.num_tokens, row, dtype_, &args.values_row_stride); !s)
        return s;
      args.num_tokens = batch.num_tokens;
      args.row_elements = int(row);
      args.element_bytes = 2;
      args.keys = keys.data;
      args.values = values.data;
      args.slot_mapping = batch.slot_mapping;
      args.k_pages = ours->k_pool(layer);
      args.v_pages = ours->v_pool(layer);
      args.num_slots = int64_t(ours->num_blocks()) * shape.block_tokens;
      if (cudaError_t e = hostrun::kv_cuda::write_kv(args, static_cast<cudaStream_t>(exec.stream)); e != cudaSuccess)
        return cuda_status("write", e);
      return {};
    });
  }

  Status write_rotary(hostrun::KvCache& cache, int32_t layer, const TensorView& queries, const TensorView& keys,
                      const TensorView& values, const float* inv_freq, const PagedKvBatch& batch,
                      const hostrun::ExecContext& exec) noexcept override {
    return hostrun::guard([&]() -> Status {
      CudaKvCache* ours = nullptr;
      if (Status s = check_cache("write_rotary", cache, layer, batch, ours); !s) return s;
      if (batch.num_tokens == 0) return {};
      const KvShape shape = ours->shape();
      const int64_t row = int64_t(shape.kv_heads) * shape.head_dim;
      int64_t q_stride = 0, k_stride = 0, v_stride = 0;
      if (queries.rank != 3 || queries.shape[2] != shape.head_dim || queries.shape[1] % shape.kv_heads != 0)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("kv_cuda: write_rotary: queries: expected [tokens, q_heads (a multiple of {}), {}]",
                                  shape.kv_heads, shape.head_dim));
      const int64_t q_heads = queries.shape[1];
      if (Status s = check_rows("write_rotary: queries", queries, batch.num_tokens, q_heads * shape.head_dim, dtype_, &q_stride); !s)
        return s;
      if (Status s = check_rows("write_rotary: keys", keys, batch.num_tokens, row, dtype_, &k_stride); !s) return s;
      if (Status s = check_rows("write_rotary: values", values, batch.num_tokens, row, dtype_, &v_stride); !s) return s;
      if (inv_freq == nullptr || batch.positions == nullptr)
        return Status(ErrorCode::invalid_argument, "kv_cuda: write_rotary: no inv_freq table or positions");
      // rope_kv reads one fused row: [q heads | k heads | v heads].
      const auto* q = static_cast<const std::byte*>(queries.data);
      const size_t element = 2;
      const bool fused_row = q_stride == k_stride && k_stride == v_stride &&
                             static_cast<const std::byte*>(keys.data) == q + size_t(q_heads * shape.head_dim) * element &&
                             static_cast<const std::byte*>(values.data) == q + size_t(q_heads * shape.head_dim + row) * element &&
                             shape.head_dim % 16 == 0;
      if (!fused_row)
        return Status(ErrorCode::unsupported, "kv_cuda: write_rotary takes q, k and v as one fused row only");
      hostrun::cuda::RopeKvArgs args;
      args.dtype = kernel_dtype(dtype_);
      args.num_tokens = batch.num_tokens;
      args.q_heads = int(q_heads);
      args.kv_heads = shape.kv_heads;
      args.head_dim = shape.head_dim;
      args.qkv = queries.data;
      args.qkv_row_stride = q_stride;
      args.q_out = queries.data;  // rotated in place
      args.q_out_row_stride = q_stride;
      args.positions = batch.positions;
      args.inv_freq = inv_freq;
      args.slot_mapping = batch.slot_mapping;
      args.k_pages = ours->k_pool(layer);
      args.v_pages = ours->v_pool(layer);
      args.num_slots = int64_t(ours->num_blocks()) * shape.block_tokens;
      if (cudaError_t e = hostrun::cuda::rope_and_write_kv(args, static_cast<cudaStream_t>(exec.stream)); e != cudaSuccess)
        return cuda_status("write_rotary", e);
      return {};
    });
  }

  Status attend(const hostrun::KvCache& cache, int32_t layer, const TensorView& queries, const PagedKvBatch& batch,
                float softmax_scale, const TensorView& out, const hostrun::ExecContext& exec) noexcept override {
    return hostrun::guard([&]() -> Status {
      CudaKvCache* ours = nullptr;
      if (Status s = check_cache("attend", const_cast<hostrun::KvCache&>(cache), layer, batch, ours); !s) return s;
      if (batch.num_tokens == 0) return {};
      const KvShape shape = ours->shape();
      if (queries.rank != 3 || queries.shape[2] != shape.head_dim || queries.shape[1] % shape.kv_heads != 0)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("kv_cuda: attend: queries: expected [tokens, q_heads (a multiple of {}), {}]",
                                  shape.kv_heads, shape.head_dim));
      const int64_t q_heads = queries.shape[1];
      int64_t q_stride = 0, out_stride = 0;
      if (Status s = check_rows("attend: queries", queries, batch.num_tokens, q_heads * shape.head_dim, dtype_, &q_stride); !s)
        return s;
      if (Status s = check_rows("attend: out", out, batch.num_tokens, q_heads * shape.head_dim, dtype_, &out_stride); !s)
        return s;
      if (!std::isfinite(softmax_scale))
        return Status(ErrorCode::invalid_argument, fmt::format("kv_cuda: attend: softmax scale {} is not finite", softmax_scale));

      hostrun::cuda::AttentionProblem problem;
      problem.dtype = kernel_dtype(dtype_);
      problem.head_dim = shape.head_dim;
      problem.q_heads = int(q_heads);
      problem.kv_heads = shape.kv_heads;
      problem.num_sequences = batch.num_sequences;
      problem.max_query_len = std::max(1, batch.max_query_len);
      problem.max_context_len = batch.max_context_len;
      problem.max_tokens = batch.num_tokens;
      problem.num_sms = num_sms_;
      // Every layer of a step has the same problem: plan once per step.
      if (!plan_ || plan_->problem.num_sequences != problem.num_sequences || plan_->problem.q_heads != problem.q_heads ||
          plan_->problem.max_query_len != problem.max_query_len ||
          plan_->problem.max_context_len != problem.max_context_len || plan_->problem.max_tokens != problem.max_tokens ||
          plan_->problem.head_dim != problem.head_dim ||
          plan_->problem.kv_heads != problem.kv_heads)
        plan_ = std::make_unique<hostrun::cuda::AttentionPlan>(hostrun::cuda::plan_paged_attention(problem));
      const auto& plan = *plan_;
      if (!plan.valid)
        return Status(ErrorCode::unsupported, fmt::format("kv_cuda: attend: no attention kernel: {}", plan.error));
      const size_t workspace_bytes = exec.workspace.data ? exec.workspace.nbytes() : 0;
      if (plan.workspace_bytes > workspace_bytes)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("kv_cuda: attend: the attention plan needs {} bytes of workspace, the caller gave {} ({})",
                                  plan.workspace_bytes, workspace_bytes, plan.describe()));
      hostrun::cuda::PagedKvPools pools;
      pools.k_pages = ours->k_pool(layer);
      pools.v_pages = ours->v_pool(layer);
      pools.dtype = kernel_dtype(dtype_);
      pools.num_blocks = ours->num_blocks();
      pools.block_tokens = shape.block_tokens;
      pools.kv_heads = shape.kv_heads;
      pools.head_dim = shape.head_dim;
      hostrun::cuda::PagedAttentionBatch step;
      step.num_sequences = batch.num_sequences;
      step.query_start = batch.query_start;
      step.context_lens = batch.context_lens;
      step.block_tables = batch.block_tables;
      step.max_blocks_per_sequence = batch.max_blocks_per_sequence;
      // Made on first use, on the device this policy's caches live on (what
      // a failed creation left missing is tried again next time).
      if (concurrent_prefill_ && plan.run_decode && plan.run_prefill) {
        if (!side_.stream)
          if (cudaError_t made = cudaStreamCreateWithFlags(&side_.stream, cudaStreamNonBlocking); made != cudaSuccess)
            return cuda_status("creating the prefill stream", made);
        for (cudaEvent_t* event : {&side_.fork, &side_.join})
          if (!*event)
            if (cudaError_t made = cudaEventCreateWithFlags(event, cudaEventDisableTiming); made != cudaSuccess)
              return cuda_status("creating an event", made);
      }
      const bool side_ready = side_.stream && side_.fork && side_.join;
      const cudaError_t e = hostrun::cuda::paged_attention(plan, pools, step, queries.data, q_stride, softmax_scale,
                                                           out.data, out_stride, exec.workspace.data, workspace_bytes,
                                                           static_cast<cudaStream_t>(exec.stream),
                                                           concurrent_prefill_ && side_ready ? &side_ : nullptr);
      if (e != cudaSuccess) return cuda_status(fmt::format("attend ({})", plan.describe()).c_str(), e);
      return {};
    });
  }

 private:
  Status check_cache(const char* op, hostrun::KvCache& cache, int32_t layer, const PagedKvBatch& batch,
                     CudaKvCache*& ours) const {
    // Both classes live in this library, so dynamic_cast sees the same type information (as kv_cpu does).
    ours = dynamic_cast<CudaKvCache*>(&cache);
    if (ours == nullptr)
      return Status(ErrorCode::invalid_argument, fmt::format("kv_cuda: {}: the KV cache was not made by kv_cuda", op));
    if (layer < 0 || layer >= ours->shape().layers)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cuda: {}: layer {} is outside 0..{}", op, layer, ours->shape().layers - 1));
    if (batch.device.kind != hostrun::DeviceKind::cuda)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cuda: {}: the step's index arrays must be in GPU memory", op));
    if (batch.num_sequences < 0 || batch.num_tokens < 0 || batch.max_blocks_per_sequence < 0)
      return Status(ErrorCode::invalid_argument, fmt::format("kv_cuda: {}: negative sizes in the step", op));
    if (batch.num_tokens > 0 && (batch.slot_mapping == nullptr || batch.query_start == nullptr ||
                                 batch.context_lens == nullptr || batch.block_tables == nullptr))
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cuda: {}: query_start, context_lens, block_tables and slot_mapping must be given", op));
    return {};
  }

  DType dtype_;
  bool concurrent_prefill_ = true;
  hostrun::cuda::SideStream side_;  // prefill's stream and the fork/join events
  int num_sms_ = 132;
  std::unique_ptr<hostrun::cuda::AttentionPlan> plan_;  // the last step's, reused by its other layers
};

const hostrun::SettingSpec kSettings[] = {
    {"dtype", hostrun::SettingType::string,
     "Storage format of K/V pages: \"bf16\" or \"f16\" (must be the model's activation dtype)", false, "\"bf16\""},
    {"concurrent_prefill", hostrun::SettingType::boolean,
     "In a step with decode and prefill tokens, run the prefill attention on a second stream beside decode", false,
     "true"},
};
const hostrun::RoleEntry kRoles[] = {hostrun::role_entry<hostrun::KvCachePolicy, CudaKvPolicy>(kSettings, &probe)};

}  // namespace

HOSTRUN_PLUGIN("kv_cuda", "0.1.0", "Paged KV cache in GPU memory (bf16 or f16 pages) with kernels/cuda attention",
               kRoles)
