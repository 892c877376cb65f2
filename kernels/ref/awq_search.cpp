#include "ref/awq_search.hpp"

#include <algorithm>
#include <cmath>

#include "ref/awq.hpp"
#include "ref/dtype.hpp"
#include "ref/gemm.hpp"

namespace hostrun::ref {

namespace {

// Mean squared difference between x W_a^T and x W_b^T, as x (W_a - W_b)^T:
// one product instead of two.
double output_error(const float* x, std::size_t tokens, std::size_t in, const float* w_a, const float* w_b,
                    std::size_t out, std::vector<float>& difference, std::vector<float>& y) {
  difference.resize(out * in);
  for (std::size_t i = 0; i < out * in; ++i) difference[i] = w_a[i] - w_b[i];
  y.resize(tokens * out);
  gemm(x, difference.data(), DType::f32, tokens, out, in, y.data());
  double sum = 0.0;
  for (const float v : y) sum += double(v) * v;
  return sum / double(y.size());
}

// One group of one row rounded to nearest 4-bit as awq_quantize_rtn rounds
// it (asymmetric, f16 scale), dequantized into `out`.
void round_group(const float* w, std::size_t group_size, float* out) {
  thread_local std::vector<std::uint8_t> q;  // called once per clip candidate: no allocation each time
  q.resize(group_size);
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

std::vector<double> awq_mean_abs(const float* x, std::size_t tokens, std::size_t in_features) {
  std::vector<double> mean_abs(in_features, 0.0);
  for (std::size_t t = 0; t < tokens; ++t)
    for (std::size_t i = 0; i < in_features; ++i) mean_abs[i] += std::fabs(x[t * in_features + i]);
  for (double& a : mean_abs) a /= double(std::max<std::size_t>(tokens, 1));
  return mean_abs;
}

void awq_alpha_scales(std::span<const double> mean_abs, double alpha, std::span<float> scales) {
  double lo = INFINITY, hi = 0.0;
  for (std::size_t i = 0; i < mean_abs.size(); ++i) {
    const double s = std::max(std::pow(mean_abs[i], alpha), 1e-4);
    scales[i] = float(s);
    lo = std::min(lo, s);
    hi = std::max(hi, s);
  }
  const double norm = std::sqrt(lo * hi);
  for (float& s : scales) s = float(std::max(double(s) / norm, 1e-4));
}

AwqScaleSearch awq_search_scales_with(std::span<const double> mean_abs, int grid,
                                      const std::function<double(std::span<const float>)>& loss_of) {
  AwqScaleSearch best;
  std::vector<float> scales(mean_abs.size());
  for (int step = 0; step < grid; ++step) {
    const double alpha = double(step) / grid;
    awq_alpha_scales(mean_abs, alpha, scales);
    const double loss = loss_of(scales);
    if (step == 0) best.rtn_loss = loss;
    if (step == 0 || loss < best.loss) {
      best.alpha = float(alpha);
      best.loss = loss;
      best.scales = scales;
    }
  }
  return best;
}

AwqScaleSearch awq_search_scales(std::span<const AwqLinearView> layers, std::size_t in_features, const float* x,
                                 std::size_t tokens, std::size_t group_size, int grid) {
  std::vector<float> fake, difference, y;
  return awq_search_scales_with(awq_mean_abs(x, tokens, in_features), grid, [&](std::span<const float> scales) {
    double loss = 0.0;
    for (const AwqLinearView& layer : layers) {
      fake.resize(layer.out_features * in_features);
      awq_fake_quantize_scaled(layer.weight, layer.out_features, in_features, group_size, scales, fake.data());
      loss += output_error(x, tokens, in_features, fake.data(), layer.weight, layer.out_features, difference, y);
    }
    return loss;
  });
}

std::size_t awq_clip_steps(int grid, double max_shrink) { return std::size_t(std::max(1, int(max_shrink * grid))); }

void awq_clip_candidate(const float* w, std::size_t group_size, int k, int grid, float* clamped, float* error) {
  float m = 0.0f;
  for (std::size_t i = 0; i < group_size; ++i) m = std::max(m, std::fabs(w[i]));
  const float c = m * float(1.0 - double(k) / grid);
  for (std::size_t i = 0; i < group_size; ++i) clamped[i] = std::clamp(w[i], -c, c);
  round_group(clamped, group_size, error);
  for (std::size_t i = 0; i < group_size; ++i) error[i] -= w[i];
}

AwqClipSearch awq_search_clip(const float* weight, std::size_t out_features, std::size_t in_features, const float* x,
                              std::size_t tokens, std::size_t group_size, int grid, double max_shrink) {
  AwqClipSearch found;
  found.clipped.assign(weight, weight + out_features * in_features);
  const std::size_t groups = in_features / group_size;
  found.shrink.assign(out_features * groups, 0.0f);
  const std::size_t steps = awq_clip_steps(grid, max_shrink);
  // Per group of input channels, the candidates of a block of rows are judged
  // together: their errors (rounded - w) form a matrix D [rows * steps,
  // group], and x_g D^T gives every candidate's partial products at once
  // (one GEMM instead of a scalar loop a candidate).
  constexpr std::size_t kRowBlock = 64;
  std::vector<float> x_group(tokens * group_size);
  std::vector<float> candidates(kRowBlock * steps * group_size), delta(kRowBlock * steps * group_size);
  std::vector<float> y(tokens * kRowBlock * steps);
  for (std::size_t g = 0; g < groups; ++g) {
    for (std::size_t t = 0; t < tokens; ++t)
      std::copy_n(x + t * in_features + g * group_size, group_size, x_group.begin() + std::ptrdiff_t(t * group_size));
    for (std::size_t o0 = 0; o0 < out_features; o0 += kRowBlock) {
      const std::size_t rows = std::min(kRowBlock, out_features - o0);
      for (std::size_t r = 0; r < rows; ++r) {
        const float* w = weight + (o0 + r) * in_features + g * group_size;
        for (std::size_t k = 0; k < steps; ++k)
          awq_clip_candidate(w, group_size, int(k), grid, candidates.data() + (r * steps + k) * group_size,
                             delta.data() + (r * steps + k) * group_size);
      }
      const std::size_t n = rows * steps;
      gemm(x_group.data(), delta.data(), DType::f32, tokens, n, group_size, y.data());
      for (std::size_t r = 0; r < rows; ++r) {
        double best_err = INFINITY;
        std::size_t best_k = 0;
        for (std::size_t k = 0; k < steps; ++k) {
          double err = 0.0;
          for (std::size_t t = 0; t < tokens; ++t) {
            const double v = y[t * n + r * steps + k];
            err += v * v;
          }
          if (err < best_err) {  // ties keep the smaller shrink
            best_err = err;
            best_k = k;
          }
        }
        found.shrink[(o0 + r) * groups + g] = float(double(best_k) / grid);
        std::copy_n(candidates.begin() + std::ptrdiff_t((r * steps + best_k) * group_size), group_size,
                    found.clipped.begin() + std::ptrdiff_t((o0 + r) * in_features + g * group_size));
      }
    }
  }
  // The losses of the whole layer, as written: clipped-then-rounded and plainly rounded.
  std::vector<float> quantized(out_features * in_features), difference;
  awq_dequantize(awq_quantize_rtn_packed(found.clipped.data(), out_features, in_features, group_size).view(),
                 quantized.data());
  found.loss = output_error(x, tokens, in_features, quantized.data(), weight, out_features, difference, y);
  awq_dequantize(awq_quantize_rtn_packed(weight, out_features, in_features, group_size).view(), quantized.data());
  found.rtn_loss = output_error(x, tokens, in_features, quantized.data(), weight, out_features, difference, y);
  return found;
}

}  // namespace hostrun::ref
