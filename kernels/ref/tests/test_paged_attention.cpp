// write_kv + paged_attention against dense causal attention computed from the
// unpaged K/V of each sequence. Blocks are handed out in shuffled order, the
// last block of a sequence is partly filled, and every unwritten slot holds
// NaN, so reading a slot the step should not see poisons the output.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "ref/paged_attention.hpp"
#include "ref/write_kv.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;
using namespace hostrun::ref::test;

namespace {

struct SequenceSpec {
  std::size_t cached;      // tokens already in the cache before this step
  std::size_t new_tokens;  // tokens this step adds (1 = decode)
};

struct Scenario {
  std::size_t kv_heads = 0, group = 0, head_dim = 0, block_tokens = 0;
  DType dtype = DType::f32;
  std::vector<SequenceSpec> sequences;

  std::vector<unsigned char> k_pool, v_pool;
  KvCacheLayer cache;
  std::vector<std::int32_t> query_start, context_lens, block_tables;
  std::vector<std::int64_t> slot_mapping;
  std::size_t max_blocks_per_sequence = 0;
  PagedKvStep step;
  // Dense K/V per sequence [context, kv_heads, head_dim], as the pool stores them.
  std::vector<std::vector<float>> dense_k, dense_v;
  std::vector<float> q;      // [num_tokens, q_heads, head_dim]
  std::vector<float> new_k;  // [num_tokens, kv_heads, head_dim], f32 before storage rounding
  std::vector<float> new_v;

