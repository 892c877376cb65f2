// The quantized KV format (kv_quant.hpp) row by row, its page layout, and
// paged attention over quantized pages: equal to attention over float pages
// holding the dequantized values, and close to attention over the originals.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "ref/kv_quant.hpp"
#include "ref/paged_attention.hpp"
#include "ref/write_kv.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;
using namespace hostrun::ref::test;

namespace {

std::vector<float> round_trip(const std::vector<float>& x, int bits, KvQuantParams* params_out = nullptr) {
  std::vector<std::uint8_t> codes(kv_code_bytes(x.size(), bits));
  const KvQuantParams params = quantize_kv_row(x.data(), x.size(), bits, codes.data());
  if (params_out) *params_out = params;
  std::vector<float> out(x.size());
  dequantize_kv_row(codes.data(), x.size(), bits, params, out.data());
  return out;
}

}  // namespace

TEST_CASE("kv quant: the error of a row is at most half a step, for int8 and int4") {
  std::mt19937 rng(5);
  for (const int bits : {8, 4}) {
    for (int trial = 0; trial < 50; ++trial) {
      const std::vector<float> x = random_floats(rng, 128, -3.0f, 5.0f);
      KvQuantParams params;
      const std::vector<float> back = round_trip(x, bits, &params);
      const float step = f16_to_f32(params.scale);
      const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
      CHECK(f16_to_f32(params.zero) == f16_to_f32(f32_to_f16(*lo)));
      CHECK(std::abs(step - (*hi - *lo) / float((1 << bits) - 1)) <= step * 1e-3f);
      for (std::size_t i = 0; i < x.size(); ++i) {
        CAPTURE(i);
        // Half a step, plus what rounding the pair to f16 moves the grid (relative 2^-11 at the top code).
        CHECK(std::abs(back[i] - x[i]) <= 0.5f * step + std::abs(*hi - *lo) * 1e-3f + 1e-3f);
      }
    }
  }
}

TEST_CASE("kv quant: codes are exact where the grid is, ties go to even, int4 packs low nibble first") {
  // int4 over [0, 15]: scale 1, zero 0, so codes are the values themselves; 2.5 and 3.5 are ties.
  const std::vector<float> x = {0.0f, 1.0f, 2.5f, 3.5f, 7.0f, 15.0f, 14.49f};
  std::vector<std::uint8_t> codes(kv_code_bytes(x.size(), 4));
  const KvQuantParams params = quantize_kv_row(x.data(), x.size(), 4, codes.data());
  CHECK(f16_to_f32(params.scale) == 1.0f);
  CHECK(f16_to_f32(params.zero) == 0.0f);
  CHECK(codes.size() == 4);
  CHECK(codes[0] == (0 | 1 << 4));
  CHECK(codes[1] == (2 | 4 << 4));   // 2.5 -> 2, 3.5 -> 4
  CHECK(codes[2] == (7 | 15 << 4));
  CHECK(codes[3] == 14);             // the odd element's high nibble stays 0
  std::vector<float> back(x.size());
  dequantize_kv_row(codes.data(), x.size(), 4, params, back.data());
  CHECK(back == std::vector<float>{0, 1, 2, 4, 7, 15, 14});
  // int8 over [-1, 1]: 255 steps; both ends exact.
  std::vector<float> ends = {-1.0f, 1.0f, 0.0f};
  const std::vector<float> ends_back = round_trip(ends, 8);
  CHECK(ends_back[0] == -1.0f);
  CHECK(std::abs(ends_back[1] - 1.0f) < 1e-3f);
}

