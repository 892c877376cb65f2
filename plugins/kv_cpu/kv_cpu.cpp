// kv_cpu: the floating-point paged KV cache on the CPU.
//
// Pages hold K and V in the `dtype` setting (f32, bf16 or f16); activations
// stay f32 and are rounded once, when written. Each layer has one K pool and
// one V pool laid out as kernels/ref expects ([num_blocks, block_tokens,
// kv_heads, head_dim]), so write and attend are thin translations of the
// SDK's PagedKvBatch into ref::PagedKvStep. quant_policy is 0 (LMDeploy's
// number for an unquantized cache) whatever the dtype.
#include <hostrun/sdk.hpp>

#include <fmt/format.h>

#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "ref/paged_attention.hpp"
#include "ref/paged_kv.hpp"
#include "ref/write_kv.hpp"

namespace {

namespace ref = hostrun::ref;
using hostrun::ErrorCode;
using hostrun::KvShape;
using hostrun::PagedKvBatch;
using hostrun::Status;
using hostrun::TensorView;

ref::DType parse_dtype_setting(const std::string& name) {
  if (name == "f32") return ref::DType::f32;
  if (name == "bf16") return ref::DType::bf16;
  if (name == "f16") return ref::DType::f16;
  throw hostrun::Error(ErrorCode::invalid_argument,
                       fmt::format("kv_cpu: setting 'dtype': expected \"f32\", \"bf16\" or \"f16\", found \"{}\"", name));
}

// Bytes of one layer's K pool (or V pool) per block; 0 when the shape is not positive.
size_t pool_bytes_per_block(const KvShape& shape, ref::DType dtype) {
  if (shape.block_tokens <= 0 || shape.kv_heads <= 0 || shape.head_dim <= 0) return 0;
  return size_t(shape.block_tokens) * size_t(shape.kv_heads) * size_t(shape.head_dim) * ref::dtype_size(dtype);
}

class CpuKvCache final : public hostrun::KvCache {
 public:
  CpuKvCache(const KvShape& shape, int32_t num_blocks, ref::DType dtype)
      : shape_(shape), num_blocks_(num_blocks), dtype_(dtype) {
    const size_t pool_bytes = pool_bytes_per_block(shape, dtype) * size_t(num_blocks);
    for (int32_t layer = 0; layer < shape.layers; ++layer) {
      // Default-initialised on purpose: pages the engine never hands out stay
      // untouched (and, for a large budget, unbacked by the OS); attention
      // reads only slots a write filled.
      k_pools_.emplace_back(new std::byte[pool_bytes]);
      v_pools_.emplace_back(new std::byte[pool_bytes]);
    }
    bytes_ = 2 * pool_bytes * size_t(shape.layers);
  }

  int32_t num_blocks() const noexcept override { return num_blocks_; }
  size_t bytes() const noexcept override { return bytes_; }
  KvShape shape() const noexcept override { return shape_; }

  ref::KvCacheLayer layer(int32_t index) const {
    ref::KvCacheLayer out;
    out.k_pages = k_pools_[size_t(index)].get();
    out.v_pages = v_pools_[size_t(index)].get();
    out.dtype = dtype_;
    out.num_blocks = size_t(num_blocks_);
    out.block_tokens = size_t(shape_.block_tokens);
    out.kv_heads = size_t(shape_.kv_heads);
    out.head_dim = size_t(shape_.head_dim);
    return out;
  }