  std::size_t q_heads() const { return kv_heads * group; }
  std::size_t num_tokens() const { return slot_mapping.size(); }
};

Scenario make_scenario(std::size_t kv_heads, std::size_t group, std::size_t head_dim, std::size_t block_tokens,
                       DType dtype, std::vector<SequenceSpec> sequences) {
  Scenario s;
  s.kv_heads = kv_heads;
  s.group = group;
  s.head_dim = head_dim;
  s.block_tokens = block_tokens;
  s.dtype = dtype;
  s.sequences = std::move(sequences);
  return s;
}

std::int64_t slot_of(const Scenario& s, std::size_t sequence, std::size_t position) {
  return static_cast<std::int64_t>(s.block_tables[sequence * s.max_blocks_per_sequence + position / s.block_tokens]) *
             static_cast<std::int64_t>(s.block_tokens) +
         static_cast<std::int64_t>(position % s.block_tokens);
}

// Builds the pools, writes each sequence's cached prefix as an earlier step
// would have, and prepares (but does not write) this step's new K/V.
void build(Scenario& s, std::mt19937& rng, float q_range = 1.0f) {
  const std::size_t token_elements = s.kv_heads * s.head_dim;
  std::size_t blocks_needed = 0;
  for (const SequenceSpec& seq : s.sequences) {
    const std::size_t blocks = (seq.cached + seq.new_tokens + s.block_tokens - 1) / s.block_tokens;
    blocks_needed += blocks;
    s.max_blocks_per_sequence = std::max(s.max_blocks_per_sequence, blocks + 1);  // + 1: unused table entries
  }
  const std::size_t num_blocks = blocks_needed + 5;  // spare blocks nobody owns
  std::vector<std::int32_t> free_blocks(num_blocks);
  std::iota(free_blocks.begin(), free_blocks.end(), 0);
  std::shuffle(free_blocks.begin(), free_blocks.end(), rng);

  const std::size_t pool_elements = num_blocks * s.block_tokens * token_elements;
  s.k_pool.resize(pool_elements * dtype_size(s.dtype));
  s.v_pool.resize(pool_elements * dtype_size(s.dtype));
  for (std::size_t i = 0; i < pool_elements; ++i) {
    store_from_f32(s.k_pool.data(), s.dtype, i, std::numeric_limits<float>::quiet_NaN());
    store_from_f32(s.v_pool.data(), s.dtype, i, std::numeric_limits<float>::quiet_NaN());
  }
  s.cache = KvCacheLayer{s.k_pool.data(), s.v_pool.data(), s.dtype, num_blocks, s.block_tokens, s.kv_heads, s.head_dim};

  s.block_tables.assign(s.sequences.size() * s.max_blocks_per_sequence, -1);
  s.query_start = {0};
  std::size_t next_free = 0;
  for (std::size_t i = 0; i < s.sequences.size(); ++i) {
    const SequenceSpec& seq = s.sequences[i];
    const std::size_t context = seq.cached + seq.new_tokens;
    for (std::size_t b = 0; b < (context + s.block_tokens - 1) / s.block_tokens; ++b) {
      s.block_tables[i * s.max_blocks_per_sequence + b] = free_blocks[next_free++];
    }
    s.context_lens.push_back(static_cast<std::int32_t>(context));
    s.query_start.push_back(s.query_start.back() + static_cast<std::int32_t>(seq.new_tokens));

    const StoredValues k = store(random_floats(rng, context * token_elements), s.dtype);
    const StoredValues v = store(random_floats(rng, context * token_elements), s.dtype);
    s.dense_k.push_back(k.as_f32);
    s.dense_v.push_back(v.as_f32);

    // The cached prefix, written by an earlier one-sequence step.
    if (seq.cached > 0) {
      std::vector<std::int64_t> prefix_slots;
      for (std::size_t p = 0; p < seq.cached; ++p) prefix_slots.push_back(slot_of(s, i, p));
      const std::vector<std::int32_t> prefix_query_start = {0, static_cast<std::int32_t>(seq.cached)};
      PagedKvStep earlier;
      earlier.num_sequences = 1;
      earlier.query_start = prefix_query_start.data();
      earlier.slot_mapping = prefix_slots.data();
      REQUIRE(write_kv(s.cache, earlier, k.as_f32.data(), v.as_f32.data()) == Status::ok);
    }
    for (std::size_t p = seq.cached; p < context; ++p) {
      s.slot_mapping.push_back(slot_of(s, i, p));
      s.new_k.insert(s.new_k.end(), k.as_f32.begin() + p * token_elements, k.as_f32.begin() + (p + 1) * token_elements);
      s.new_v.insert(s.new_v.end(), v.as_f32.begin() + p * token_elements, v.as_f32.begin() + (p + 1) * token_elements);
    }
  }
  s.q = random_floats(rng, s.num_tokens() * s.q_heads() * s.head_dim, -q_range, q_range);

  s.step.num_sequences = s.sequences.size();
  s.step.query_start = s.query_start.data();
  s.step.context_lens = s.context_lens.data();
  s.step.block_tables = s.block_tables.data();
  s.step.max_blocks_per_sequence = s.max_blocks_per_sequence;
  s.step.block_tokens = s.block_tokens;
  s.step.slot_mapping = s.slot_mapping.data();
}

// Textbook causal softmax attention in double on the dense K/V.
std::vector<double> dense_attention(const Scenario& s, float softmax_scale) {
  const std::size_t head_dim = s.head_dim, q_heads = s.q_heads(), kv_heads = s.kv_heads;
  std::vector<double> out(s.num_tokens() * q_heads * head_dim);
  std::size_t t = 0;
  for (std::size_t i = 0; i < s.sequences.size(); ++i) {
    for (std::size_t j = 0; j < s.sequences[i].new_tokens; ++j, ++t) {
      const std::size_t position = s.sequences[i].cached + j;
      for (std::size_t h = 0; h < q_heads; ++h) {
        const std::size_t g = h / s.group;
        const float* q_head = s.q.data() + (t * q_heads + h) * head_dim;
        std::vector<double> weights(position + 1);
        for (std::size_t p = 0; p <= position; ++p) {
          double dot = 0.0;
          for (std::size_t d = 0; d < head_dim; ++d) dot += q_head[d] * s.dense_k[i][(p * kv_heads + g) * head_dim + d];
          weights[p] = dot * softmax_scale;
        }
        const double max_weight = *std::max_element(weights.begin(), weights.end());
        double total = 0.0;
        for (double& w : weights) total += (w = std::exp(w - max_weight));
        for (std::size_t d = 0; d < head_dim; ++d) {
          double value = 0.0;
          for (std::size_t p = 0; p <= position; ++p) value += weights[p] * s.dense_v[i][(p * kv_heads + g) * head_dim + d];
          out[(t * q_heads + h) * head_dim + d] = value / total;
        }
      }
    }
  }
  return out;
}

// A prefill chunk after a cached prefix, a fresh prefill, and decodes whose
// last block is partly filled (or exactly full).
std::vector<SequenceSpec> mixed_batch(std::size_t block_tokens) {
  return {{37, 20}, {0, 13}, {5, 1}, {2 * block_tokens - 1, 1}, {50, 1}, {0, 1}};
}

}  // namespace

