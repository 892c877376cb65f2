// Storage dtypes of weights and KV pages, and their conversions to/from f32.
//
//   bf16: the top 16 bits of an IEEE f32 (1 sign, 8 exponent, 7 mantissa).
//         f32 -> bf16 rounds to nearest, ties to even; NaN stays a (quiet) NaN.
//   f16:  IEEE 754 binary16 (1 sign, 5 exponent, 10 mantissa, bias 15,
//         subnormals down to 2^-24). f32 -> f16 rounds to nearest, ties to
//         even, overflows to +-inf (|x| >= 65520), NaN stays a (quiet) NaN.
//
// 16-bit values are carried as raw bits (std::uint16_t) because that is what
// safetensors files and KV pages hold; the DType tag says how to read them.
// The scalar conversions are inline because GEMM and attention call them in
// their inner loops.
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
