#include "ref/awq.hpp"

#include <algorithm>
#include <cmath>

#include "ref/dtype.hpp"

namespace hostrun::ref {

void awq_pack(const std::uint8_t* codes, std::size_t rows, std::size_t cols, std::int32_t* packed) {
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols / 8; ++c) {
      std::uint32_t word = 0;
      for (int n = 0; n < 8; ++n)
        word |= static_cast<std::uint32_t>(codes[r * cols + 8 * c + kAwqPackOrder[n]] & 0xfu) << (4 * n);
      packed[r * (cols / 8) + c] = static_cast<std::int32_t>(word);
    }
}

namespace {

// W[o][i] for one (input channel, output column), the format's formula.
float awq_weight(const AwqWeights& layer, std::size_t i, std::size_t o) {
  const std::size_t g = i / layer.group_size;
  const float q = float(awq_code(layer.qweight, layer.out_features, i, o));
  const float z = float(awq_code(layer.qzeros, layer.out_features, g, o));
  return (q - z) * f16_to_f32(layer.scales[g * layer.out_features + o]);
}

}  // namespace

void awq_dequantize(const AwqWeights& layer, float* weight) {
  for (std::size_t o = 0; o < layer.out_features; ++o)
    for (std::size_t i = 0; i < layer.in_features; ++i) weight[o * layer.in_features + i] = awq_weight(layer, i, o);
}

std::size_t awq_gemm_workspace_floats(const AwqWeights& layer) {
  return (layer.group_size + 1) * layer.out_features;
}

void awq_gemm(const AwqWeights& layer, const float* x, std::size_t x_stride, std::size_t m, float* y,
              std::size_t y_stride, float* workspace) {
  const std::size_t out = layer.out_features, group = layer.group_size;
  float* w = workspace;                   // one group of input channels, [group, out]
  float* partial = workspace + group * out;  // [out]
  for (std::size_t r = 0; r < m; ++r) std::fill(y + r * y_stride, y + r * y_stride + out, 0.0f);
  for (std::size_t g0 = 0; g0 < layer.in_features; g0 += group) {
    for (std::size_t i = 0; i < group; ++i)
      for (std::size_t o = 0; o < out; ++o) w[i * out + o] = awq_weight(layer, g0 + i, o);
    for (std::size_t r = 0; r < m; ++r) {
      std::fill(partial, partial + out, 0.0f);
      for (std::size_t i = 0; i < group; ++i) {
        const float xi = x[r * x_stride + g0 + i];
        const float* wi = w + i * out;
        for (std::size_t o = 0; o < out; ++o) partial[o] += xi * wi[o];
      }
      for (std::size_t o = 0; o < out; ++o) y[r * y_stride + o] += partial[o];
    }
  }
}

void awq_quantize_rtn(const float* weight, std::size_t out_features, std::size_t in_features, std::size_t group_size,
                      std::uint8_t* q, std::uint8_t* zeros, std::uint16_t* scales) {
  const std::size_t groups = in_features / group_size;
  for (std::size_t o = 0; o < out_features; ++o)
    for (std::size_t g = 0; g < groups; ++g) {
      const float* w = weight + o * in_features + g * group_size;
      const auto [lo, hi] = std::minmax_element(w, w + group_size);
      // AutoAWQ keeps the f32 scale for the codes and stores it as f16; the
      // codes here use the stored (f16-rounded) scale, so they are what the
      // checkpoint's scale says.
      const std::uint16_t scale_bits = f32_to_f16(std::max(*hi - *lo, 1e-5f) / 15.0f);
      const float scale = f16_to_f32(scale_bits);
      const float zero = std::clamp(std::nearbyint(-*lo / scale), 0.0f, 15.0f);
      scales[g * out_features + o] = scale_bits;
      zeros[g * out_features + o] = static_cast<std::uint8_t>(zero);
      for (std::size_t i = 0; i < group_size; ++i)
        q[(g * group_size + i) * out_features + o] =
            static_cast<std::uint8_t>(std::clamp(std::nearbyint(w[i] / scale) + zero, 0.0f, 15.0f));
    }
}

AwqPackedLayer awq_quantize_rtn_packed(const float* weight, std::size_t out_features, std::size_t in_features,
                                       std::size_t group_size) {
  const std::size_t groups = in_features / group_size;
  std::vector<std::uint8_t> q(in_features * out_features), zeros(groups * out_features);
  AwqPackedLayer layer;
  layer.scales.resize(groups * out_features);
  awq_quantize_rtn(weight, out_features, in_features, group_size, q.data(), zeros.data(), layer.scales.data());
  layer.qweight.resize(in_features * out_features / 8);
  layer.qzeros.resize(groups * out_features / 8);
  awq_pack(q.data(), in_features, out_features, layer.qweight.data());
  awq_pack(zeros.data(), groups, out_features, layer.qzeros.data());
  layer.in_features = in_features;
  layer.out_features = out_features;
  layer.group_size = group_size;
  return layer;
}

}  // namespace hostrun::ref
