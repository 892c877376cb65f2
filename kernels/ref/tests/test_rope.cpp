// RoPE against independently written formulas: the llama3 frequency scaling
// for Llama-3.1's settings entry by entry, and the rotation as a complex
// multiplication of the pair (x[i], x[i + head_dim/2]).
#include <complex>
#include <numbers>

#include "ref/rope.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;
using namespace hostrun::ref::test;

namespace {

RopeParams llama31_params() {
  RopeParams params;
  params.head_dim = 128;
  params.theta = 500000.0;
  params.scaling_type = RopeScalingType::llama3;
  params.factor = 8.0;
  params.low_freq_factor = 1.0;
  params.high_freq_factor = 4.0;
  params.original_max_position_embeddings = 8192.0;
  return params;
}

// theta^(-2i/d) in long double, written as exp(-(2i/d) ln theta).
long double base_inv_freq(std::size_t i, std::size_t head_dim, long double theta) {
  return std::exp(-(2.0L * i / head_dim) * std::log(theta));
}

}  // namespace

TEST_CASE("rope: unscaled inv_freq is theta^(-2i/d)") {
  RopeParams params;
  params.head_dim = 64;
  params.theta = 10000.0;
  const RopeTable table = make_rope_table(params);
  REQUIRE(table.inv_freq.size() == 32);
  CHECK(table.inv_freq[0] == 1.0f);
  CHECK(table.inv_freq[16] == doctest::Approx(0.01).epsilon(1e-6));  // 10000^(-1/2)
  for (std::size_t i = 0; i < 32; ++i) {
    CHECK(table.inv_freq[i] == doctest::Approx(static_cast<double>(base_inv_freq(i, 64, 10000.0L))).epsilon(1e-6));
  }
}

TEST_CASE("rope: llama3 scaling with Llama-3.1 settings (factor 8, low 1, high 4, orig 8192, theta 5e5)") {
  const RopeTable table = make_rope_table(llama31_params());
  REQUIRE(table.inv_freq.size() == 64);
  // Wavelength 2*pi / f crosses 8192/4 = 2048 between i = 28 and 29
  // (2*pi*500000^(2i/128) = 2048 at i = 64 ln(2048/2pi) / ln(500000) = 28.22)
  // and 8192 between i = 34 and 35 (at i = 34.98). So entries 0..28 keep
  // their frequency, 35..63 are divided by 8, and 29..34 are blended.
  for (std::size_t i = 0; i < 64; ++i) {
    CAPTURE(i);
    const long double f = base_inv_freq(i, 128, 500000.0L);
    const long double wavelen = 2.0L * std::numbers::pi_v<long double> / f;
    long double expected = f;
    if (i >= 35) {
      CHECK(wavelen > 8192.0L);
      expected = f / 8.0L;
    } else if (i >= 29) {
      CHECK(wavelen >= 2048.0L);
      CHECK(wavelen <= 8192.0L);
      // smooth goes from 0 at wavelength 8192 to 1 at 2048.
      const long double smooth = (8192.0L / wavelen - 1.0L) / (4.0L - 1.0L);
      expected = f * ((1.0L - smooth) / 8.0L + smooth);
    } else {
      CHECK(wavelen < 2048.0L);
    }
    CHECK(table.inv_freq[i] == doctest::Approx(static_cast<double>(expected)).epsilon(1e-6));
  }
  // A few entries worked out by hand:
  CHECK(table.inv_freq[0] == 1.0f);
  // i = 63: 500000^(-126/128) = 2.45514e-6, / 8 = 3.06893e-7
  CHECK(table.inv_freq[63] == doctest::Approx(3.06893e-7).epsilon(1e-5));
  // i = 32: f = 500000^(-1/2) = 1.414214e-3, wavelen = 2 pi / f = 4442.883,
  // smooth = (8192 / 4442.883 - 1) / 3 = 0.2812826,
  // scaled = f * (0.7187174 / 8 + 0.2812826) = f * 0.3711223 = 5.248462e-4
  CHECK(table.inv_freq[32] == doctest::Approx(5.248462e-4).epsilon(1e-6));
  // i = 28 (wavelength 1956.5) is kept, i = 35 (wavelength 8218.7) is divided by 8.
  CHECK(table.inv_freq[28] == doctest::Approx(static_cast<double>(base_inv_freq(28, 128, 500000.0L))).epsilon(1e-6));
  CHECK(table.inv_freq[35] == doctest::Approx(static_cast<double>(base_inv_freq(35, 128, 500000.0L)) / 8).epsilon(1e-6));
}