TEST_CASE("paged attention matches dense causal attention: GQA 1/4/8, head_dim 64/128, f32/bf16/f16 pages") {
  std::mt19937 rng(71);
  for (const DType dtype : all_dtypes) {
    for (const std::size_t head_dim : {64u, 128u}) {
      for (const std::size_t group : {1u, 4u, 8u}) {
        for (const std::size_t kv_heads : {1u, 2u}) {
          for (const std::size_t block_tokens : {16u, 5u}) {
            CAPTURE(dtype_name(dtype));
            CAPTURE(head_dim);
            CAPTURE(group);
            CAPTURE(kv_heads);
            CAPTURE(block_tokens);
            Scenario s = make_scenario(kv_heads, group, head_dim, block_tokens, dtype, mixed_batch(block_tokens));
            build(s, rng);
            REQUIRE(validate_paged_kv_step(s.cache, s.step) == Status::ok);
            REQUIRE(write_kv(s.cache, s.step, s.new_k.data(), s.new_v.data()) == Status::ok);
            const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
            std::vector<float> out(s.num_tokens() * s.q_heads() * head_dim, -1.0f);
            REQUIRE(paged_attention(s.cache, s.step, s.q.data(), s.q_heads(), scale, out.data()) == Status::ok);
            check_close(out, dense_attention(s, scale), 1e-5, 1e-4);
          }
        }
      }
    }
  }
}

TEST_CASE("paged attention stays finite and exact with large scores (max-subtracted softmax)") {
  std::mt19937 rng(72);
  Scenario s = make_scenario(2, 4, 64, 16, DType::f32, {{30, 3}, {0, 1}});
  build(s, rng, 40.0f);  // scores in the hundreds: exp would overflow without the max shift
  REQUIRE(write_kv(s.cache, s.step, s.new_k.data(), s.new_v.data()) == Status::ok);
  std::vector<float> out(s.num_tokens() * s.q_heads() * s.head_dim);
  REQUIRE(paged_attention(s.cache, s.step, s.q.data(), s.q_heads(), 1.0f, out.data()) == Status::ok);
  for (const float v : out) REQUIRE(std::isfinite(v));
  check_close(out, dense_attention(s, 1.0f), 1e-5, 1e-4);
}

TEST_CASE("paged attention: a first token sees only itself, so out = its V") {
  std::mt19937 rng(73);
  Scenario s = make_scenario(1, 4, 64, 16, DType::bf16, {{0, 1}});
  build(s, rng);
  REQUIRE(write_kv(s.cache, s.step, s.new_k.data(), s.new_v.data()) == Status::ok);
  std::vector<float> out(s.q_heads() * s.head_dim);
  REQUIRE(paged_attention(s.cache, s.step, s.q.data(), s.q_heads(), 0.125f, out.data()) == Status::ok);
  for (std::size_t h = 0; h < s.q_heads(); ++h) {
    for (std::size_t d = 0; d < s.head_dim; ++d) REQUIRE(out[h * s.head_dim + d] == s.dense_v[0][d]);
  }
}

