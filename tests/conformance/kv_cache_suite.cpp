// KvCachePolicy conformance: what every policy must do, checked against
// kv_cpu with f32 pages (the reference, always in host memory) on random
// keys, values and queries.
//
// A scenario is four steps over four sequences on a two-layer cache with
// scrambled block tables: prefills, a prefill chunk after a cached prefix,
// decode tokens, and a long chunk between decodes. Every step, both policies
// get the same values (rounded to the row's activation dtype; the reference
// as packed f32 host rows, the policy under test as strided views on its
// device, alternately parts of one fused QKV row and three separate padded
// buffers); every attention output and every query rotated by write_rotary
// must agree within the row's tolerance. Around that: nothing outside the
// views changes, a padding slot (< 0) is not written, attention runs in
// exactly workspace_bytes() of workspace, and bad calls fail without
// touching the cache.
#include "kv_cache_suite.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>

#include "hostrun/model.hpp"
#include "hostrun/plugin.hpp"
#include "hostrun/step.hpp"
#include "ref/rope.hpp"

namespace conformance {

namespace {

using namespace hostrun;

struct KvCase {
  const char* name;
  int32_t q_heads;
  int32_t kv_heads;
  int32_t head_dim;
  int32_t block_tokens;
};

const KvCase kCases[] = {
    {"MHA, head_dim 64, 16-token pages", 4, 4, 64, 16},
    {"GQA 4:1, head_dim 128, 16-token pages", 8, 2, 128, 16},
    {"GQA 8:1, head_dim 64, 32-token pages", 8, 1, 64, 32},
    {"GQA 2:1, head_dim 128, 64-token pages", 4, 2, 128, 64},
};

constexpr int32_t kLayers = 2;
constexpr int32_t kNumBlocks = 32;
// Elements after each row of a strided view (NaN there: a policy that reads
// them poisons its output).
constexpr int64_t kRowPadding = 8;
// Bytes after the workspace that must come back unchanged.
constexpr size_t kCanaryBytes = 256;

// Each step: (sequence, new tokens) in batch order.
const std::vector<std::vector<std::pair<int, int32_t>>> kSteps = {
    {{0, 37}, {1, 5}, {2, 20}},         // prefills
    {{0, 1}, {1, 23}, {2, 1}, {3, 9}},  // a decode, a chunk after a cached prefix, a decode, a fresh prefill
    {{0, 1}, {1, 1}, {2, 1}, {3, 1}},   // decodes only
    {{3, 1}, {0, 70}, {2, 1}},          // a long chunk after a cached prefix, between decodes
};

ref::RopeTable rope_table(int32_t head_dim) {
  ref::RopeParams params;
  params.head_dim = size_t(head_dim);
  params.theta = 500000.0;
  params.scaling_type = ref::RopeScalingType::llama3;
  params.factor = 8.0;
  params.original_max_position_embeddings = 64.0;  // short, so the scaling reaches these positions
  return ref::make_rope_table(params);
}

KvShape shape_of(const KvCase& c, DType activation_dtype) {
  return KvShape{kLayers, c.kv_heads, c.head_dim, c.block_tokens, activation_dtype};
}

// The index arrays of one step on the device, and a batch pointing at them.
struct DeviceBatch {
  std::vector<DeviceBuffer> arrays;
  PagedKvBatch batch;

  DeviceBatch(DeviceMemory& memory, const PagedLayout& layout, const std::vector<int32_t>& slot_mapping) {
    batch = layout.host_batch();
    batch.device = memory.device();
    auto up = [&](const std::vector<int32_t>& values) {
      arrays.emplace_back(memory, values.size() * sizeof(int32_t));
      memory.upload(arrays.back().data(), values.data(), values.size() * sizeof(int32_t));
      return arrays.back().as<const int32_t>();
    };
    batch.query_start = up(layout.query_start);
    batch.context_lens = up(layout.context_lens);
    batch.block_tables = up(layout.block_tables);
    batch.slot_mapping = up(slot_mapping);
    batch.positions = up(layout.positions);
  }
};

// The reference: kv_cpu with f32 pages, fed packed f32 host rows.
struct Reference {
  std::unique_ptr<core::PluginRegistry> registry;
  core::PluginHandle<KvCachePolicy> policy;
  PluginPtr<KvCache> cache;

