#include "ref/awq_search.hpp"

#include <algorithm>
#include <cmath>

#include "ref/awq.hpp"
#include "ref/gemm.hpp"

namespace hostrun::ref {

namespace {

// Mean squared difference between x W_a^T and x W_b^T.
double output_error(const float* x, std::size_t tokens, std::size_t in, const float* w_a, const float* w_b,
                    std::size_t out, std::vector<float>& y_a, std::vector<float>& y_b) {
  y_a.resize(tokens * out);
  y_b.resize(tokens * out);
  gemm(x, w_a, DType::f32, tokens, out, in, y_a.data());
  gemm(x, w_b, DType::f32, tokens, out, in, y_b.data());
  double sum = 0.0;
  for (std::size_t i = 0; i < y_a.size(); ++i) {
    const double d = double(y_a[i]) - y_b[i];
    sum += d * d;
  }
  return sum / double(y_a.size());
}

}  // namespace

void awq_fake_quantize_scaled(const float* weight, std::size_t out_features, std::size_t in_features,
                              std::size_t group_size, std::span<const float> scales, float* out) {
  std::vector<float> scaled(out_features * in_features);
  for (std::size_t o = 0; o < out_features; ++o)
    for (std::size_t i = 0; i < in_features; ++i)
      scaled[o * in_features + i] = weight[o * in_features + i] * scales[i];
  awq_dequantize(awq_quantize_rtn_packed(scaled.data(), out_features, in_features, group_size).view(), out);
  for (std::size_t o = 0; o < out_features; ++o)
    for (std::size_t i = 0; i < in_features; ++i) out[o * in_features + i] /= scales[i];
}

AwqScaleSearch awq_search_scales(std::span<const AwqLinearView> layers, std::size_t in_features, const float* x,
                                 std::size_t tokens, std::size_t group_size, int grid) {
  std::vector<double> mean_abs(in_features, 0.0);
  for (std::size_t t = 0; t < tokens; ++t)
    for (std::size_t i = 0; i < in_features; ++i) mean_abs[i] += std::fabs(x[t * in_features + i]);
  for (double& a : mean_abs) a /= double(std::max<std::size_t>(tokens, 1));

  AwqScaleSearch best;
  std::vector<float> scales(in_features), fake, y_a, y_b;
  for (int step = 0; step < grid; ++step) {
    const double alpha = double(step) / grid;
    double lo = INFINITY, hi = 0.0;
    for (std::size_t i = 0; i < in_features; ++i) {
      const double s = std::max(std::pow(mean_abs[i], alpha), 1e-4);
      scales[i] = float(s);
      lo = std::min(lo, s);
      hi = std::max(hi, s);
    }
    const double norm = std::sqrt(lo * hi);
    for (float& s : scales) s = float(std::max(double(s) / norm, 1e-4));
    double loss = 0.0;
    for (const AwqLinearView& layer : layers) {
      fake.resize(layer.out_features * in_features);
      awq_fake_quantize_scaled(layer.weight, layer.out_features, in_features, group_size, scales, fake.data());
      loss += output_error(x, tokens, in_features, fake.data(), layer.weight, layer.out_features, y_a, y_b);
    }
    if (step == 0) best.rtn_loss = loss;
    if (step == 0 || loss < best.loss) {
      best.alpha = float(alpha);
      best.loss = loss;
      best.scales = scales;
    }
  }
  return best;
}

}  // namespace hostrun::ref
