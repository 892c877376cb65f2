#include "ref/kv_quant.hpp"

#include <algorithm>
#include <cmath>

#include "ref/dtype.hpp"

namespace hostrun::ref {

namespace {

constexpr float kF16Max = 65504.0f;

std::uint16_t saturated_f16(float value) { return f32_to_f16(std::clamp(value, -kF16Max, kF16Max)); }

std::uint32_t code_of(float x, float scale, float zero, std::uint32_t top) {
  if (std::isnan(x)) return 0;
  if (std::isinf(x)) return x > 0 ? top : 0;
  if (scale == 0.0f) return 0;
  // nearbyint rounds half to even in the default rounding mode, as the GPU's
  // __float2int_rn does; the clamp comes after, on the rounded value.
  const float q = std::nearbyint((x - zero) / scale);
  return q <= 0.0f ? 0 : q >= float(top) ? top : std::uint32_t(q);
}

}  // namespace

KvQuantParams quantize_kv_row(const float* x, std::size_t n, int bits, std::uint8_t* codes) {
  float lo = INFINITY, hi = -INFINITY;
  for (std::size_t i = 0; i < n; ++i)
    if (std::isfinite(x[i])) {
      lo = std::min(lo, x[i]);
      hi = std::max(hi, x[i]);
    }
  if (lo > hi) lo = hi = 0.0f;  // no finite value
  const std::uint32_t top = (1u << bits) - 1;
  KvQuantParams params;
  params.scale = saturated_f16((hi - lo) / float(top));
  params.zero = saturated_f16(lo);
  const float scale = f16_to_f32(params.scale), zero = f16_to_f32(params.zero);
  if (bits == 8) {
    for (std::size_t i = 0; i < n; ++i) codes[i] = std::uint8_t(code_of(x[i], scale, zero, top));
  } else {
    std::fill(codes, codes + kv_code_bytes(n, bits), std::uint8_t(0));
    for (std::size_t i = 0; i < n; ++i)
      codes[i / 2] |= std::uint8_t(code_of(x[i], scale, zero, top) << (i % 2 == 0 ? 0 : 4));
  }
  return params;
}

void dequantize_kv_row(const std::uint8_t* codes, std::size_t n, int bits, KvQuantParams params, float* out) {
  const float scale = f16_to_f32(params.scale), zero = f16_to_f32(params.zero);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t q = bits == 8 ? codes[i] : (codes[i / 2] >> (i % 2 == 0 ? 0 : 4)) & 0xfu;
    out[i] = std::fma(float(q), scale, zero);
  }
}

void rotate_kv_row(float* row, std::size_t n) {
  if (n == 0) return;
  const std::size_t block = n & (~n + 1);  // the lowest set bit: the largest power of two dividing n
  if (block == 1) return;
  const float norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(block)));
  for (std::size_t start = 0; start < n; start += block) {
    float* x = row + start;
    for (std::size_t h = 1; h < block; h *= 2)
      for (std::size_t i = 0; i < block; i += 2 * h)
        for (std::size_t j = i; j < i + h; ++j) {
          const float a = x[j], b = x[j + h];
          x[j] = a + b;
          x[j + h] = a - b;
        }
    for (std::size_t i = 0; i < block; ++i) x[i] *= norm;
  }
}

}  // namespace hostrun::ref
