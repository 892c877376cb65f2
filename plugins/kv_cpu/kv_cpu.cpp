// kv_cpu: the paged KV cache on the CPU, in floating point or quantized.
//
// With quant_policy 0 (LMDeploy's number for an unquantized cache), pages
// hold K and V in the `dtype` setting (f32, bf16 or f16); with 8 or 4 they
// hold TurboMind's int8 / int4 codes with each token's scales inside the
// block (kernels/ref/kv_quant.hpp; int4 keys stored Walsh-Hadamard-rotated,
// so attend rotates the queries alike). Activations are f32 (llama_cpu computes
// in f32) and are rounded or quantized once, when written. Each layer has one
// K pool and one V pool laid out as kernels/ref expects, so write and attend
// are translations of the SDK's PagedKvBatch into ref::PagedKvStep.
#include <hostrun/sdk.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "ref/kv_quant.hpp"
#include "ref/paged_attention.hpp"
#include "ref/paged_kv.hpp"
#include "ref/write_kv.hpp"

namespace {

namespace ref = hostrun::ref;
using hostrun::DeviceKind;
using hostrun::ErrorCode;
using hostrun::KvShape;
using hostrun::PagedKvBatch;
using hostrun::Result;
using hostrun::Status;
using hostrun::TensorView;

ref::DType parse_dtype_setting(const std::string& name) {
  if (name == "f32") return ref::DType::f32;
  if (name == "bf16") return ref::DType::bf16;
  if (name == "f16") return ref::DType::f16;
  throw hostrun::Error(ErrorCode::invalid_argument,
                       fmt::format("kv_cpu: setting 'dtype': expected \"f32\", \"bf16\" or \"f16\", found \"{}\"", name));
}

// What one layer's pools hold: float pages of `dtype`, or quantized blocks.
struct PageFormat {
  ref::DType dtype = ref::DType::f32;
  int quant_bits = 0;  // 0, 8 or 4
};

int parse_quant_policy(int64_t policy) {
  if (policy == 0 || policy == 8 || policy == 4) return int(policy);
  throw hostrun::Error(ErrorCode::invalid_argument,
                       fmt::format("kv_cpu: setting 'quant_policy': expected 0 (pages in `dtype`), 8 (int8) or 4 "
                                   "(int4), found {}",
                                   policy));
}

Status probe(const hostrun::Device& device) noexcept {
  if (device.kind != DeviceKind::cpu)
    return Status(ErrorCode::unsupported,
                  fmt::format("kv_cpu keeps its pages in host memory and attends on the CPU; {}:{} was asked for "
                              "(use a GPU KV cache policy such as kv_cuda)",
                              hostrun::device_kind_name(device.kind), device.index));
  return {};
}

// Bytes of one layer's K pool (or V pool) per block; 0 when the shape is not positive.
size_t pool_bytes_per_block(const KvShape& shape, PageFormat format) {
  if (shape.block_tokens <= 0 || shape.kv_heads <= 0 || shape.head_dim <= 0) return 0;
  ref::KvCacheLayer layer;
  layer.dtype = format.dtype;
  layer.quant_bits = format.quant_bits;
  layer.block_tokens = size_t(shape.block_tokens);
  layer.kv_heads = size_t(shape.kv_heads);
  layer.head_dim = size_t(shape.head_dim);
  return ref::kv_pool_block_bytes(layer);
}

class CpuKvCache final : public hostrun::KvCache {
 public:
  CpuKvCache(const KvShape& shape, int32_t num_blocks, PageFormat pages)
      : shape_(shape), num_blocks_(num_blocks), pages_(pages) {
    const size_t pool_bytes = pool_bytes_per_block(shape, pages) * size_t(num_blocks);
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
    out.dtype = pages_.dtype;
    out.quant_bits = pages_.quant_bits;
    out.num_blocks = size_t(num_blocks_);
    out.block_tokens = size_t(shape_.block_tokens);
    out.kv_heads = size_t(shape_.kv_heads);
    out.head_dim = size_t(shape_.head_dim);
    return out;
  }