  explicit Reference(const KvCase& c) : registry(plugin_registry()) {
    Settings settings;
    settings.set("dtype", std::string("f32"));
    auto made = registry->create<KvCachePolicy>("kv_cpu", settings, nullptr);
    REQUIRE_MESSAGE(made.has_value(), made.status().message());
    policy = made.value();
    auto allocated = policy->allocate(shape_of(c, DType::f32), kNumBlocks, Device{});
    REQUIRE_MESSAGE(allocated.has_value(), allocated.status().message());
    cache = std::move(allocated.value());
  }
  static TensorView rows(std::vector<float>& values, int64_t tokens, int64_t heads, int64_t head_dim) {
    return TensorView::contiguous(values.data(), DType::f32, {tokens, heads, head_dim});
  }
  void write(int32_t layer, std::vector<float>& k, std::vector<float>& v, const PagedLayout& layout, const KvCase& c) {
    const int64_t t = layout.num_tokens();
    Status s = policy->write(*cache, layer, rows(k, t, c.kv_heads, c.head_dim), rows(v, t, c.kv_heads, c.head_dim),
                             layout.host_batch(), ExecContext{});
    REQUIRE_MESSAGE(s.is_ok(), "reference write: " << s.message());
  }
  std::vector<float> attend(int32_t layer, std::vector<float>& q, const PagedLayout& layout, const KvCase& c,
                            float scale) {
    const int64_t t = layout.num_tokens();
    std::vector<float> out(q.size());
    Status s = policy->attend(*cache, layer, rows(q, t, c.q_heads, c.head_dim), layout.host_batch(), scale,
                              rows(out, t, c.q_heads, c.head_dim), ExecContext{});
    REQUIRE_MESSAGE(s.is_ok(), "reference attend: " << s.message());
    return out;
  }
};

// The policy of a row, made as the host makes it (its probe asked about the device).
struct UnderTest {
  std::unique_ptr<core::PluginRegistry> registry;
  core::PluginHandle<KvCachePolicy> policy;

  explicit UnderTest(const KvPolicyRow& row) : registry(plugin_registry()) {
    REQUIRE_MESSAGE(registry->find(row.plugin), missing_plugin(*registry, row.plugin));
    auto made = registry->create<KvCachePolicy>(row.plugin, settings_of(row.settings), nullptr, "kv_cache",
                                                kv_device_memory().device());
    REQUIRE_MESSAGE(made.has_value(), made.status().message());
    policy = made.value();
  }
};

// Sequences as an engine keeps them: cached tokens and a block table from a
// scrambled free list.
struct Sequences {
  std::vector<int32_t> cached = std::vector<int32_t>(4, 0);
  std::vector<std::vector<int32_t>> blocks = std::vector<std::vector<int32_t>>(4);
  std::vector<int32_t> free_blocks;
  int32_t block_tokens;

  explicit Sequences(int32_t tokens_per_block, uint32_t seed) : block_tokens(tokens_per_block) {
    free_blocks.resize(kNumBlocks);
    std::iota(free_blocks.begin(), free_blocks.end(), 0);
    std::shuffle(free_blocks.begin(), free_blocks.end(), std::mt19937(seed));
  }

