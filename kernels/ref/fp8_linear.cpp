#include "ref/fp8_linear.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ref/dtype.hpp"

namespace hostrun::ref {

namespace {

// max |row[k]|, or NaN when the row holds a NaN or an infinity.
float row_amax(const float* row, std::size_t k) {
  float amax = 0.0f;
  for (std::size_t c = 0; c < k; ++c) {
    if (!std::isfinite(row[c])) return std::numeric_limits<float>::quiet_NaN();
    amax = std::max(amax, std::fabs(row[c]));
  }
  return amax;
}

void quantize_row(const float* row, std::size_t k, float scale, std::uint8_t* codes) {
  for (std::size_t c = 0; c < k; ++c) codes[c] = f32_to_e4m3(row[c] / scale);
}

}  // namespace

void quantize_rows_e4m3(const float* x, std::size_t m, std::size_t k, std::uint8_t* codes, float* scales,
                        float static_scale) {
  const bool fixed = static_scale > 0.0f && std::isfinite(static_scale);
  for (std::size_t i = 0; i < m; ++i) {
    const float* row = x + i * k;
    float scale = static_scale;
    if (!fixed) {
      const float amax = row_amax(row, k);
      scale = std::isnan(amax) ? amax : amax > 0.0f ? amax / kE4m3Max : 1.0f;
    }
    scales[i] = scale;
    quantize_row(row, k, std::isnan(scale) ? 1.0f : scale, codes + i * k);
  }
}

void fp8_linear(const float* x, std::size_t m, std::size_t k, const Fp8Weight& weight, std::size_t n, float* y,
                float static_input_scale) {
  std::vector<std::uint8_t> codes(k);
  std::vector<float> row(k), weight_row(k);
  for (std::size_t i = 0; i < m; ++i) {
    float scale = 0.0f;
    quantize_rows_e4m3(x + i * k, 1, k, codes.data(), &scale, static_input_scale);
    for (std::size_t c = 0; c < k; ++c) row[c] = e4m3_to_f32(codes[c]);
    for (std::size_t j = 0; j < n; ++j) {
      const std::uint8_t* w = weight.codes + j * k;
      float sum = 0.0f;  // each product is exact in f32 (4 + 4 significant bits); only the sum rounds
      for (std::size_t c = 0; c < k; ++c) sum += row[c] * e4m3_to_f32(w[c]);
      const float weight_scale = weight.per_channel ? weight.scale[j] : weight.scale[0];
      y[i * n + j] = std::isnan(scale) ? scale : sum * (scale * weight_scale);
    }
  }
}

void quantize_weight_e4m3(const float* w, std::size_t n, std::size_t k, std::uint8_t* codes, float* scale) {
  for (std::size_t j = 0; j < n; ++j) {
    const float amax = row_amax(w + j * k, k);
    scale[j] = std::isnan(amax) ? amax : amax > 0.0f ? amax / kE4m3Max : 1.0f;
    quantize_row(w + j * k, k, std::isnan(scale[j]) ? 1.0f : scale[j], codes + j * k);
  }
}

}  // namespace hostrun::ref