TEST_CASE("kv quant: constant rows, NaN and infinities never make a NaN") {
  for (const int bits : {8, 4}) {
    CAPTURE(bits);
    // max == min: scale 0, every value back exactly (3.25 is an f16).
    CHECK(round_trip(std::vector<float>(64, 3.25f), bits) == std::vector<float>(64, 3.25f));
    for (float v : round_trip(std::vector<float>(64, 0.1f), bits)) CHECK(v == f16_to_f32(f32_to_f16(0.1f)));
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    const std::vector<float> back = round_trip({nan, inf, -inf, 1.0f, 2.0f}, bits);
    for (float v : back) CHECK(std::isfinite(v));
    CHECK(back[0] == 1.0f);  // NaN: code 0, the minimum
    CHECK(std::abs(back[1] - 2.0f) < 1e-2f);  // +inf: the top code
    CHECK(back[2] == 1.0f);  // -inf: code 0
    CHECK(round_trip({nan, inf, -inf}, bits) == std::vector<float>{0, 0, 0});
    // Beyond f16: the statistics saturate, nothing becomes inf.
    for (float v : round_trip({-1e6f, 1e6f, 0.0f}, bits)) CHECK(std::isfinite(v));
  }
}

TEST_CASE("kv quant: block bytes are LMDeploy's per-token sizes for Llama-3-8B") {
  // 32 layers x (K and V) x 8 KV heads x head_dim 128, one token a block.
  KvCacheLayer layer;
  layer.block_tokens = 1;
  layer.kv_heads = 8;
  layer.head_dim = 128;
  layer.dtype = DType::bf16;
  CHECK(2 * 32 * kv_pool_block_bytes(layer) == 131072);
  layer.quant_bits = 8;
  CHECK(2 * 32 * kv_pool_block_bytes(layer) == 67584);
  layer.quant_bits = 4;
  CHECK(2 * 32 * kv_pool_block_bytes(layer) == 34816);
}