  // The step's StepInput (ids are not read by a policy) and its layout.
  PagedLayout layout(const std::vector<std::pair<int, int32_t>>& parts) {
    std::vector<StepSequence> steps;
    int32_t tokens = 0;
    for (auto [s, count] : parts) {
      while (int32_t(blocks[size_t(s)].size()) * block_tokens < cached[size_t(s)] + count) {
        REQUIRE(!free_blocks.empty());
        blocks[size_t(s)].push_back(free_blocks.back());
        free_blocks.pop_back();
      }
      StepSequence seq;
      seq.query_start = tokens;
      seq.query_len = count;
      seq.cached_len = cached[size_t(s)];
      seq.block_table = blocks[size_t(s)];
      steps.push_back(seq);
      tokens += count;
    }
    ids.assign(size_t(tokens), 0);
    positions.clear();
    for (const auto& seq : steps)
      for (int32_t j = 0; j < seq.query_len; ++j) positions.push_back(seq.cached_len + j);
    input = StepInput{ids, positions, {}};
    sequences = std::move(steps);
    input.sequences = sequences;
    PagedLayout out;
    out.build(input, whole_sequences(input), block_tokens);
    return out;
  }
  void commit(const std::vector<std::pair<int, int32_t>>& parts) {
    for (auto [s, count] : parts) cached[size_t(s)] += count;
  }

  std::vector<TokenId> ids;
  std::vector<int32_t> positions;
  std::vector<StepSequence> sequences;
  StepInput input;
};

enum class WriteMode { write, write_rotary };

// Where q, k and v sit on the device: parts of one fused row, or three
// separate buffers; every row has kRowPadding elements after it.
struct StepViews {
  Staging qkv;  // fused: [t, q + k + v + pad]; separate: q only, [t, q + pad]
  std::optional<Staging> k_buffer, v_buffer;
  int64_t q_stride, k_stride, v_stride;
  size_t k_offset, v_offset;
  bool fused;

