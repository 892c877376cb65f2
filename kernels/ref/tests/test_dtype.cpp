// bf16 / f16 / FP8 conversions against independent definitions: exhaustive
// round trips of every 16-bit and 8-bit pattern, hand-picked rounding cases,
// and random f32 values compared with a "nearest representable value, ties
// to even" search.
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "ref/dtype.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;

namespace {

std::uint32_t bits_of(float value) { return std::bit_cast<std::uint32_t>(value); }
float float_of(std::uint32_t bits) { return std::bit_cast<float>(bits); }

// Nearest bf16 by comparing distances to the two neighbours in double (not
// the bit trick under test).
std::uint16_t nearest_bf16(float value) {
  const std::uint32_t bits = bits_of(value);
  const std::uint16_t below = static_cast<std::uint16_t>(bits >> 16);  // toward zero
  const std::uint16_t above = static_cast<std::uint16_t>(below + 1);   // away from zero
  const double distance_below = std::fabs(static_cast<double>(value) - bf16_to_f32(below));
  const double distance_above = std::fabs(static_cast<double>(value) - bf16_to_f32(above));
  if (distance_below < distance_above) return below;
  if (distance_above < distance_below) return above;
  return (below & 1u) == 0 ? below : above;
}

// Nearest f16 by binary search over the values of all finite non-negative
// halves (bits 0x0000..0x7bff increase with their value).
std::uint16_t nearest_f16(float value) {
  static const std::vector<double> half_values = [] {
    std::vector<double> values;
    for (std::uint32_t bits = 0; bits <= 0x7bffu; ++bits) {
      const std::uint32_t exponent = bits >> 10, mantissa = bits & 0x3ffu;
      values.push_back(exponent == 0 ? std::ldexp(static_cast<double>(mantissa), -24)
                                     : std::ldexp(1.0 + mantissa / 1024.0, static_cast<int>(exponent) - 15));
    }
    return values;
  }();
  const std::uint16_t sign = std::signbit(value) ? 0x8000u : 0u;
  const double magnitude = std::fabs(static_cast<double>(value));
  if (magnitude >= 65520.0) return sign | 0x7c00u;
  const auto above_it = std::lower_bound(half_values.begin(), half_values.end(), magnitude);
  if (above_it == half_values.end()) return sign | 0x7bffu;
  auto above = static_cast<std::uint16_t>(above_it - half_values.begin());
  if (*above_it == magnitude || above == 0) return sign | above;
  const std::uint16_t below = above - 1;
  const double distance_below = magnitude - half_values[below];
  const double distance_above = half_values[above] - magnitude;
  if (distance_below < distance_above) return sign | below;
  if (distance_above < distance_below) return sign | above;
  return sign | ((below & 1u) == 0 ? below : above);
}

// The value of every finite non-negative FP8 code, from the format's
// definition (not the decoder under test): codes 0x00 .. `largest_finite`
// increase with their value.
std::vector<double> fp8_values(unsigned mantissa_bits, int bias, unsigned largest_finite) {
  std::vector<double> values;
  for (unsigned code = 0; code <= largest_finite; ++code) {
    const unsigned exponent = code >> mantissa_bits, mantissa = code & ((1u << mantissa_bits) - 1u);
    const double fraction = static_cast<double>(mantissa) / (1u << mantissa_bits);
    values.push_back(exponent == 0 ? std::ldexp(fraction, 1 - bias)
                                   : std::ldexp(1.0 + fraction, static_cast<int>(exponent) - bias));
  }
  return values;
}

const std::vector<double>& e4m3_values() {
  static const std::vector<double> values = fp8_values(3, 7, 0x7e);
  return values;
}
const std::vector<double>& e5m2_values() {
  static const std::vector<double> values = fp8_values(2, 15, 0x7b);
  return values;
}

// Nearest code of a finite |value| no larger than the format's largest
// finite value, by binary search; ties go to the even code.
std::uint8_t nearest_fp8(float value, const std::vector<double>& values) {
  const std::uint8_t sign = std::signbit(value) ? 0x80u : 0u;
  const double magnitude = std::fabs(static_cast<double>(value));
  const auto above_it = std::lower_bound(values.begin(), values.end(), magnitude);
  REQUIRE(above_it != values.end());
  const auto above = static_cast<std::uint8_t>(above_it - values.begin());
  if (*above_it == magnitude || above == 0) return sign | above;
  const std::uint8_t below = above - 1;
  const double distance_below = magnitude - values[below];
  const double distance_above = values[above] - magnitude;
  if (distance_below < distance_above) return sign | below;
  if (distance_above < distance_below) return sign | above;
  return sign | ((below & 1u) == 0 ? below : above);
}

}  // namespace

