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

// s_x of one row: the static scale, or max |row| / 448 (1 for zeros, NaN
// for a row holding NaN or infinity).
float row_scale(const float* row, std::size_t k, float static_scale) {
  if (static_scale > 0.0f && std::isfinite(static_scale)) return static_scale;
  const float amax = row_amax(row, k);
  return std::isnan(amax) ? amax : amax > 0.0f ? amax / kE4m3Max : 1.0f;
}

// The row's codes for `scale` (a NaN scale quantizes as 1: the outputs are NaN anyway). Times the
// reciprocal, not divided: one division a row, and what the CUDA kernels that quantize x do too.
void quantize_row(const float* row, std::size_t k, float scale, std::uint8_t* codes) {
  const float inv = 1.0f / (std::isnan(scale) ? 1.0f : scale);
  for (std::size_t c = 0; c < k; ++c) codes[c] = f32_to_e4m3(row[c] * inv);
}

}  // namespace

void quantize_rows_e4m3(const float* x, std::size_t m, std::size_t k, std::uint8_t* codes, float* scales,
                        float static_scale) {
  for (std::size_t i = 0; i < m; ++i) {
    scales[i] = row_scale(x + i * k, k, static_scale);
    quantize_row(x + i * k, k, scales[i], codes + i * k);
  }
}

std::size_t fp8_linear_workspace_floats(std::size_t m, std::size_t k) { return m * k + m + k; }

void fp8_linear(const Fp8Rows& rows, std::size_t k, const Fp8Weight& weight, std::size_t n, float static_input_scale,
                float* workspace) {
  const std::size_t m = rows.m;
  float* x_decoded = workspace;         // [m, k]: e4m3(x / s_x), as f32
  float* x_scale = workspace + m * k;   // [m]
  float* w_decoded = x_scale + m;       // [k]: one weight row
  for (std::size_t i = 0; i < m; ++i) {
    const float* row = rows.x + i * rows.x_stride;
    x_scale[i] = row_scale(row, k, static_input_scale);
    const float inv = 1.0f / (std::isnan(x_scale[i]) ? 1.0f : x_scale[i]);
    for (std::size_t c = 0; c < k; ++c) x_decoded[i * k + c] = e4m3_to_f32(f32_to_e4m3(row[c] * inv));
  }
  for (std::size_t j = 0; j < n; ++j) {
    for (std::size_t c = 0; c < k; ++c) w_decoded[c] = e4m3_to_f32(weight.codes[j * k + c]);
    const float weight_scale = weight.per_channel ? weight.scale[j] : weight.scale[0];
    for (std::size_t i = 0; i < m; ++i) {
      const float* row = x_decoded + i * k;
      float sum = 0.0f;  // each product is exact in f32 (4 + 4 significant bits); only the sum rounds
      for (std::size_t c = 0; c < k; ++c) sum += row[c] * w_decoded[c];
      rows.y[i * rows.y_stride + j] = std::isnan(x_scale[i]) ? x_scale[i] : sum * (x_scale[i] * weight_scale);
    }
  }
}

void fp8_linear(const float* x, std::size_t m, std::size_t k, const Fp8Weight& weight, std::size_t n, float* y,
                float static_input_scale) {
  std::vector<float> workspace(fp8_linear_workspace_floats(m, k));
  fp8_linear(Fp8Rows{x, k, y, n, m}, k, weight, n, static_input_scale, workspace.data());
}

void quantize_weight_e4m3(const float* w, std::size_t n, std::size_t k, std::uint8_t* codes, float* scale) {
  for (std::size_t j = 0; j < n; ++j) {
    scale[j] = row_scale(w + j * k, k, 0.0f);
    quantize_row(w + j * k, k, scale[j], codes + j * k);
  }
}

}  // namespace hostrun::ref