  StepViews(DeviceMemory& memory, DType dtype, int64_t t, const KvCase& c, bool fuse)
      : qkv(memory, dtype,
            size_t(t * (fuse ? int64_t(c.q_heads + 2 * c.kv_heads) * c.head_dim + kRowPadding
                             : int64_t(c.q_heads) * c.head_dim + kRowPadding))),
        fused(fuse) {
    const int64_t q_size = int64_t(c.q_heads) * c.head_dim, kv_size = int64_t(c.kv_heads) * c.head_dim;
    if (fuse) {
      q_stride = k_stride = v_stride = q_size + 2 * kv_size + kRowPadding;
      k_offset = size_t(q_size);
      v_offset = size_t(q_size + kv_size);
    } else {
      q_stride = q_size + kRowPadding;
      k_stride = v_stride = kv_size + kRowPadding;
      k_offset = v_offset = 0;
      k_buffer.emplace(memory, dtype, size_t(t * k_stride));
      v_buffer.emplace(memory, dtype, size_t(t * v_stride));
    }
  }
  Staging& k_staging() { return fused ? qkv : *k_buffer; }
  Staging& v_staging() { return fused ? qkv : *v_buffer; }
  void upload() {
    qkv.upload();
    if (!fused) k_buffer->upload(), v_buffer->upload();
  }
  void download() {
    qkv.download();
    if (!fused) k_buffer->download(), v_buffer->download();
  }
  std::vector<std::vector<std::byte>> images() const {
    std::vector<std::vector<std::byte>> out{qkv.image()};
    if (!fused) out.push_back(k_buffer->image()), out.push_back(v_buffer->image());
    return out;
  }
};

// Runs the scenario for one row and case; every mismatch is a doctest failure naming the step and layer.
void run_scenario(const KvPolicyRow& row, const KvCase& c, WriteMode mode) {
  const std::string label = row.label;
  DeviceMemory& memory = kv_device_memory();
  UnderTest tested(row);
  Reference reference(c);
  const KvShape shape = shape_of(c, row.activation_dtype);
  auto allocated = tested.policy->allocate(shape, kNumBlocks, memory.device());
  REQUIRE_MESSAGE(allocated.has_value(), allocated.status().message());
  PluginPtr<KvCache> cache = std::move(allocated.value());
  const float softmax_scale = 1.0f / std::sqrt(float(c.head_dim));
  const ref::RopeTable rope = rope_table(c.head_dim);
  DeviceBuffer inv_freq(memory, rope.inv_freq.size() * sizeof(float));
  memory.upload(inv_freq.data(), rope.inv_freq.data(), inv_freq.bytes());
  const int64_t q_size = int64_t(c.q_heads) * c.head_dim, kv_size = int64_t(c.kv_heads) * c.head_dim;
  Sequences sequences(c.block_tokens, 11);

  for (size_t step = 0; step < kSteps.size(); ++step) {
    const PagedLayout layout = sequences.layout(kSteps[step]);
    const int64_t t = layout.num_tokens();
    DeviceBatch device_batch(memory, layout, layout.slot_mapping);
    KvWorkspaceQuery query{shape, c.q_heads, int32_t(t), layout.num_sequences, layout.max_context_len, memory.device()};
    auto workspace_bytes = tested.policy->workspace_bytes(query);
    REQUIRE_MESSAGE(workspace_bytes.has_value(), workspace_bytes.status().message());
    DeviceBuffer workspace(memory, workspace_bytes.value() + kCanaryBytes);
    const std::vector<std::byte> canary(kCanaryBytes, std::byte{0xa5});
    memory.upload(workspace.as<std::byte>() + workspace_bytes.value(), canary.data(), kCanaryBytes);
    ExecContext exec{memory.device(), memory.stream(), {}};
    exec.workspace = TensorView::contiguous(workspace.data(), DType::u8, {int64_t(workspace_bytes.value())}, memory.device());

    for (int32_t layer = 0; layer < kLayers; ++layer) {
      CAPTURE(step);
      CAPTURE(layer);
      const uint32_t seed = uint32_t(1000 * step + 10 * layer + (mode == WriteMode::write_rotary));
      // Queries sharper than unit scale, so attention is far from uniform.
      std::vector<float> q = rounded_to(random_values(size_t(t * q_size), seed, 4.0f), row.activation_dtype);
      std::vector<float> k = rounded_to(random_values(size_t(t * kv_size), seed + 1), row.activation_dtype);
      std::vector<float> v = rounded_to(random_values(size_t(t * kv_size), seed + 2), row.activation_dtype);
      StepViews views(memory, row.activation_dtype, t, c, (step + size_t(layer)) % 2 == 0);
      views.qkv.put(0, t, views.q_stride, q_size, q);
      views.k_staging().put(views.k_offset, t, views.k_stride, kv_size, k);
      views.v_staging().put(views.v_offset, t, views.v_stride, kv_size, v);
      views.upload();
      const auto images_before = views.images();
      const TensorView q_view = views.qkv.view(0, {t, c.q_heads, c.head_dim}, views.q_stride);
      const TensorView k_view = views.k_staging().view(views.k_offset, {t, c.kv_heads, c.head_dim}, views.k_stride);
      const TensorView v_view = views.v_staging().view(views.v_offset, {t, c.kv_heads, c.head_dim}, views.v_stride);

      if (mode == WriteMode::write_rotary) {
        Status s = tested.policy->write_rotary(*cache, layer, q_view, k_view, v_view, inv_freq.as<const float>(),
                                               device_batch.batch, exec);
        REQUIRE_MESSAGE(s.is_ok(), label << ": write_rotary: " << s.message());
        ref::apply_rope(rope, layout.positions.data(), size_t(t), q.data(), size_t(c.q_heads), k.data(),
                        size_t(c.kv_heads));
      } else {
        Status s = tested.policy->write(*cache, layer, k_view, v_view, device_batch.batch, exec);
        REQUIRE_MESSAGE(s.is_ok(), label << ": write: " << s.message());
      }
      reference.write(layer, k, v, layout, c);
      memory.synchronize();
      views.download();
      const auto images_after = views.images();
      if (mode == WriteMode::write_rotary) {
        // The queries rotated in place, and nothing else of the buffers changed.
        CHECK_MESSAGE(relative_error(views.qkv.get(0, t, views.q_stride, q_size), q) <= row.tolerance,
                      label << ": queries rotated by write_rotary");
        // Only the q elements may differ from the upload: compare the rest.
        std::vector<std::byte> outside_q = images_after[0];
        std::vector<std::byte> outside_q_before = images_before[0];
        const size_t element_bytes = dtype_bits(row.activation_dtype) / 8;
        for (int64_t r = 0; r < t; ++r)
          for (int64_t i = 0; i < q_size; ++i) {
            const size_t at = size_t(r * views.q_stride + i) * element_bytes;
            std::memset(outside_q.data() + at, 0, element_bytes);
            std::memset(outside_q_before.data() + at, 0, element_bytes);
          }
        CHECK_MESSAGE(outside_q == outside_q_before, label << ": write_rotary changed memory outside the queries");
        for (size_t b = 1; b < images_after.size(); ++b)
          CHECK_MESSAGE(images_after[b] == images_before[b], label << ": write_rotary changed the keys or values");
        // Attention below reads the queries the policy rotated, where it left them.
      } else {
        CHECK_MESSAGE(images_after == images_before, label << ": write changed its inputs");
      }

      // A model passes the batch of its write to attend, padding included.
      std::optional<DeviceBatch> padded_batch;
      const PagedKvBatch* attend_batch = &device_batch.batch;
      if (mode == WriteMode::write && step % 2 == 1) {
        // Padding: new values for every token, but a third of the slots are
        // -1 and their values NaN; those slots keep what they held.
        std::vector<int32_t> padded_slots = layout.slot_mapping;
        std::vector<float> k2 = rounded_to(random_values(size_t(t * kv_size), seed + 3), row.activation_dtype);
        std::vector<float> v2 = rounded_to(random_values(size_t(t * kv_size), seed + 4), row.activation_dtype);
        std::vector<float> k2_sent = k2, v2_sent = v2;
        std::vector<StepPiece> written;
        int32_t token = 0;
        for (size_t s = 0; s < sequences.sequences.size(); ++s)
          for (int32_t j = 0; j < sequences.sequences[s].query_len; ++j, ++token) {
            if (token % 3 == 1) {
              padded_slots[size_t(token)] = -1;
              std::fill_n(k2_sent.begin() + token * kv_size, kv_size, std::numeric_limits<float>::quiet_NaN());
              std::fill_n(v2_sent.begin() + token * kv_size, kv_size, std::numeric_limits<float>::quiet_NaN());
            } else {
              written.push_back({int32_t(s), j, 1, false});
            }
          }
        padded_batch.emplace(memory, layout, padded_slots);
        attend_batch = &padded_batch->batch;
        views.k_staging().put(views.k_offset, t, views.k_stride, kv_size, k2_sent);
        views.v_staging().put(views.v_offset, t, views.v_stride, kv_size, v2_sent);
        views.upload();
        Status s = tested.policy->write(*cache, layer, k_view, v_view, padded_batch->batch, exec);
        REQUIRE_MESSAGE(s.is_ok(), label << ": write with padding slots: " << s.message());
        // The reference writes only the tokens that are not padding, each as its own piece.
        PagedLayout written_layout;
        written_layout.build(sequences.input, written, c.block_tokens);
        std::vector<float> k2_written, v2_written;
        token = 0;
        for (size_t s = 0; s < sequences.sequences.size(); ++s)
          for (int32_t j = 0; j < sequences.sequences[s].query_len; ++j, ++token)
            if (token % 3 != 1) {
              k2_written.insert(k2_written.end(), k2.begin() + token * kv_size, k2.begin() + (token + 1) * kv_size);
              v2_written.insert(v2_written.end(), v2.begin() + token * kv_size, v2.begin() + (token + 1) * kv_size);
            }
        reference.write(layer, k2_written, v2_written, written_layout, c);
      }

      // Attention into a padded output whose padding must survive.
      Staging out(memory, row.activation_dtype, size_t(t * (q_size + kRowPadding)));
      out.upload();
      const auto out_before = out.image();
      Status s = tested.policy->attend(*cache, layer, q_view, *attend_batch, softmax_scale,
                                       out.view(0, {t, c.q_heads, c.head_dim}, q_size + kRowPadding), exec);
      REQUIRE_MESSAGE(s.is_ok(), label << ": attend: " << s.message());
      const std::vector<float> want = reference.attend(layer, q, layout, c, softmax_scale);
      memory.synchronize();
      out.download();
      const double error = relative_error(out.get(0, t, q_size + kRowPadding, q_size), want);
      CHECK_MESSAGE(error <= row.tolerance, label << ": attention output off by " << error << " (relative)");
      std::vector<std::byte> padding_before, padding_after;
      const size_t element_bytes = dtype_bits(row.activation_dtype) / 8;
      for (int64_t r = 0; r < t; ++r) {
        const size_t at = size_t(r * (q_size + kRowPadding) + q_size) * element_bytes;
        padding_before.insert(padding_before.end(), out_before.begin() + std::ptrdiff_t(at),
                              out_before.begin() + std::ptrdiff_t(at + kRowPadding * element_bytes));
        padding_after.insert(padding_after.end(), out.image().begin() + std::ptrdiff_t(at),
                             out.image().begin() + std::ptrdiff_t(at + kRowPadding * element_bytes));
      }
      CHECK_MESSAGE(padding_after == padding_before, label << ": attend wrote outside its output rows");
    }
    std::vector<std::byte> canary_after(kCanaryBytes);
    memory.download(canary_after.data(), workspace.as<std::byte>() + workspace_bytes.value(), kCanaryBytes);
    CHECK_MESSAGE(canary_after == canary, label << ": attend wrote past workspace_bytes() = "
                                                    << workspace_bytes.value());
    sequences.commit(kSteps[step]);
  }
}

// A cache no policy of ours made.
class ForeignCache final : public KvCache {
 public:
  explicit ForeignCache(const KvShape& shape) : shape_(shape) {}
  int32_t num_blocks() const noexcept override { return kNumBlocks; }
  size_t bytes() const noexcept override { return 0; }
  KvShape shape() const noexcept override { return shape_; }

