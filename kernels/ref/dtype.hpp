// Storage dtypes of weights and KV pages, and their conversions to/from f32.
//
//   bf16: the top 16 bits of an IEEE f32 (1 sign, 8 exponent, 7 mantissa).
//         f32 -> bf16 rounds to nearest, ties to even; NaN stays a (quiet) NaN.
//   f16:  IEEE 754 binary16 (1 sign, 5 exponent, 10 mantissa, bias 15,
//         subnormals down to 2^-24). f32 -> f16 rounds to nearest, ties to
//         even, overflows to +-inf (|x| >= 65520), NaN stays a (quiet) NaN.
//   e4m3: OCP FP8 E4M3 in its "fn" form (1 sign, 4 exponent, 3 mantissa,
//         bias 7, subnormals down to 2^-9, no infinities, S.1111.111 is NaN,
//         largest finite 448). f32 -> e4m3 rounds to nearest, ties to even,
//         and saturates: every finite value beyond +-448, and +-inf, becomes
//         +-448; NaN stays NaN. This is the conversion FP8 quantizers and the
//         GPU use (CUDA's __NV_SATFINITE, PTX cvt.rn.satfinite), because a
//         weight scaled to just past the range should lose a little, not turn
//         into NaN. PyTorch's `.to(torch.float8_e4m3fn)` differs: it makes
//         NaN of |x| > 464 and of inf (c10's Float8_e4m3fn.h), so checkpoints
//         written by it never hold such values and read back the same here.
//   e5m2: OCP FP8 E5M2, the top byte of an IEEE half (1 sign, 5 exponent,
//         2 mantissa, bias 15, subnormals down to 2^-16, infinities and
//         NaNs as in f16, largest finite 57344). f32 -> e5m2 is IEEE: rounds
//         to nearest, ties to even, overflows to inf (|x| >= 61440), NaN
//         stays NaN; the same as PyTorch's float8_e5m2.
//
// 16-bit values are carried as raw bits (std::uint16_t), 8-bit ones as
// std::uint8_t, because that is what safetensors files and KV pages hold; the
// DType tag says how to read them. The scalar conversions are inline because
// GEMM and attention call them in their inner loops. FP8 is not (yet) a
// DType of the reference ops: a model reading FP8 weights converts them with
// the scalar functions.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

namespace hostrun::ref {

enum class DType : std::uint8_t { f32, bf16, f16 };

constexpr std::size_t dtype_size(DType dtype) { return dtype == DType::f32 ? 4 : 2; }
const char* dtype_name(DType dtype);  // "f32", "bf16", "f16"

inline float bf16_to_f32(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

inline std::uint16_t f32_to_bf16(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    // Truncating a NaN could clear every mantissa bit left and turn it into
    // inf; forcing the quiet bit keeps it a NaN.
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  }
  // Adding 0x7fff rounds halfway cases down; the extra lsb of the kept part
  // turns that into ties-to-even. Overflow carries into the exponent, which
  // is exactly rounding up to the next binade (or to inf).
  const std::uint32_t lsb = (bits >> 16) & 1u;
  return static_cast<std::uint16_t>((bits + 0x7fffu + lsb) >> 16);
}

inline float f16_to_f32(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1fu;
  const std::uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24 is exact in f32.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return std::bit_cast<float>(sign | std::bit_cast<std::uint32_t>(magnitude));
  }
  if (exponent == 0x1f) {
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));  // inf or NaN (payload kept)
  }
  return std::bit_cast<float>(sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13));
}

inline std::uint16_t f32_to_f16(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;  // NaN -> quiet NaN
  // 65520 is halfway between the largest half (65504) and 2^16; ties-to-even
  // sends it (and everything above) to inf.
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;
  const std::uint32_t exponent = magnitude >> 23;
  const std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;  // with the implicit 1
  if (exponent < 113) {
    // Below 2^-14 the result is a half subnormal: round(|x| * 2^24).
    // |x| * 2^24 = mantissa * 2^(exponent - 126), so shift right by 126 - exponent.
    if (exponent < 102) return sign;  // < 2^-25: rounds to zero (2^-25 itself is a tie, to even = 0)
    const std::uint32_t shift = 126 - exponent;  // 14 .. 24
    std::uint32_t rounded = mantissa >> shift;
    const std::uint32_t remainder = mantissa & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1);
    if (remainder > halfway || (remainder == halfway && (rounded & 1u))) ++rounded;
    return static_cast<std::uint16_t>(sign | rounded);  // 0x400 (smallest normal) if it carried
  }
  // Normal: rebias the exponent, keep 10 mantissa bits, round on the other 13.
  // A carry out of the mantissa correctly bumps the exponent.
  std::uint32_t half = ((exponent - 112) << 10) | ((mantissa >> 13) & 0x3ffu);
  const std::uint32_t remainder = mantissa & 0x1fffu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (half & 1u))) ++half;
  return static_cast<std::uint16_t>(sign | half);
}