 private:
  KvShape shape_;
  int32_t num_blocks_;
  ref::DType dtype_;
  size_t bytes_ = 0;
  std::vector<std::unique_ptr<std::byte[]>> k_pools_;
  std::vector<std::unique_ptr<std::byte[]>> v_pools_;
};

// What a ref kernel's status means, for an error message.
std::string describe(ref::Status status, const CpuKvCache& cache) {
  switch (status) {
    case ref::Status::slot_out_of_range:
      return fmt::format("a slot_mapping entry is outside the pool of {} blocks x {} tokens, or is not the slot the "
                         "block table gives its position",
                         cache.num_blocks(), cache.shape().block_tokens);
    case ref::Status::block_out_of_range:
      return fmt::format("a block table entry is outside the pool of {} blocks", cache.num_blocks());
    case ref::Status::bad_step_layout:
      return "query_start / context_lens / block tables are inconsistent (query_start must start at 0 and not "
             "decrease, each context must hold its new tokens and fit in max_blocks_per_sequence blocks)";
    case ref::Status::invalid_argument:
      return "the number of query heads is not a positive multiple of the KV heads";
    default: return ref::status_name(status);
  }
}

// The caller's tensor of [num_tokens, heads, head_dim] f32 values in host memory.
Status check_activation(const char* what, const TensorView& view, int32_t num_tokens, int64_t row_elements) {
  if (view.device.kind != hostrun::DeviceKind::cpu || view.dtype != hostrun::DType::f32 || !view.is_contiguous() ||
      (view.data == nullptr && view.numel() > 0))
    return Status(ErrorCode::invalid_argument,
                  fmt::format("kv_cpu: {}: expected a contiguous f32 tensor in host memory, found {} on {}", what,
                              hostrun::dtype_name(view.dtype),
                              view.device.kind == hostrun::DeviceKind::cpu ? "the CPU" : "a GPU"));
  if (view.numel() != int64_t(num_tokens) * row_elements || (view.rank > 0 && view.shape[0] != num_tokens))
    return Status(ErrorCode::invalid_argument,
                  fmt::format("kv_cpu: {}: expected {} tokens x {} values, found {} values (first dimension {})", what,
                              num_tokens, row_elements, view.numel(), view.rank > 0 ? view.shape[0] : 0));
  return {};
}

class CpuKvPolicy final : public hostrun::KvCachePolicy {
 public:
  explicit CpuKvPolicy(const hostrun::CreateContext& context)
      : dtype_(parse_dtype_setting(context.settings->get_string("dtype"))) {}

  hostrun::KvFormat format() const noexcept override {
    return hostrun::KvFormat{ref::dtype_name(dtype_), 0, int32_t(8 * ref::dtype_size(dtype_))};
  }

  size_t bytes_per_block(const KvShape& shape) const noexcept override {
    if (shape.layers <= 0) return 0;
    return 2 * size_t(shape.layers) * pool_bytes_per_block(shape, dtype_);
  }