TEST_CASE("bf16: every bit pattern survives bf16 -> f32 -> bf16") {
  for (std::uint32_t bits = 0; bits <= 0xffffu; ++bits) {
    const float value = bf16_to_f32(static_cast<std::uint16_t>(bits));
    const std::uint16_t back = f32_to_bf16(value);
    if (std::isnan(value)) {
      REQUIRE(std::isnan(bf16_to_f32(back)));
    } else {
      REQUIRE(back == bits);
    }
  }
}

TEST_CASE("bf16: rounding to nearest, ties to even, by hand") {
  CHECK(f32_to_bf16(1.0f) == 0x3f80);
  CHECK(f32_to_bf16(float_of(0x3f808000u)) == 0x3f80);  // 1 + 2^-8: tie, 0x3f80 is even
  CHECK(f32_to_bf16(float_of(0x3f818000u)) == 0x3f82);  // tie, 0x3f81 odd -> up
  CHECK(f32_to_bf16(float_of(0x3f808001u)) == 0x3f81);  // just above the tie
  CHECK(f32_to_bf16(float_of(0x3f807fffu)) == 0x3f80);  // just below the tie
  CHECK(f32_to_bf16(std::numeric_limits<float>::max()) == 0x7f80);  // rounds up to inf
  CHECK(f32_to_bf16(-0.0f) == 0x8000);
  CHECK(f32_to_bf16(-std::numeric_limits<float>::infinity()) == 0xff80);
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(float_of(0x7f800001u)))));  // NaN that truncation would make inf
  CHECK(bf16_to_f32(0x4049) == 3.140625f);
}

TEST_CASE("bf16: random f32 values round to the nearest bf16") {
  std::mt19937 rng(11);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  for (int i = 0; i < 200000; ++i) {
    const float value = float_of(any_bits(rng));
    if (std::isnan(value) || std::isinf(value)) continue;
    if (std::fabs(value) > float_of(0x7f7f7fffu)) continue;  // rounds to inf; covered by hand above
    REQUIRE(f32_to_bf16(value) == nearest_bf16(value));
  }
}

TEST_CASE("f16: every bit pattern survives f16 -> f32 -> f16") {
  for (std::uint32_t bits = 0; bits <= 0xffffu; ++bits) {
    const float value = f16_to_f32(static_cast<std::uint16_t>(bits));
    const std::uint16_t back = f32_to_f16(value);
    if (std::isnan(value)) {
      REQUIRE(std::isnan(f16_to_f32(back)));
    } else {
      REQUIRE(back == bits);
    }
  }
}

