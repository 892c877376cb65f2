// FP8 (e4m3) linear layers as issue 17 defines them: e4m3 weights with a
// scale per output channel (or one per tensor), activations quantized to
// e4m3 per row (token) just before the product, f32 accumulation:
//
//   s_x[i]  = max_k |x[i, k]| / 448                (448: e4m3's largest finite)
//             or a checkpoint's static input_scale
//   xq[i,k] = e4m3(x[i, k] * (1 / s_x[i]))         (ref/dtype.hpp's conversion:
//                                                   nearest-even, saturating)
//   y[i, j] = s_x[i] * s_w[j] * sum_k e4m3_to_f32(xq[i, k]) * e4m3_to_f32(wq[j, k])
//
// which is what a GEMM on FP8 tensor cores computes (products of e4m3 values
// are exact in f32; only the sum rounds), with the two scales applied once
// to each output. This is the oracle the CUDA FP8 GEMM is checked against on
// the same bytes, and the CPU path of FP8 checkpoints.
//
// Edge cases: a row of zeros gets scale 1 (its codes are 0, its outputs 0);
// a row holding NaN or +-inf has no finite scale and its outputs are NaN,
// as the row's products would be in f32.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hostrun::ref {

inline constexpr float kE4m3Max = 448.0f;

// Per-row dynamic quantization of x [m, k]: codes [m, k] and scales [m]
// (s_x above). With `static_scale` (> 0, finite) every row uses it instead and
// values beyond +-448 * static_scale saturate.
void quantize_rows_e4m3(const float* x, std::size_t m, std::size_t k, std::uint8_t* codes, float* scales,
                        float static_scale = 0.0f);

// The weights as FP8 checkpoints hold them: codes [n, k] row-major (HF
// Linear layout), `scale` [n] when per_channel, else scale[0] for all rows.
struct Fp8Weight {
  const std::uint8_t* codes = nullptr;
  const float* scale = nullptr;
  bool per_channel = true;
};

// The rows a product reads and writes, each with its stride in elements
// (a LinearLayer's rows may be padded).
struct Fp8Rows {
  const float* x = nullptr;  // [m, k]
  std::size_t x_stride = 0;
  float* y = nullptr;        // [m, n]; must not alias x
  std::size_t y_stride = 0;
  std::size_t m = 0;
};

// Floats of workspace fp8_linear needs for m rows of k: the quantized rows
// decoded (m x k), their scales (m) and one decoded weight row (k).
std::size_t fp8_linear_workspace_floats(std::size_t m, std::size_t k);

// y = the formula above; `static_input_scale` as in quantize_rows_e4m3 (0:
// dynamic). Each weight row is decoded once for all m rows, and every sum
// runs over k in order, so the result does not depend on m.
void fp8_linear(const Fp8Rows& rows, std::size_t k, const Fp8Weight& weight, std::size_t n, float static_input_scale,
                float* workspace);

// The same for contiguous x [m, k] and y [m, n], with its own workspace.
void fp8_linear(const float* x, std::size_t m, std::size_t k, const Fp8Weight& weight, std::size_t n, float* y,
                float static_input_scale = 0.0f);

// Offline quantization of a weight matrix w [n, k] (`hostrun lite fp8`):
// per output channel, scale[j] = max_k |w[j, k]| / 448 (1 for a row of
// zeros), codes = e4m3(w / scale).
void quantize_weight_e4m3(const float* w, std::size_t n, std::size_t k, std::uint8_t* codes, float* scale);

}  // namespace hostrun::ref