 private:
  KvShape shape_;
};

}  // namespace

TEST_SUITE("kv_cache") {
  TEST_CASE("format: fields a model can check, and a probe that declines the other device") {
    for (const KvPolicyRow& row : kv_policy_rows()) {
      INFO("row: " << std::string(row.label));
      UnderTest tested(row);
      const KvFormat format = tested.policy->format();
      CHECK_FALSE(format.name.empty());
      CHECK(format.device == row.device);
      CHECK(format.activation_dtypes != 0);
      CHECK((format.activation_dtypes & dtype_bit(row.activation_dtype)) != 0);
      CHECK(format.value_bits >= 1);
      CHECK(format.value_bits <= 32);
      CHECK((format.quant_policy == 0 || format.quant_policy == 4 || format.quant_policy == 8));
      const Status fits = check_kv_format(format, kv_device_memory().device(), row.activation_dtype);
      CHECK_MESSAGE(fits.is_ok(), fits.message());
      const Device other{row.device == DeviceKind::cpu ? DeviceKind::cuda : DeviceKind::cpu, 0};
      auto declined = tested.registry->create<KvCachePolicy>(row.plugin, settings_of(row.settings), nullptr, "kv_cache", other);
      REQUIRE_FALSE(declined.has_value());
      CHECK(declined.status().code() == ErrorCode::unsupported);
      CHECK(declined.status().message().find("cannot run on " + std::string(device_kind_name(other.kind))) !=
            std::string::npos);
    }
  }

  TEST_CASE("allocate: a cache of bytes_per_block x blocks, of the shape and block count asked for") {
    for (const KvPolicyRow& row : kv_policy_rows()) {
      INFO("row: " << std::string(row.label));
      UnderTest tested(row);
      for (const KvCase& c : kCases) {
        INFO("case: " << std::string(c.name));
        const KvShape shape = shape_of(c, row.activation_dtype);
        const size_t per_block = tested.policy->bytes_per_block(shape);
        CHECK(per_block > 0);
        auto cache = tested.policy->allocate(shape, 7, kv_device_memory().device());
        REQUIRE_MESSAGE(cache.has_value(), cache.status().message());
        CHECK(cache.value()->bytes() == 7 * per_block);
        CHECK(cache.value()->num_blocks() == 7);
        const KvShape got = cache.value()->shape();
        CHECK(got.layers == shape.layers);
        CHECK(got.kv_heads == shape.kv_heads);
        CHECK(got.head_dim == shape.head_dim);
        CHECK(got.block_tokens == shape.block_tokens);
        CHECK(got.activation_dtype == shape.activation_dtype);
      }
      KvShape empty = shape_of(kCases[0], row.activation_dtype);
      empty.kv_heads = 0;
      CHECK_FALSE(tested.policy->allocate(empty, 7, kv_device_memory().device()).has_value());
      CHECK_FALSE(tested.policy->allocate(shape_of(kCases[0], row.activation_dtype), 0, kv_device_memory().device())
                      .has_value());
    }
  }

  TEST_CASE("write and attend match kv_cpu with f32 pages: GQA ratios, head dims, page sizes, mixed steps, strided views") {
    for (const KvPolicyRow& row : kv_policy_rows())
      for (const KvCase& c : kCases) {
        INFO("row: " << std::string(row.label));
        INFO("case: " << std::string(c.name));
        run_scenario(row, c, WriteMode::write);
      }
  }

  TEST_CASE("write_rotary matches ref RoPE then kv_cpu's write, where the format says it fuses RoPE") {
    size_t rotary_rows = 0;
    for (const KvPolicyRow& row : kv_policy_rows()) {
      UnderTest tested(row);
      const bool rotary = tested.policy->format().rotary_write;
      if (!rotary) {
        // It must then refuse without touching anything (the SDK's default does).
        const KvShape shape = shape_of(kCases[0], row.activation_dtype);
        auto cache = tested.policy->allocate(shape, kNumBlocks, kv_device_memory().device());
        REQUIRE(cache.has_value());
        CHECK(tested.policy->write_rotary(*cache.value(), 0, {}, {}, {}, nullptr, {}, {}).code() == ErrorCode::unsupported);
        continue;
      }
      ++rotary_rows;
      for (const KvCase& c : kCases) {
        INFO("row: " << std::string(row.label));
        INFO("case: " << std::string(c.name));
        run_scenario(row, c, WriteMode::write_rotary);
      }
    }
    MESSAGE(rotary_rows << " row(s) fuse RoPE with the write");
  }

  TEST_CASE("bad calls fail with invalid_argument and leave the cache as it was") {
    for (const KvPolicyRow& row : kv_policy_rows()) {
      const std::string label = row.label;
      INFO("row: " << label);
      DeviceMemory& memory = kv_device_memory();
      const KvCase& c = kCases[1];
      UnderTest tested(row);
      const KvShape shape = shape_of(c, row.activation_dtype);
      auto allocated = tested.policy->allocate(shape, kNumBlocks, memory.device());
      REQUIRE(allocated.has_value());
      KvCache& cache = *allocated.value();
      Sequences sequences(c.block_tokens, 5);
      const PagedLayout layout = sequences.layout(kSteps[0]);
      const int64_t t = layout.num_tokens();
      const int64_t q_size = int64_t(c.q_heads) * c.head_dim, kv_size = int64_t(c.kv_heads) * c.head_dim;
      DeviceBatch batch(memory, layout, layout.slot_mapping);
      StepViews views(memory, row.activation_dtype, t, c, true);
      views.qkv.put(0, t, views.q_stride, q_size, rounded_to(random_values(size_t(t * q_size), 1, 4.0f), row.activation_dtype));
      views.qkv.put(views.k_offset, t, views.k_stride, kv_size, rounded_to(random_values(size_t(t * kv_size), 2), row.activation_dtype));
      views.qkv.put(views.v_offset, t, views.v_stride, kv_size, rounded_to(random_values(size_t(t * kv_size), 3), row.activation_dtype));
      views.upload();
      const TensorView q = views.qkv.view(0, {t, c.q_heads, c.head_dim}, views.q_stride);
      const TensorView k = views.qkv.view(views.k_offset, {t, c.kv_heads, c.head_dim}, views.k_stride);
      const TensorView v = views.qkv.view(views.v_offset, {t, c.kv_heads, c.head_dim}, views.v_stride);
      auto workspace_bytes = tested.policy->workspace_bytes(
          KvWorkspaceQuery{shape, c.q_heads, int32_t(t), layout.num_sequences, layout.max_context_len, memory.device()});
      REQUIRE(workspace_bytes.has_value());
      DeviceBuffer workspace(memory, workspace_bytes.value());
      ExecContext exec{memory.device(), memory.stream(), {}};
      exec.workspace = TensorView::contiguous(workspace.data(), DType::u8, {int64_t(workspace.bytes())}, memory.device());
      const float scale = 1.0f / std::sqrt(float(c.head_dim));
      Staging out(memory, row.activation_dtype, size_t(t * q_size));
      const TensorView out_view = out.view(0, {t, c.q_heads, c.head_dim}, q_size);
      auto attend_all = [&] {
        std::vector<std::vector<std::byte>> outputs;
        for (int32_t layer = 0; layer < kLayers; ++layer) {
          Status s = tested.policy->attend(cache, layer, q, batch.batch, scale, out_view, exec);
          REQUIRE_MESSAGE(s.is_ok(), s.message());
          memory.synchronize();
          out.download();
          outputs.push_back(out.image());
        }
        return outputs;
      };
      for (int32_t layer = 0; layer < kLayers; ++layer)
        REQUIRE(tested.policy->write(cache, layer, k, v, batch.batch, exec).is_ok());
      const auto before = attend_all();

      auto refused = [&](const Status& s, const char* what) {
        CHECK_MESSAGE(s.code() == ErrorCode::invalid_argument, label << ": " << what << ": " << s.message());
        CHECK_MESSAGE(!s.message().empty(), what);
      };
      ForeignCache foreign(shape);
      refused(tested.policy->write(foreign, 0, k, v, batch.batch, exec), "write into a cache another policy made");
      refused(tested.policy->attend(foreign, 0, q, batch.batch, scale, out_view, exec), "attend over a foreign cache");
      for (int32_t layer : {-1, kLayers}) {
        refused(tested.policy->write(cache, layer, k, v, batch.batch, exec), "write to a layer outside the cache");
        refused(tested.policy->attend(cache, layer, q, batch.batch, scale, out_view, exec), "attend a missing layer");
      }
      // The same memory labelled with a dtype the format does not take.
      const KvFormat format = tested.policy->format();
      DType wrong = DType::i32;
      for (DType candidate : {DType::f32, DType::bf16, DType::f16})
        if ((format.activation_dtypes & dtype_bit(candidate)) == 0) {
          wrong = candidate;
          break;
        }
      TensorView k_wrong = k, v_wrong = v, q_wrong = q;
      k_wrong.dtype = v_wrong.dtype = q_wrong.dtype = wrong;
      refused(tested.policy->write(cache, 0, k_wrong, v_wrong, batch.batch, exec), "write of keys in a wrong dtype");
      refused(tested.policy->attend(cache, 0, q_wrong, batch.batch, scale, out_view, exec), "attend with a wrong dtype");
      memory.synchronize();
      CHECK_MESSAGE(attend_all() == before, label << ": a refused call changed the cache");
    }
  }
}

}  // namespace conformance