TEST_CASE("kv quant: paged attention over quantized pages equals attention over their dequantized values") {
  std::mt19937 rng(9);
  const std::size_t kv_heads = 2, group = 4, head_dim = 64, block_tokens = 16, num_blocks = 8;
  const std::vector<std::int32_t> query_start = {0, 40, 41};
  const std::vector<std::int32_t> context_lens = {40, 25};
  const std::vector<std::int32_t> block_tables = {5, 2, 7, 0, 3, 1};  // 3 blocks a sequence
  std::vector<std::int64_t> slots;
  for (int p = 0; p < 40; ++p) slots.push_back(block_tables[p / 16] * 16 + p % 16);
  const std::size_t token_elements = kv_heads * head_dim;
  for (const int bits : {8, 4}) {
    CAPTURE(bits);
    KvCacheLayer quantized;
    quantized.block_tokens = block_tokens;
    quantized.kv_heads = kv_heads;
    quantized.head_dim = head_dim;
    quantized.num_blocks = num_blocks;
    quantized.quant_bits = bits;
    std::vector<unsigned char> qk(num_blocks * kv_pool_block_bytes(quantized)), qv(qk.size());
    quantized.k_pages = qk.data();
    quantized.v_pages = qv.data();
    KvCacheLayer exact = quantized;  // f32 pages with the original values
    exact.quant_bits = 0;
    exact.dtype = DType::f32;
    std::vector<unsigned char> ek(num_blocks * kv_pool_block_bytes(exact)), ev(ek.size());
    exact.k_pages = ek.data();
    exact.v_pages = ev.data();
    KvCacheLayer dequantized = exact;  // f32 pages with what the quantized pages hold
    std::vector<unsigned char> dk(ek.size()), dv(ek.size());
    dequantized.k_pages = dk.data();
    dequantized.v_pages = dv.data();

    // Sequence 0 is all prefill (40 tokens); sequence 1 has 24 cached tokens and decodes 1.
    std::vector<std::int64_t> all_slots = slots;
    for (int p = 0; p < 25; ++p) all_slots.push_back(block_tables[3 + p / 16] * 16 + p % 16);
    const std::vector<float> k = random_floats(rng, all_slots.size() * token_elements, -2.0f, 2.0f);
    const std::vector<float> v = random_floats(rng, all_slots.size() * token_elements, -2.0f, 2.0f);
    const std::vector<std::int32_t> write_start = {0, std::int32_t(all_slots.size())};
    PagedKvStep write;
    write.num_sequences = 1;
    write.query_start = write_start.data();
    write.slot_mapping = all_slots.data();
    REQUIRE(write_kv(quantized, write, k.data(), v.data()) == Status::ok);
    REQUIRE(write_kv(exact, write, k.data(), v.data()) == Status::ok);
    std::vector<float> row(head_dim);
    for (std::int64_t slot : all_slots)
      for (std::size_t h = 0; h < kv_heads; ++h) {
        load_kv_head(quantized, quantized.k_pages, std::size_t(slot), h, row.data());
        store_kv_head(dequantized, dequantized.k_pages, std::size_t(slot), h, row.data());
        load_kv_head(quantized, quantized.v_pages, std::size_t(slot), h, row.data());
        store_kv_head(dequantized, dequantized.v_pages, std::size_t(slot), h, row.data());
      }

    std::vector<std::int64_t> step_slots = slots;
    step_slots.push_back(block_tables[3 + 24 / 16] * 16 + 24 % 16);
    PagedKvStep step;
    step.num_sequences = 2;
    step.query_start = query_start.data();
    step.context_lens = context_lens.data();
    step.block_tables = block_tables.data();
    step.max_blocks_per_sequence = 3;
    step.block_tokens = block_tokens;
    step.slot_mapping = step_slots.data();
    const std::vector<float> q = random_floats(rng, 41 * kv_heads * group * head_dim);
    const float scale = 1.0f / std::sqrt(float(head_dim));
    auto attend = [&](const KvCacheLayer& cache, const std::vector<float>& queries) {
      std::vector<float> out(q.size());
      REQUIRE(paged_attention(cache, step, queries.data(), kv_heads * group, scale, out.data()) == Status::ok);
      return out;
    };
    // int4 pages hold H k (kv_quant.hpp), so their queries are rotated alike,
    // as the KV policies do before attending.
    std::vector<float> q_rotated = q;
    if (kv_keys_rotated(bits))
      for (std::size_t r = 0; r < q.size() / head_dim; ++r) rotate_kv_row(q_rotated.data() + r * head_dim, head_dim);
    const std::vector<float> from_quantized = attend(quantized, q_rotated),
                             from_dequantized = attend(dequantized, q_rotated), from_exact = attend(exact, q);
    CHECK(from_quantized == from_dequantized);
    // Close to the unquantized cache: cosine over each output row.
    double worst = 1.0;
    for (std::size_t r = 0; r < q.size() / head_dim; ++r) {
      double dot = 0, a = 0, b = 0;
      for (std::size_t d = 0; d < head_dim; ++d) {
        dot += double(from_quantized[r * head_dim + d]) * from_exact[r * head_dim + d];
        a += double(from_quantized[r * head_dim + d]) * from_quantized[r * head_dim + d];
        b += double(from_exact[r * head_dim + d]) * from_exact[r * head_dim + d];
      }
      worst = std::min(worst, dot / std::sqrt(a * b));
    }
    CHECK(worst > (bits == 8 ? 0.9999 : 0.99));
  }
}

