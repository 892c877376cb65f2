#include "ref/awq_search.hpp"

#include <algorithm>
#include <cmath>

#include "ref/awq.hpp"
#include "ref/dtype.hpp"
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

// One group of one row rounded to nearest 4-bit as awq_quantize_rtn rounds
// it (asymmetric, f16 scale), dequantized into `out`.
void round_group(const float* w, std::size_t group_size, float* out) {
  std::vector<std::uint8_t> q(group_size);
  std::uint8_t zero = 0;
  std::uint16_t scale = 0;
  // A [1, group] matrix: its columns are the group's weights of one output,
  // laid out as awq_quantize_rtn reads W [out, in] with out = 1.
  awq_quantize_rtn(w, 1, group_size, group_size, q.data(), &zero, &scale);
  const float s = f16_to_f32(scale);
  for (std::size_t i = 0; i < group_size; ++i) out[i] = (float(q[i]) - float(zero)) * s;
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

AwqClipSearch awq_search_clip(const float* weight, std::size_t out_features, std::size_t in_features, const float* x,
                              std::size_t tokens, std::size_t group_size, int grid, double max_shrink) {
  AwqClipSearch found;
  found.clipped.assign(weight, weight + out_features * in_features);
  const std::size_t groups = in_features / group_size;
  found.shrink.assign(out_features * groups, 0.0f);
  const int steps = std::max(1, int(max_shrink * grid));
  std::vector<float> clamped(group_size), rounded(group_size), best(group_size);
  for (std::size_t o = 0; o < out_features; ++o) {
    for (std::size_t g = 0; g < groups; ++g) {
      const float* w = weight + o * in_features + g * group_size;
      float m = 0.0f;
      for (std::size_t i = 0; i < group_size; ++i) m = std::max(m, std::fabs(w[i]));
      double best_err = INFINITY;
      for (int k = 0; k < steps; ++k) {
        const float c = m * float(1.0 - double(k) / grid);
        for (std::size_t i = 0; i < group_size; ++i) clamped[i] = std::clamp(w[i], -c, c);
        round_group(clamped.data(), group_size, rounded.data());
        double err = 0.0;
        for (std::size_t t = 0; t < tokens; ++t) {
          const float* xt = x + t * in_features + g * group_size;
          double d = 0.0;
          for (std::size_t i = 0; i < group_size; ++i) d += double(xt[i]) * (double(rounded[i]) - w[i]);
          err += d * d;
        }
        if (err < best_err) {  // ties keep the smaller shrink
          best_err = err;
          best = clamped;
          found.shrink[o * groups + g] = float(double(k) / grid);
        }
      }
      std::copy(best.begin(), best.end(), found.clipped.begin() + std::ptrdiff_t(o * in_features + g * group_size));
    }
  }
  // The losses of the whole layer, as written: clipped-then-rounded and plainly rounded.
  std::vector<float> quantized(out_features * in_features), y_a, y_b;
  awq_dequantize(awq_quantize_rtn_packed(found.clipped.data(), out_features, in_features, group_size).view(),
                 quantized.data());
  found.loss = output_error(x, tokens, in_features, quantized.data(), weight, out_features, y_a, y_b);
  awq_dequantize(awq_quantize_rtn_packed(weight, out_features, in_features, group_size).view(), quantized.data());
  found.rtn_loss = output_error(x, tokens, in_features, quantized.data(), weight, out_features, y_a, y_b);
  return found;
}

}  // namespace hostrun::ref
