#include "ref/rmsnorm.hpp"

#include <cmath>

namespace hostrun::ref {

namespace {

// Normalises one row. The sum of squares is accumulated in double: that is at
// least as accurate as any f32 reduction order (torch's pairwise sum, a CUDA
// tree), so differences against those come from their rounding, not ours.
void normalise_row(const float* row, const void* weight, DType weight_dtype, std::size_t hidden_size, float eps,
                   float* out) {
  double sum_of_squares = 0.0;
  for (std::size_t i = 0; i < hidden_size; ++i) sum_of_squares += static_cast<double>(row[i]) * row[i];
  const float variance = static_cast<float>(sum_of_squares / static_cast<double>(hidden_size));
  // HF: hidden_states * torch.rsqrt(variance + eps), in f32, then * weight.
  const float inv_rms = static_cast<float>(1.0 / std::sqrt(static_cast<double>(variance + eps)));
  for (std::size_t i = 0; i < hidden_size; ++i) out[i] = load_as_f32(weight, weight_dtype, i) * (row[i] * inv_rms);
}

}  // namespace

void rmsnorm(const float* x, const void* weight, DType weight_dtype, std::size_t rows, std::size_t hidden_size,
             float eps, float* y) {
  for (std::size_t r = 0; r < rows; ++r) {
    normalise_row(x + r * hidden_size, weight, weight_dtype, hidden_size, eps, y + r * hidden_size);
  }
}

void add_rmsnorm(float* residual, const float* x, const void* weight, DType weight_dtype, std::size_t rows,
                 std::size_t hidden_size, float eps, float* y) {
  for (std::size_t r = 0; r < rows; ++r) {
    float* residual_row = residual + r * hidden_size;
    const float* x_row = x + r * hidden_size;
    for (std::size_t i = 0; i < hidden_size; ++i) residual_row[i] += x_row[i];
    normalise_row(residual_row, weight, weight_dtype, hidden_size, eps, y + r * hidden_size);
  }
}

}  // namespace hostrun::ref