TEST_CASE("kv quant: rotate_kv_row is the normalized Walsh-Hadamard transform, its own inverse") {
  std::mt19937 rng(11);
  // H of 4: rows (1 1 1 1), (1 -1 1 -1), (1 1 -1 -1), (1 -1 -1 1), over 2.
  std::vector<float> e1 = {1, 0, 0, 0};
  rotate_kv_row(e1.data(), 4);
  CHECK(e1 == std::vector<float>{0.5f, 0.5f, 0.5f, 0.5f});
  std::vector<float> x = {1, 2, 3, 4};
  rotate_kv_row(x.data(), 4);
  CHECK(x == std::vector<float>{5, -1, -2, 0});
  // 96 = 3 blocks of 32; an odd length is left as it is.
  for (const std::size_t n : {64u, 128u, 96u}) {
    CAPTURE(n);
    const std::vector<float> row = random_floats(rng, n, -3.0f, 3.0f);
    std::vector<float> once = row;
    rotate_kv_row(once.data(), n);
    double norm_in = 0, norm_out = 0, worst = 0;
    for (std::size_t i = 0; i < n; ++i) {
      norm_in += double(row[i]) * row[i];
      norm_out += double(once[i]) * once[i];
    }
    CHECK(std::abs(norm_out - norm_in) <= 1e-5 * norm_in);  // orthogonal
    std::vector<float> twice = once;
    rotate_kv_row(twice.data(), n);
    for (std::size_t i = 0; i < n; ++i) worst = std::max(worst, double(std::abs(twice[i] - row[i])));
    CHECK(worst <= 1e-5);
    if (n == 96) {  // the first value of block 2 (from 32): the block's sum over sqrt(32)
      float sum = 0;
      for (std::size_t i = 32; i < 64; ++i) sum += row[i];
      CHECK(once[32] == doctest::Approx(sum / std::sqrt(32.0f)).epsilon(1e-5));
    }
  }
  std::vector<float> odd = {1, 2, 3};
  rotate_kv_row(odd.data(), 3);
  CHECK(odd == std::vector<float>{1, 2, 3});
}

TEST_CASE("kv quant: int4 pages store keys rotated, int8 pages and values as they are") {
  std::mt19937 rng(12);
  const std::size_t head_dim = 64;
  for (const int bits : {8, 4}) {
    CAPTURE(bits);
    KvCacheLayer layer;
    layer.block_tokens = 16;
    layer.kv_heads = 1;
    layer.head_dim = head_dim;
    layer.num_blocks = 1;
    layer.quant_bits = bits;
    std::vector<unsigned char> kp(kv_pool_block_bytes(layer)), vp(kp.size());
    layer.k_pages = kp.data();
    layer.v_pages = vp.data();
    std::vector<float> k = random_floats(rng, head_dim, -2.0f, 2.0f), v = k;
    k[5] = 40.0f;  // one large channel, as RoPE'd keys have
    v[5] = 40.0f;
    const std::vector<std::int32_t> start = {0, 1};
    const std::vector<std::int64_t> slot = {3};
    PagedKvStep step;
    step.num_sequences = 1;
    step.query_start = start.data();
    step.slot_mapping = slot.data();
    REQUIRE(write_kv(layer, step, k.data(), v.data()) == Status::ok);
    std::vector<float> stored_k(head_dim), stored_v(head_dim), want_k = k;
    load_kv_head(layer, layer.k_pages, 3, 0, stored_k.data());
    load_kv_head(layer, layer.v_pages, 3, 0, stored_v.data());
    if (kv_keys_rotated(bits)) rotate_kv_row(want_k.data(), head_dim);
    CHECK(stored_k == round_trip(want_k, bits));
    CHECK(stored_v == round_trip(v, bits));
  }
  CHECK(kv_keys_rotated(4));
  CHECK(!kv_keys_rotated(8));
}

TEST_CASE("kv quant: write and attention refuse bit widths other than 8 and 4") {
  KvCacheLayer layer;
  layer.block_tokens = 4;
  layer.kv_heads = 1;
  layer.head_dim = 8;
  layer.num_blocks = 1;
  layer.quant_bits = 3;
  std::vector<unsigned char> pool(64);
  layer.k_pages = layer.v_pages = pool.data();
  const std::int32_t start[2] = {0, 1};
  const std::int64_t slot = 0;
  PagedKvStep step;
  step.num_sequences = 1;
  step.query_start = start;
  step.slot_mapping = &slot;
  const std::vector<float> k(8, 1.0f);
  CHECK(write_kv(layer, step, k.data(), k.data()) == Status::invalid_argument);
}