TEST_CASE("write_kv stores each token at its slot, rounded to the pool dtype") {
  std::mt19937 rng(74);
  Scenario s = make_scenario(2, 1, 64, 4, DType::f16, {{3, 6}});
  build(s, rng);
  REQUIRE(write_kv(s.cache, s.step, s.new_k.data(), s.new_v.data()) == Status::ok);
  const std::size_t token_elements = s.kv_heads * s.head_dim;
  for (std::size_t t = 0; t < s.num_tokens(); ++t) {
    for (std::size_t e = 0; e < token_elements; ++e) {
      const std::size_t pool_index = static_cast<std::size_t>(s.slot_mapping[t]) * token_elements + e;
      REQUIRE(load_as_f32(s.k_pool.data(), DType::f16, pool_index) == s.new_k[t * token_elements + e]);
      REQUIRE(load_as_f32(s.v_pool.data(), DType::f16, pool_index) == s.new_v[t * token_elements + e]);
    }
  }
}

TEST_CASE("paged attention and write_kv report malformed steps instead of reading out of bounds") {
  std::mt19937 rng(75);
  Scenario s = make_scenario(2, 2, 64, 8, DType::f32, {{10, 4}, {3, 1}});
  build(s, rng);
  std::vector<float> out(s.num_tokens() * s.q_heads() * s.head_dim, -1.0f);
  const float scale = 0.125f;

  SUBCASE("slot outside the pool: write_kv writes nothing") {
    const std::vector<unsigned char> before = s.k_pool;
    s.slot_mapping[2] = static_cast<std::int64_t>(s.cache.num_blocks * s.block_tokens);
    CHECK(write_kv(s.cache, s.step, s.new_k.data(), s.new_v.data()) == Status::slot_out_of_range);
    s.slot_mapping[2] = -1;
    CHECK(write_kv(s.cache, s.step, s.new_k.data(), s.new_v.data()) == Status::slot_out_of_range);
    CHECK(s.k_pool == before);
    CHECK(paged_attention(s.cache, s.step, s.q.data(), s.q_heads(), scale, out.data()) == Status::slot_out_of_range);
  }
  SUBCASE("slot that disagrees with the block table") {
    s.slot_mapping[0] = s.slot_mapping[1];
    CHECK(validate_paged_kv_step(s.cache, s.step) == Status::slot_out_of_range);
  }
  SUBCASE("block id outside the pool") {
    s.block_tables[0] = static_cast<std::int32_t>(s.cache.num_blocks);
    CHECK(paged_attention(s.cache, s.step, s.q.data(), s.q_heads(), scale, out.data()) == Status::block_out_of_range);
  }
  SUBCASE("more new tokens than context") {
    s.context_lens[1] = 0;
    CHECK(paged_attention(s.cache, s.step, s.q.data(), s.q_heads(), scale, out.data()) == Status::bad_step_layout);
  }
  SUBCASE("context longer than the block table") {
    s.context_lens[0] = static_cast<std::int32_t>(s.max_blocks_per_sequence * s.block_tokens + 1);
    CHECK(paged_attention(s.cache, s.step, s.q.data(), s.q_heads(), scale, out.data()) == Status::bad_step_layout);
  }
  SUBCASE("page size mismatch") {
    s.step.block_tokens = 4;
    CHECK(paged_attention(s.cache, s.step, s.q.data(), s.q_heads(), scale, out.data()) == Status::bad_step_layout);
  }
  SUBCASE("q_heads not a multiple of kv_heads") {
    CHECK(paged_attention(s.cache, s.step, s.q.data(), 3, scale, out.data()) == Status::invalid_argument);
  }
  for (const float v : out) CHECK(v == -1.0f);
}