namespace detail {

// Rounds a finite, non-negative f32 (its bits) to nearest, ties to even, into
// a small float format with `mantissa_bits` stored mantissa bits and exponent
// bias `bias`, and returns the format's bits. The result may round past the
// format's largest finite value into its top exponent; callers deal with
// overflow before calling.
inline std::uint32_t round_f32_magnitude(std::uint32_t magnitude, unsigned mantissa_bits, unsigned bias) {
  const std::uint32_t exponent = magnitude >> 23;
  const std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;  // with the implicit 1
  const std::uint32_t smallest_normal_exponent = 127 + 1 - bias;    // 2^(1 - bias) as an f32 exponent
  std::uint32_t shift;        // how many low bits of `mantissa` are dropped
  std::uint32_t kept_base;    // the result before adding the kept mantissa bits
  if (exponent < smallest_normal_exponent) {
    // Subnormal: round(|x| / 2^(1 - bias - mantissa_bits)), where
    // |x| = mantissa * 2^(exponent - 150).
    shift = 150 - (bias - 1 + mantissa_bits) - exponent;
    // Below half the smallest subnormal, or f32 zero/subnormal: rounds to 0
    // (exactly half is a tie, to even = 0).
    if (shift > 24 || exponent == 0) return 0;
    kept_base = 0;
  } else {
    shift = 23 - mantissa_bits;
    // The implicit 1 lands on the exponent's lowest bit, so the rebias is one less.
    kept_base = (exponent - smallest_normal_exponent) << mantissa_bits;
  }
  // A carry out of the kept mantissa bumps the exponent, which is exactly
  // rounding up into the next binade (subnormal -> smallest normal included).
  std::uint32_t rounded = kept_base + (mantissa >> shift);
  const std::uint32_t remainder = mantissa & ((1u << shift) - 1u);
  const std::uint32_t halfway = 1u << (shift - 1);
  if (remainder > halfway || (remainder == halfway && (rounded & 1u))) ++rounded;
  return rounded;
}

}  // namespace detail

inline float e4m3_to_f32(std::uint8_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x80u) << 24;
  const std::uint32_t exponent = (bits >> 3) & 0xfu;
  const std::uint32_t mantissa = bits & 0x7u;
  if ((bits & 0x7fu) == 0x7fu) return std::bit_cast<float>(sign | 0x7fc00000u);  // the only NaN
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * 0x1p-9f;
    return std::bit_cast<float>(sign | std::bit_cast<std::uint32_t>(magnitude));
  }
  return std::bit_cast<float>(sign | ((exponent + (127 - 7)) << 23) | (mantissa << 20));
}

inline std::uint8_t f32_to_e4m3(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const std::uint8_t sign = static_cast<std::uint8_t>((bits >> 24) & 0x80u);
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7fu;
  if (magnitude >= 0x43e00000u) return sign | 0x7eu;  // >= 448 (inf too): saturate, see the top
  return static_cast<std::uint8_t>(sign | detail::round_f32_magnitude(magnitude, 3, 7));
}

inline float e5m2_to_f32(std::uint8_t bits) { return f16_to_f32(static_cast<std::uint16_t>(bits << 8)); }

inline std::uint8_t f32_to_e5m2(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const std::uint8_t sign = static_cast<std::uint8_t>((bits >> 24) & 0x80u);
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7eu;  // quiet NaN
  // 61440 is halfway between the largest e5m2 (57344, odd mantissa) and
  // 2^16; ties-to-even sends it (and everything above) to inf.
  if (magnitude >= 0x47700000u) return sign | 0x7cu;
  return static_cast<std::uint8_t>(sign | detail::round_f32_magnitude(magnitude, 2, 15));
}

// Element i of a buffer of the given dtype, as f32.
inline float load_as_f32(const void* data, DType dtype, std::size_t i) {
  switch (dtype) {
    case DType::bf16: return bf16_to_f32(static_cast<const std::uint16_t*>(data)[i]);
    case DType::f16: return f16_to_f32(static_cast<const std::uint16_t*>(data)[i]);
    case DType::f32: break;
  }
  return static_cast<const float*>(data)[i];
}

// Stores value (rounded as above) as element i of a buffer of the given dtype.
inline void store_from_f32(void* data, DType dtype, std::size_t i, float value) {
  switch (dtype) {
    case DType::bf16: static_cast<std::uint16_t*>(data)[i] = f32_to_bf16(value); return;
    case DType::f16: static_cast<std::uint16_t*>(data)[i] = f32_to_f16(value); return;
    case DType::f32: break;
  }
  static_cast<float*>(data)[i] = value;
}

// Bulk forms: count elements starting at element 0 of src / dst.
void convert_to_f32(const void* src, DType src_dtype, std::size_t count, float* dst);
void convert_from_f32(const float* src, std::size_t count, void* dst, DType dst_dtype);

}  // namespace hostrun::ref