  hostrun::Result<std::unique_ptr<hostrun::KvCache>> allocate(const KvShape& shape, int32_t num_blocks,
                                                              hostrun::Device device) noexcept override {
    if (device.kind != hostrun::DeviceKind::cpu)
      return Status(ErrorCode::unsupported, "kv_cpu: the KV cache lives in host memory; a GPU device was asked for");
    if (shape.layers <= 0 || shape.kv_heads <= 0 || shape.head_dim <= 0 || shape.block_tokens <= 0 || num_blocks <= 0)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cpu: expected positive layers, kv_heads, head_dim, block_tokens and block count, "
                                "found {} layers, {} KV heads, head dim {}, {} tokens per block, {} blocks",
                                shape.layers, shape.kv_heads, shape.head_dim, shape.block_tokens, num_blocks));
    const size_t per_block = bytes_per_block(shape);
    if (size_t(num_blocks) > std::numeric_limits<size_t>::max() / 4 / per_block)
      return Status(ErrorCode::out_of_memory, fmt::format("kv_cpu: {} blocks of {} bytes overflow", num_blocks, per_block));
    std::unique_ptr<hostrun::KvCache> cache;
    Status made = hostrun::guard([&] { cache = std::make_unique<CpuKvCache>(shape, num_blocks, dtype_); });
    if (!made) {
      if (made.code() == ErrorCode::out_of_memory)
        return Status(ErrorCode::out_of_memory,
                      fmt::format("kv_cpu: cannot allocate {} blocks x {} bytes ({} MiB) of host memory", num_blocks,
                                  per_block, (per_block * size_t(num_blocks)) >> 20));
      return made;
    }
    return cache;
  }

  Status write(hostrun::KvCache& cache, int32_t layer, const TensorView& keys, const TensorView& values,
               const PagedKvBatch& batch, const hostrun::ExecContext&) noexcept override {
    return hostrun::guard([&]() -> Status {
      const CpuKvCache* ours = nullptr;
      ref::PagedKvStep step;
      std::vector<int64_t> slots;
      if (Status s = translate("write", cache, layer, batch, ours, step, slots); !s) return s;
      const int64_t row = int64_t(ours->shape().kv_heads) * ours->shape().head_dim;
      if (Status s = check_activation("write: keys", keys, batch.num_tokens, row); !s) return s;
      if (Status s = check_activation("write: values", values, batch.num_tokens, row); !s) return s;
      const ref::Status written = ref::write_kv(ours->layer(layer), step, keys.as<float>(), values.as<float>());
      if (written != ref::Status::ok)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("kv_cpu: write (layer {}): {}", layer, describe(written, *ours)));
      return {};
    });
  }

  Status attend(const hostrun::KvCache& cache, int32_t layer, const TensorView& queries, const PagedKvBatch& batch,
                float softmax_scale, const TensorView& out, const hostrun::ExecContext&) noexcept override {
    return hostrun::guard([&]() -> Status {
      const CpuKvCache* ours = nullptr;
      ref::PagedKvStep step;
      std::vector<int64_t> slots;
      if (Status s = translate("attend", cache, layer, batch, ours, step, slots); !s) return s;
      const int64_t head_dim = ours->shape().head_dim;
      if (batch.num_tokens == 0) return {};
      const int64_t per_token = queries.numel() / batch.num_tokens;
      if (per_token % head_dim != 0 || per_token == 0)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("kv_cpu: attend: queries: expected {} tokens x q_heads x head dim {}, found {} values",
                                  batch.num_tokens, head_dim, queries.numel()));
      if (Status s = check_activation("attend: queries", queries, batch.num_tokens, per_token); !s) return s;
      if (Status s = check_activation("attend: out", out, batch.num_tokens, per_token); !s) return s;
      if (!std::isfinite(softmax_scale))
        return Status(ErrorCode::invalid_argument, fmt::format("kv_cpu: attend: softmax scale {} is not finite", softmax_scale));
      const ref::Status attended = ref::paged_attention(ours->layer(layer), step, queries.as<float>(),
                                                        size_t(per_token / head_dim), softmax_scale, out.as<float>());
      if (attended != ref::Status::ok)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("kv_cpu: attend (layer {}): {}", layer, describe(attended, *ours)));
      return {};
    });
  }

 private:
  // Checks what the ref kernels do not (the cache is ours, the layer exists,
  // the arrays are there) and fills a ref::PagedKvStep that points into
  // `batch`, with the slots widened to the kernels' int64.
  Status translate(const char* op, const hostrun::KvCache& cache, int32_t layer, const PagedKvBatch& batch,
                   const CpuKvCache*& ours, ref::PagedKvStep& step, std::vector<int64_t>& slots) const {
    ours = dynamic_cast<const CpuKvCache*>(&cache);
    if (ours == nullptr)
      return Status(ErrorCode::invalid_argument, fmt::format("kv_cpu: {}: the KV cache was not made by kv_cpu", op));
    if (layer < 0 || layer >= ours->shape().layers)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cpu: {}: layer {} is outside 0..{}", op, layer, ours->shape().layers - 1));
    if (batch.device.kind != hostrun::DeviceKind::cpu)
      return Status(ErrorCode::invalid_argument, fmt::format("kv_cpu: {}: the step's index arrays must be in host memory", op));
    if (batch.num_sequences < 0 || batch.num_tokens < 0 || batch.max_blocks_per_sequence < 0)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cpu: {}: negative sizes ({} sequences, {} tokens, {} blocks per sequence)", op,
                                batch.num_sequences, batch.num_tokens, batch.max_blocks_per_sequence));
    if (batch.num_sequences > 0 &&
        (batch.query_start == nullptr || batch.context_lens == nullptr || batch.block_tables == nullptr))
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cpu: {}: query_start, context_lens and block_tables must be given", op));
    const int32_t tokens = batch.num_sequences > 0 ? batch.query_start[batch.num_sequences] : 0;
    if (tokens != batch.num_tokens || (batch.num_sequences == 0 && batch.num_tokens != 0))
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cpu: {}: query_start ends at {} but the step has {} tokens", op, tokens,
                                batch.num_tokens));
    if (batch.num_tokens > 0 && batch.slot_mapping == nullptr)
      return Status(ErrorCode::invalid_argument, fmt::format("kv_cpu: {}: slot_mapping must be given", op));
    slots.assign(batch.slot_mapping, batch.slot_mapping + batch.num_tokens);
    step.num_sequences = size_t(batch.num_sequences);
    step.query_start = batch.query_start;
    step.context_lens = batch.context_lens;
    step.block_tables = batch.block_tables;
    step.max_blocks_per_sequence = size_t(batch.max_blocks_per_sequence);
    step.block_tokens = size_t(ours->shape().block_tokens);
    step.slot_mapping = slots.data();
    return {};
  }

  ref::DType dtype_;
};

const hostrun::SettingSpec kSettings[] = {
    {"dtype", hostrun::SettingType::string,
     "Storage format of K/V pages: \"f32\", \"bf16\" or \"f16\" (activations stay f32)", false, "\"f32\""},
};
const hostrun::RoleEntry kRoles[] = {hostrun::role_entry<hostrun::KvCachePolicy, CpuKvPolicy>(kSettings)};

}  // namespace

HOSTRUN_PLUGIN("kv_cpu", "0.1.0", "Paged KV cache in host memory (f32, bf16 or f16 pages) with reference attention",
               kRoles)