TEST_CASE("rope: rotate_half convention by hand") {
  RopeTable table;
  table.head_dim = 4;
  table.inv_freq = {1.0f, 0.5f};
  // x = e0 at position 1: dimension 0 pairs with dimension 2 (not 1).
  std::vector<float> q = {1.0f, 0.0f, 0.0f, 0.0f};
  const std::int32_t position = 1;
  apply_rope(table, &position, 1, q.data(), 1, nullptr, 0);
  CHECK(q[0] == doctest::Approx(std::cos(1.0)));
  CHECK(q[1] == 0.0f);
  CHECK(q[2] == doctest::Approx(std::sin(1.0)));
  CHECK(q[3] == 0.0f);
  // x = e3 at position 2: angle 2 * 0.5 = 1; out[1] = -x3 sin, out[3] = x3 cos.
  std::vector<float> k = {0.0f, 0.0f, 0.0f, 1.0f};
  const std::int32_t position2 = 2;
  apply_rope(table, &position2, 1, nullptr, 0, k.data(), 1);
  CHECK(k[1] == doctest::Approx(-std::sin(1.0)));
  CHECK(k[3] == doctest::Approx(std::cos(1.0)));
}

TEST_CASE("rope: random q/k match the complex rotation, GQA, head_dim 64 and 128") {
  std::mt19937 rng(41);
  for (const std::size_t head_dim : {64u, 128u}) {
    for (const bool scaled : {false, true}) {
      CAPTURE(head_dim);
      CAPTURE(scaled);
      RopeParams params = llama31_params();
      params.head_dim = head_dim;
      if (!scaled) params.scaling_type = RopeScalingType::none;
      const RopeTable table = make_rope_table(params);
      const std::size_t q_heads = 8, kv_heads = 2;
      const std::vector<std::int32_t> positions = {0, 1, 2, 17, 1000, 8191, 8192, 131071};
      const std::size_t tokens = positions.size();
      const std::vector<float> q_in = random_floats(rng, tokens * q_heads * head_dim);
      const std::vector<float> k_in = random_floats(rng, tokens * kv_heads * head_dim);
      std::vector<float> q = q_in, k = k_in;
      apply_rope(table, positions.data(), tokens, q.data(), q_heads, k.data(), kv_heads);

      const auto expect = [&](const std::vector<float>& in, std::size_t heads) {
        std::vector<double> out(in.size());
        const std::size_t half = head_dim / 2;
        for (std::size_t t = 0; t < tokens; ++t) {
          for (std::size_t h = 0; h < heads; ++h) {
            const std::size_t base = (t * heads + h) * head_dim;
            for (std::size_t i = 0; i < half; ++i) {
              // The angle as HF forms it: an f32 product.
              const float angle = static_cast<float>(positions[t]) * table.inv_freq[i];
              const std::complex<double> rotated =
                  std::complex<double>(in[base + i], in[base + i + half]) * std::polar(1.0, static_cast<double>(angle));
              out[base + i] = rotated.real();
              out[base + i + half] = rotated.imag();
            }
          }
        }
        return out;
      };
      check_close(q, expect(q_in, q_heads), 1e-6, 1e-5);
      check_close(k, expect(k_in, kv_heads), 1e-6, 1e-5);
      // Position 0 is the identity.
      for (std::size_t d = 0; d < q_heads * head_dim; ++d) REQUIRE(q[d] == q_in[d]);
    }
  }
}