TEST_CASE("f16: IEEE half values and rounding, by hand") {
  CHECK(f32_to_f16(1.0f) == 0x3c00);
  CHECK(f32_to_f16(-2.0f) == 0xc000);
  CHECK(f32_to_f16(0.1f) == 0x2e66);
  CHECK(f32_to_f16(65504.0f) == 0x7bff);
  CHECK(f32_to_f16(65519.0f) == 0x7bff);
  CHECK(f32_to_f16(65520.0f) == 0x7c00);  // tie between 65504 and 2^16: to even = inf
  CHECK(f32_to_f16(1e10f) == 0x7c00);
  CHECK(f32_to_f16(0x1p-14f) == 0x0400);  // smallest normal
  CHECK(f32_to_f16(0x1p-24f) == 0x0001);  // smallest subnormal
  CHECK(f32_to_f16(0x1p-25f) == 0x0000);  // tie with 0: to even
  CHECK(f32_to_f16(0x1.000002p-25f) == 0x0001);
  CHECK(f32_to_f16(0x1.8p-24f) == 0x0002);  // 1.5 * 2^-24: tie, to even (2)
  CHECK(f32_to_f16(0x1.ff8p-15f) == 0x03ff);  // largest subnormal, 1023 * 2^-24
  CHECK(f32_to_f16(0x1.ffbp-15f) == 0x03ff);  // below the tie with 1024 * 2^-24
  CHECK(f32_to_f16(0x1.ffcp-15f) == 0x0400);  // the tie: 1023 is odd, so up into the normals
  CHECK(f32_to_f16(0x1.ffep-15f) == 0x0400);
  CHECK(f32_to_f16(-0.0f) == 0x8000);
  CHECK(f16_to_f32(0x0001) == 0x1p-24f);
  CHECK(f16_to_f32(0x3555) == 0x1.554p-2f);
  CHECK(std::isinf(f16_to_f32(0xfc00)));
  CHECK(std::isnan(f16_to_f32(f32_to_f16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST_CASE("f16: random f32 values round to the nearest f16") {
  std::mt19937 rng(12);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  // Exponents around the half range (subnormals through overflow) matter most.
  std::uniform_int_distribution<std::uint32_t> exponent(95, 145);
  for (int i = 0; i < 200000; ++i) {
    const std::uint32_t bits = (any_bits(rng) & 0x807fffffu) | (exponent(rng) << 23);
    const float value = float_of(bits);
    REQUIRE(f32_to_f16(value) == nearest_f16(value));
  }
}

TEST_CASE("bulk conversions agree with the scalar ones") {
  std::mt19937 rng(13);
  const std::vector<float> values = hostrun::ref::test::random_floats(rng, 1000, -100.0f, 100.0f);
  for (const DType dtype : hostrun::ref::test::all_dtypes) {
    CAPTURE(dtype_name(dtype));
    std::vector<unsigned char> stored(values.size() * dtype_size(dtype));
    convert_from_f32(values.data(), values.size(), stored.data(), dtype);
    std::vector<float> loaded(values.size());
    convert_to_f32(stored.data(), dtype, values.size(), loaded.data());
    for (std::size_t i = 0; i < values.size(); ++i) {
      float expected = values[i];
      if (dtype == DType::bf16) expected = bf16_to_f32(f32_to_bf16(values[i]));
      if (dtype == DType::f16) expected = f16_to_f32(f32_to_f16(values[i]));
      REQUIRE(loaded[i] == expected);
      REQUIRE(load_as_f32(stored.data(), dtype, i) == expected);
    }
  }
}

TEST_CASE("e4m3: all 256 codes decode to their defined value and encode back") {
  for (unsigned code = 0; code <= 0xffu; ++code) {
    CAPTURE(code);
    const float value = e4m3_to_f32(static_cast<std::uint8_t>(code));
    if ((code & 0x7fu) == 0x7fu) {
      REQUIRE(std::isnan(value));
      REQUIRE(f32_to_e4m3(value) == code);  // the sign of a NaN survives too
      continue;
    }
    REQUIRE(std::isfinite(value));  // e4m3fn has no infinities
    const double magnitude = e4m3_values()[code & 0x7fu];
    REQUIRE(static_cast<double>(value) == ((code & 0x80u) ? -magnitude : magnitude));
    REQUIRE(std::signbit(value) == ((code & 0x80u) != 0));  // -0 is 0x80
    REQUIRE(f32_to_e4m3(value) == code);
  }
}

TEST_CASE("e5m2: all 256 codes decode to their defined value and encode back") {
  for (unsigned code = 0; code <= 0xffu; ++code) {
    CAPTURE(code);
    const float value = e5m2_to_f32(static_cast<std::uint8_t>(code));
    const unsigned magnitude_code = code & 0x7fu;
    if (magnitude_code > 0x7cu) {
      REQUIRE(std::isnan(value));
      REQUIRE(std::isnan(e5m2_to_f32(f32_to_e5m2(value))));
      continue;
    }
    if (magnitude_code == 0x7cu) {
      REQUIRE(std::isinf(value));
    } else {
      const double magnitude = e5m2_values()[magnitude_code];
      REQUIRE(static_cast<double>(value) == ((code & 0x80u) ? -magnitude : magnitude));
    }
    REQUIRE(std::signbit(value) == ((code & 0x80u) != 0));
    REQUIRE(f32_to_e5m2(value) == code);
  }
}

TEST_CASE("e4m3: known values, ties to even, saturation, NaN") {
  CHECK(f32_to_e4m3(1.0f) == 0x38);
  CHECK(f32_to_e4m3(-2.0f) == 0xc0);
  CHECK(f32_to_e4m3(448.0f) == 0x7e);  // largest finite
  CHECK(f32_to_e4m3(0x1p-6f) == 0x08);  // smallest normal
  CHECK(f32_to_e4m3(0x1p-9f) == 0x01);  // smallest subnormal
  CHECK(f32_to_e4m3(0x1.cp-7f) == 0x07);  // largest subnormal, 7 * 2^-9
  CHECK(f32_to_e4m3(0x1.ep-7f) == 0x08);  // 7.5 * 2^-9: tie, 7 is odd, so up into the normals
  CHECK(f32_to_e4m3(0x1p-10f) == 0x00);  // half the smallest subnormal: tie, to even = 0
  CHECK(f32_to_e4m3(0x1.000002p-10f) == 0x01);
  CHECK(f32_to_e4m3(0x1.8p-9f) == 0x02);  // 1.5 * 2^-9: tie, to even (2)
  CHECK(f32_to_e4m3(1.0625f) == 0x38);  // tie between 1 (0x38, even) and 1.125
  CHECK(f32_to_e4m3(1.1875f) == 0x3a);  // tie between 1.125 (0x39, odd) and 1.25
  CHECK(f32_to_e4m3(1.0626f) == 0x39);
  CHECK(f32_to_e4m3(-0.0f) == 0x80);
  CHECK(e4m3_to_f32(0x4d) == 6.5f);
  CHECK(e4m3_to_f32(0xfe) == -448.0f);
  // Saturating, where PyTorch's cast would give NaN above 464 (see dtype.hpp).
  CHECK(f32_to_e4m3(449.0f) == 0x7e);
  CHECK(f32_to_e4m3(464.0f) == 0x7e);
  CHECK(f32_to_e4m3(465.0f) == 0x7e);
  CHECK(f32_to_e4m3(-1e30f) == 0xfe);
  CHECK(f32_to_e4m3(std::numeric_limits<float>::max()) == 0x7e);
  CHECK(f32_to_e4m3(std::numeric_limits<float>::infinity()) == 0x7e);
  CHECK(f32_to_e4m3(-std::numeric_limits<float>::infinity()) == 0xfe);
  CHECK(f32_to_e4m3(std::numeric_limits<float>::quiet_NaN()) == 0x7f);
  CHECK(f32_to_e4m3(-std::numeric_limits<float>::quiet_NaN()) == 0xff);
  CHECK(f32_to_e4m3(float_of(0x7f800001u)) == 0x7f);  // a signalling NaN is a NaN too
  CHECK(f32_to_e4m3(std::numeric_limits<float>::denorm_min()) == 0x00);
}

TEST_CASE("e5m2: known values, ties to even, overflow to inf, NaN") {
  CHECK(f32_to_e5m2(1.0f) == 0x3c);
  CHECK(f32_to_e5m2(-2.0f) == 0xc0);
  CHECK(f32_to_e5m2(57344.0f) == 0x7b);  // largest finite
  CHECK(f32_to_e5m2(61439.0f) == 0x7b);
  CHECK(f32_to_e5m2(61440.0f) == 0x7c);  // tie between 57344 (odd) and 2^16: to even = inf
  CHECK(f32_to_e5m2(-1e30f) == 0xfc);
  CHECK(f32_to_e5m2(std::numeric_limits<float>::infinity()) == 0x7c);
  CHECK(f32_to_e5m2(0x1p-14f) == 0x04);  // smallest normal
  CHECK(f32_to_e5m2(0x1p-16f) == 0x01);  // smallest subnormal
  CHECK(f32_to_e5m2(0x1p-17f) == 0x00);  // tie with 0: to even
  CHECK(f32_to_e5m2(0x1.8p-15f) == 0x03);  // 3 * 2^-16, exact
  CHECK(f32_to_e5m2(0x1.cp-15f) == 0x04);  // 3.5 * 2^-16: tie, 3 odd, up into the normals
  CHECK(f32_to_e5m2(1.125f) == 0x3c);  // tie between 1 (0x3c, even) and 1.25
  CHECK(f32_to_e5m2(1.375f) == 0x3e);  // tie between 1.25 (0x3d, odd) and 1.5
  CHECK(f32_to_e5m2(-0.0f) == 0x80);
  CHECK(e5m2_to_f32(0x47) == 7.0f);
  CHECK(std::isinf(e5m2_to_f32(0xfc)));
  CHECK(std::isnan(e5m2_to_f32(f32_to_e5m2(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isnan(e5m2_to_f32(f32_to_e5m2(float_of(0x7f800001u)))));
  CHECK(f32_to_e5m2(0.1f) == 0x2e);  // 1.6 * 2^-4 -> 1.5 * 2^-4
}

TEST_CASE("e4m3 / e5m2: random f32 values round to the nearest code") {
  std::mt19937 rng(14);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  // Exponents from below half the smallest subnormal to past the largest finite.
  std::uniform_int_distribution<std::uint32_t> e4m3_exponent(113, 136), e5m2_exponent(105, 143);
  for (int i = 0; i < 200000; ++i) {
    const float e4m3_input = float_of((any_bits(rng) & 0x807fffffu) | (e4m3_exponent(rng) << 23));
    CAPTURE(e4m3_input);
    if (std::fabs(e4m3_input) > 448.0f) {
      REQUIRE((f32_to_e4m3(e4m3_input) & 0x7fu) == 0x7eu);
    } else {
      REQUIRE(f32_to_e4m3(e4m3_input) == nearest_fp8(e4m3_input, e4m3_values()));
    }
    const float e5m2_input = float_of((any_bits(rng) & 0x807fffffu) | (e5m2_exponent(rng) << 23));
    CAPTURE(e5m2_input);
    if (std::fabs(e5m2_input) >= 61440.0f) {
      REQUIRE((f32_to_e5m2(e5m2_input) & 0x7fu) == 0x7cu);
    } else if (std::fabs(e5m2_input) > 57344.0f) {
      REQUIRE((f32_to_e5m2(e5m2_input) & 0x7fu) == 0x7bu);
    } else {
      REQUIRE(f32_to_e5m2(e5m2_input) == nearest_fp8(e5m2_input, e5m2_values()));
    }
  }
}