 private:
  KvShape shape_;
  int32_t num_blocks_;
  PageFormat pages_;
  size_t bytes_ = 0;
  std::vector<std::unique_ptr<std::byte[]>> k_pools_;
  std::vector<std::unique_ptr<std::byte[]>> v_pools_;
};

// What a ref kernel's status means, for an error message.
std::string describe(ref::Status status, const CpuKvCache& cache) {
  switch (status) {
    case ref::Status::slot_out_of_range:
      return fmt::format("a slot_mapping entry is outside the pool of {} blocks x {} tokens", cache.num_blocks(),
                         cache.shape().block_tokens);
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

// A caller's [num_tokens, heads, head_dim] f32 view in host memory: head_dim
// contiguous, the head and row strides free (q, k and v may be parts of one
// fused row). `heads` < 0 takes the view's own head count.
struct Rows {
  float* data = nullptr;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t row_stride = 0;
  int64_t head_stride = 0;

  float* head(int64_t token, int64_t h) const { return data + token * row_stride + h * head_stride; }
};

Result<Rows> host_rows(const char* what, const TensorView& view, int32_t num_tokens, int64_t heads,
                       int64_t head_dim) {
  if (view.device.kind != DeviceKind::cpu || view.dtype != hostrun::DType::f32)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("kv_cpu: {}: expected f32 values in host memory, found {} on {}", what,
                              hostrun::dtype_name(view.dtype), hostrun::device_kind_name(view.device.kind)));
  if (view.rank != 3 || view.shape[0] != num_tokens || (heads >= 0 && view.shape[1] != heads) ||
      view.shape[1] <= 0 || view.shape[2] != head_dim)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("kv_cpu: {}: expected [{} tokens, {} heads, head_dim {}], found rank {} [{}, {}, {}]",
                              what, num_tokens, heads >= 0 ? fmt::to_string(heads) : std::string("q"), head_dim,
                              view.rank, view.shape[0], view.shape[1], view.shape[2]));
  if (view.strides[2] != 1 || view.strides[1] < 0 || view.strides[0] < 0 || (view.data == nullptr && num_tokens > 0))
    return Status(ErrorCode::invalid_argument,
                  fmt::format("kv_cpu: {}: head_dim must be contiguous and the strides non-negative, found strides "
                              "[{}, {}, {}]",
                              what, view.strides[0], view.strides[1], view.strides[2]));
  return Rows{view.as<float>(), view.shape[1], head_dim, view.strides[0], view.strides[1]};
}

// Copies tokens `which` of `rows` into a packed [which.size(), heads, head_dim] array.
std::vector<float> pack(const Rows& rows, const std::vector<int32_t>& which) {
  std::vector<float> packed(which.size() * size_t(rows.heads * rows.head_dim));
  float* to = packed.data();
  for (int32_t t : which)
    for (int64_t h = 0; h < rows.heads; ++h, to += rows.head_dim) std::copy_n(rows.head(t, h), rows.head_dim, to);
  return packed;
}

class CpuKvPolicy final : public hostrun::KvCachePolicy {
 public:
  explicit CpuKvPolicy(const hostrun::CreateContext& context) : library_(context.library) {
    pages_.dtype = parse_dtype_setting(context.settings->get_string("dtype"));
    pages_.quant_bits = parse_quant_policy(context.settings->get_int("quant_policy"));
  }

  hostrun::KvFormat format() const noexcept override {
    hostrun::KvFormat format;
    // The storage format: activations are f32 whatever it is.
    format.name = pages_.quant_bits == 8 ? "int8" : pages_.quant_bits == 4 ? "int4" : ref::dtype_name(pages_.dtype);
    format.quant_policy = pages_.quant_bits;
    format.value_bits = pages_.quant_bits != 0 ? pages_.quant_bits : int32_t(8 * ref::dtype_size(pages_.dtype));
    format.activation_dtypes = hostrun::dtype_bit(hostrun::DType::f32);
    format.device = DeviceKind::cpu;
    format.rotary_write = false;  // the model rotates (ref::apply_rope), then calls write()
    return format;
  }

  size_t bytes_per_block(const KvShape& shape) const noexcept override {
    if (shape.layers <= 0) return 0;
    return 2 * size_t(shape.layers) * pool_bytes_per_block(shape, pages_);
  }

