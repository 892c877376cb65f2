// AWQ's activation-aware scale search (Lin et al., "AWQ: Activation-aware
// Weight Quantization", 2023), the heart of `lite auto_awq`: input channels
// that carry large activations matter more, so they are scaled up before
// 4-bit rounding (and the inverse scale folded into whatever produces the
// input: the RMSNorm weight before q/k/v and gate/up, v_proj before o_proj,
// up_proj before down_proj), which gives them finer steps.
//
// For one linear input x [tokens, in] shared by the layers W_1..W_k (q, k, v
// share one):
//
//   a[i]    = mean over tokens of |x[t, i]|
//   for alpha in {0, 1/n, ..., (n-1)/n}:
//     s[i]  = a[i]^alpha, normalised by sqrt(max s * min s), floored at 1e-4
//     W'    = RTN(W * s) / s             (columns scaled, rounded, unscaled)
//     loss  = mean over tokens and outputs of (x W'^T - x W^T)^2, summed over the k layers
//   keep the alpha with the least loss (alpha 0 is plain rounding, s = 1).
//
// RTN is awq_quantize_rtn's (awq.hpp), so the loss is the error of the
// checkpoint that would be written.
//
// Then the clipping search (awq_search_clip), on the scaled weights: for
// each output row o and group g of input channels, with m = max |W[o, g]|,
//
//   for k in 0 .. max_shrink * grid - 1:
//     c    = m (1 - k / grid)
//     W_c  = RTN(clamp(W[o, g], -c, c))           (this group alone)
//     err  = mean over tokens of (x[t, g] . (W_c - W[o, g]))^2
//   keep the c with the least err (k = 0 is plain rounding).
//
// Shrinking the range trades a few clipped outliers for finer steps for
// every other weight of the group; the group's own partial products decide.
// AutoAWQ leaves q_proj and k_proj unclipped (attention logits are
// sensitive to their outliers); the caller chooses the layers.
#pragma once

#include <cstddef>
#include <functional>
#include <span>
#include <vector>

namespace hostrun::ref {

struct AwqLinearView {
  const float* weight = nullptr;  // [out_features, in_features]
  std::size_t out_features = 0;
};

struct AwqScaleSearch {
  float alpha = 0.0f;
  std::vector<float> scales;  // [in_features]: multiply W's columns, divide the input
  double loss = 0.0;          // at alpha
  double rtn_loss = 0.0;      // at alpha 0 (plain rounding)
};

// x: [tokens, in_features] f32 (the calibration inputs of these layers).
AwqScaleSearch awq_search_scales(std::span<const AwqLinearView> layers, std::size_t in_features, const float* x,
                                 std::size_t tokens, std::size_t group_size, int grid = 20);

// The pieces of the scale search a device twin reuses (plugins/awq's CUDA
// search computes the loss on the GPU and walks the same grid):
// a[i] = mean over tokens of |x[t, i]| (double sums);
std::vector<double> awq_mean_abs(const float* x, std::size_t tokens, std::size_t in_features);
// s for one alpha of the grid, normalised and floored as above;
void awq_alpha_scales(std::span<const double> mean_abs, double alpha, std::span<float> scales);
// the walk over alpha = 0, 1/grid, ... keeping the least loss(s) (ties keep
// the smaller alpha; alpha 0's loss is rtn_loss).
AwqScaleSearch awq_search_scales_with(std::span<const double> mean_abs, int grid,
                                      const std::function<double(std::span<const float>)>& loss);

// W * s column-wise, rounded to nearest 4-bit in groups, then / s: what the
// layer computes after the scales are folded (dequantized, [out, in]).
void awq_fake_quantize_scaled(const float* weight, std::size_t out_features, std::size_t in_features,
                              std::size_t group_size, std::span<const float> scales, float* out);

struct AwqClipSearch {
  std::vector<float> clipped;  // W [out, in] with each (row, group) clamped to its chosen range: round this next
  std::vector<float> shrink;   // [out, in / group]: the chosen k / grid (0: unclipped)
  double loss = 0.0;           // mean over tokens and outputs of (x W'^T - x W^T)^2 after clipping and rounding
  double rtn_loss = 0.0;       // the same for plain rounding
};

// Candidates a clip search tries per (row, group): max(1, int(max_shrink * grid)).
std::size_t awq_clip_steps(int grid, double max_shrink);
// Candidate k of one row's group w[group_size]: clamped[i] = clamp(w[i], -c, c)
// with c = max|w| (1 - k / grid), and error[i] = RTN(clamped)[i] - w[i]
// (RTN of the group alone, as awq_quantize_rtn rounds it).
void awq_clip_candidate(const float* w, std::size_t group_size, int k, int grid, float* clamped, float* error);

// W [out_features, in_features], x [tokens, in_features] (f32).
AwqClipSearch awq_search_clip(const float* weight, std::size_t out_features, std::size_t in_features, const float* x,
                              std::size_t tokens, std::size_t group_size, int grid = 20, double max_shrink = 0.5);

}  // namespace hostrun::ref