  Result<hostrun::PluginPtr<hostrun::KvCache>> allocate(const KvShape& shape, int32_t num_blocks,
                                                                 hostrun::Device device) noexcept override {
    if (Status s = probe(device); !s) return Status(s.code(), "kv_cpu: allocate: " + s.message());
    if (shape.layers <= 0 || shape.kv_heads <= 0 || shape.head_dim <= 0 || shape.block_tokens <= 0 || num_blocks <= 0)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cpu: expected positive layers, kv_heads, head_dim, block_tokens and block count, "
                                "found {} layers, {} KV heads, head dim {}, {} tokens per block, {} blocks",
                                shape.layers, shape.kv_heads, shape.head_dim, shape.block_tokens, num_blocks));
    if (shape.activation_dtype != hostrun::DType::f32)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cpu: takes f32 keys and values (any page dtype), but the shape says the model's "
                                "activations are {}",
                                hostrun::dtype_name(shape.activation_dtype)));
    const size_t per_block = bytes_per_block(shape);
    if (size_t(num_blocks) > std::numeric_limits<size_t>::max() / 4 / per_block)
      return Status(ErrorCode::out_of_memory, fmt::format("kv_cpu: {} blocks of {} bytes overflow", num_blocks, per_block));
    hostrun::PluginPtr<hostrun::KvCache> cache;
    Status made = hostrun::guard([&] { cache = hostrun::make_pinned<CpuKvCache>(library_, shape, num_blocks, pages_); });
    if (!made) {
      if (made.code() == ErrorCode::out_of_memory)
        return Status(ErrorCode::out_of_memory,
                      fmt::format("kv_cpu: cannot allocate {} blocks x {} bytes ({} MiB) of host memory", num_blocks,
                                  per_block, (per_block * size_t(num_blocks)) >> 20));
      return made;
    }
    return cache;
  }

  // None: the CPU kernels run synchronously on the calling thread, never
  // under stream capture, so the little scratch they take (a row of scores,
  // packed copies of strided views) comes from the heap during the call and
  // there is no device memory for the model to plan.
  Result<size_t> workspace_bytes(const hostrun::KvWorkspaceQuery& query) const noexcept override {
    if (Status s = probe(query.device); !s) return Status(s.code(), "kv_cpu: workspace_bytes: " + s.message());
    return size_t(0);
  }

  Status write(hostrun::KvCache& cache, int32_t layer, const TensorView& keys, const TensorView& values,
               const PagedKvBatch& batch, const hostrun::ExecContext&) noexcept override {
    return hostrun::guard([&]() -> Status {
      auto ours = checked_cache("write", cache, layer, batch);
      if (!ours) return ours.status();
      const KvShape shape = ours.value()->shape();
      auto k = host_rows("write: keys", keys, batch.num_tokens, shape.kv_heads, shape.head_dim);
      if (!k) return k.status();
      auto v = host_rows("write: values", values, batch.num_tokens, shape.kv_heads, shape.head_dim);
      if (!v) return v.status();
      if (batch.num_tokens > 0 && batch.slot_mapping == nullptr)
        return Status(ErrorCode::invalid_argument, "kv_cpu: write: slot_mapping must be given");
      // Tokens with a negative slot are padding: not written.
      std::vector<int32_t> written;
      std::vector<int64_t> slots;
      for (int32_t t = 0; t < batch.num_tokens; ++t)
        if (batch.slot_mapping[t] >= 0) {
          written.push_back(t);
          slots.push_back(batch.slot_mapping[t]);
        }
      // ref::write_kv reads only the slots and the token count of its step.
      const int32_t query_start[2] = {0, int32_t(written.size())};
      ref::PagedKvStep step;
      step.num_sequences = 1;
      step.query_start = query_start;
      step.slot_mapping = slots.data();
      const ref::Status status =
          ref::write_kv(ours.value()->layer(layer), step, pack(k.value(), written).data(), pack(v.value(), written).data());
      if (status != ref::Status::ok)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("kv_cpu: write (layer {}): {}", layer, describe(status, *ours.value())));
      return {};
    });
  }

  Status attend(const hostrun::KvCache& cache, int32_t layer, const TensorView& queries, const PagedKvBatch& batch,
                float softmax_scale, const TensorView& out, const hostrun::ExecContext&) noexcept override {
    return hostrun::guard([&]() -> Status {
      auto ours = checked_cache("attend", cache, layer, batch);
      if (!ours) return ours.status();
      const KvShape shape = ours.value()->shape();
      auto q = host_rows("attend: queries", queries, batch.num_tokens, -1, shape.head_dim);
      if (!q) return q.status();
      const int64_t q_heads = q.value().heads;
      auto o = host_rows("attend: out", out, batch.num_tokens, q_heads, shape.head_dim);
      if (!o) return o.status();
      if (!std::isfinite(softmax_scale))
        return Status(ErrorCode::invalid_argument, fmt::format("kv_cpu: attend: softmax scale {} is not finite", softmax_scale));
      if (batch.num_sequences > 0 &&
          (batch.query_start == nullptr || batch.context_lens == nullptr || batch.block_tables == nullptr))
        return Status(ErrorCode::invalid_argument, "kv_cpu: attend: query_start, context_lens and block_tables must be given");
      const int32_t covered = batch.num_sequences > 0 ? batch.query_start[batch.num_sequences] : 0;
      if (covered != batch.num_tokens)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("kv_cpu: attend: query_start ends at {} but the step has {} tokens", covered,
                                  batch.num_tokens));
      std::vector<int64_t> slots = slots_from_block_tables(batch, shape.block_tokens);
      ref::PagedKvStep step;
      step.num_sequences = size_t(batch.num_sequences);
      step.query_start = batch.query_start;
      step.context_lens = batch.context_lens;
      step.block_tables = batch.block_tables;
      step.max_blocks_per_sequence = size_t(batch.max_blocks_per_sequence);
      step.block_tokens = size_t(shape.block_tokens);
      step.slot_mapping = slots.data();
      std::vector<int32_t> all_tokens(size_t(batch.num_tokens));
      for (int32_t t = 0; t < batch.num_tokens; ++t) all_tokens[size_t(t)] = t;
      std::vector<float> attended(all_tokens.size() * size_t(q_heads * shape.head_dim));
      std::vector<float> queries = pack(q.value(), all_tokens);
      const ref::KvCacheLayer& pages = ours.value()->layer(layer);
      if (ref::kv_keys_rotated(pages.quant_bits))  // int4 keys are stored rotated
        for (size_t row = 0; row < queries.size() / size_t(shape.head_dim); ++row)
          ref::rotate_kv_row(queries.data() + row * size_t(shape.head_dim), size_t(shape.head_dim));
      const ref::Status status =
          ref::paged_attention(pages, step, queries.data(), size_t(q_heads), softmax_scale, attended.data());
      if (status != ref::Status::ok)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("kv_cpu: attend (layer {}): {}", layer, describe(status, *ours.value())));
      const float* from = attended.data();
      for (int32_t t = 0; t < batch.num_tokens; ++t)
        for (int64_t h = 0; h < q_heads; ++h, from += shape.head_dim) std::copy_n(from, shape.head_dim, o.value().head(t, h));
      return {};
    });
  }

 private:
  // The cache is ours, the layer exists, the batch's arrays are host memory
  // and its sizes are not negative.
  static Result<const CpuKvCache*> checked_cache(const char* op, const hostrun::KvCache& cache, int32_t layer,
                                                 const PagedKvBatch& batch) {
    const auto* ours = dynamic_cast<const CpuKvCache*>(&cache);
    if (ours == nullptr)
      return Status(ErrorCode::invalid_argument, fmt::format("kv_cpu: {}: the KV cache was not made by kv_cpu", op));
    if (layer < 0 || layer >= ours->shape().layers)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cpu: {}: layer {} is outside 0..{}", op, layer, ours->shape().layers - 1));
    if (batch.device.kind != DeviceKind::cpu)
      return Status(ErrorCode::invalid_argument, fmt::format("kv_cpu: {}: the step's index arrays must be in host memory", op));
    if (batch.num_sequences < 0 || batch.num_tokens < 0 || batch.max_blocks_per_sequence < 0)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("kv_cpu: {}: negative sizes ({} sequences, {} tokens, {} blocks per sequence)", op,
                                batch.num_sequences, batch.num_tokens, batch.max_blocks_per_sequence));
    return ours;
  }

  // Attention reads every position through the block tables, never through
  // slot_mapping (a padding token has none); ref::paged_attention checks each
  // new token's slot against its block table, so it is given exactly those.
  // A layout too broken to say (a position past the sequence's blocks) gets
  // -1, which that check reports.
  static std::vector<int64_t> slots_from_block_tables(const PagedKvBatch& batch, int32_t block_tokens) {
    std::vector<int64_t> slots(size_t(batch.num_tokens), -1);
    for (int32_t s = 0; s < batch.num_sequences; ++s) {
      const int32_t first = batch.query_start[s];
      const int32_t new_tokens = batch.query_start[s + 1] - first;
      const int32_t cached = batch.context_lens[s] - new_tokens;
      for (int32_t j = 0; j < new_tokens && cached >= 0; ++j) {
        const int32_t position = cached + j;
        const int32_t block = position / block_tokens;
        if (first + j < 0 || first + j >= batch.num_tokens || block >= batch.max_blocks_per_sequence) continue;
        slots[size_t(first + j)] =
            int64_t(batch.block_tables[size_t(s) * size_t(batch.max_blocks_per_sequence) + size_t(block)]) *
                block_tokens +
            position % block_tokens;
      }
    }
    return slots;
  }

  hostrun::LibraryPin library_;
  PageFormat pages_;
};

const hostrun::SettingSpec kSettings[] = {
    {"dtype", hostrun::SettingType::string,
     "Storage format of K/V pages when quant_policy is 0: \"f32\", \"bf16\" or \"f16\" (keys and values arrive as "
     "f32 and are rounded once, when written)",
     false, "\"f32\""},
    {"quant_policy", hostrun::SettingType::integer,
     "KV quantization, LMDeploy's --quant-policy: 0 (pages in dtype), 8 (int8) or 4 (int4), asymmetric per token "
     "and KV head with the scales in the block",
     false, "0", 0, 8},
};
const hostrun::RoleEntry kRoles[] = {hostrun::role_entry<hostrun::KvCachePolicy, CpuKvPolicy>(kSettings, &probe)};

}  // namespace

HOSTRUN_PLUGIN("kv_cpu", "0.3.0",
               "Paged KV cache in host memory (f32, bf16 or f16 pages, or int8/int4 quantized) with reference attention",
               kRoles)
