#include "ref/gemm.hpp"

#include <algorithm>
#include <vector>

namespace hostrun::ref {

namespace {

// A tile of weight rows x a slice of k. 32 rows x 512 columns of f32 is 64 KiB:
// it stays in L2 while every row of x streams past it, so each 16-bit weight
// is converted once per call rather than once per row of x.
constexpr std::size_t tile_rows = 32;
constexpr std::size_t tile_depth = 512;
// Independent partial sums per output: lets the compiler keep a vector of
// them in registers without reassociating (we build without -ffast-math).
constexpr std::size_t lanes = 8;

// y_out[j] += dot(x_slice, w_rows[j]) for j in 0..3; all slices have `depth` elements.
inline void dot_four_rows(const float* x_slice, const float* w0, const float* w1, const float* w2, const float* w3,
                          std::size_t depth, float* y_out) {
  float acc0[lanes] = {}, acc1[lanes] = {}, acc2[lanes] = {}, acc3[lanes] = {};
  std::size_t i = 0;
  for (; i + lanes <= depth; i += lanes) {
    for (std::size_t l = 0; l < lanes; ++l) {
      const float xv = x_slice[i + l];
      acc0[l] += xv * w0[i + l];
      acc1[l] += xv * w1[i + l];
      acc2[l] += xv * w2[i + l];
      acc3[l] += xv * w3[i + l];
    }
  }
  for (; i < depth; ++i) {
    acc0[0] += x_slice[i] * w0[i];
    acc1[0] += x_slice[i] * w1[i];
    acc2[0] += x_slice[i] * w2[i];
    acc3[0] += x_slice[i] * w3[i];
  }
  float sums[4] = {};
  for (std::size_t l = 0; l < lanes; ++l) {
    sums[0] += acc0[l];
    sums[1] += acc1[l];
    sums[2] += acc2[l];
    sums[3] += acc3[l];
  }
  for (int j = 0; j < 4; ++j) y_out[j] += sums[j];
}

inline float dot_one_row(const float* x_slice, const float* w, std::size_t depth) {
  float acc[lanes] = {};
  std::size_t i = 0;
  for (; i + lanes <= depth; i += lanes) {
    for (std::size_t l = 0; l < lanes; ++l) acc[l] += x_slice[i + l] * w[i + l];
  }
  for (; i < depth; ++i) acc[0] += x_slice[i] * w[i];
  float sum = 0.0f;
  for (std::size_t l = 0; l < lanes; ++l) sum += acc[l];
  return sum;
}

}  // namespace

void gemm(const float* x, const void* weight, DType weight_dtype, std::size_t m, std::size_t n, std::size_t k,
          float* y) {
  std::fill(y, y + m * n, 0.0f);
  std::vector<float> converted_tile;
  if (weight_dtype != DType::f32) converted_tile.resize(tile_rows * tile_depth);
  const auto* weight_bytes = static_cast<const unsigned char*>(weight);
  const std::size_t element_bytes = dtype_size(weight_dtype);

  for (std::size_t k0 = 0; k0 < k; k0 += tile_depth) {
    const std::size_t depth = std::min(tile_depth, k - k0);
    for (std::size_t n0 = 0; n0 < n; n0 += tile_rows) {
      const std::size_t rows = std::min(tile_rows, n - n0);
      // Pointers to the f32 weight rows of this tile, starting at column k0.
      const float* tile_row[tile_rows];
      for (std::size_t r = 0; r < rows; ++r) {
        const unsigned char* src = weight_bytes + ((n0 + r) * k + k0) * element_bytes;
        if (weight_dtype == DType::f32) {
          tile_row[r] = reinterpret_cast<const float*>(src);
        } else {
          float* dst = converted_tile.data() + r * tile_depth;
          convert_to_f32(src, weight_dtype, depth, dst);
          tile_row[r] = dst;
        }
      }
      for (std::size_t row = 0; row < m; ++row) {
        const float* x_slice = x + row * k + k0;
        float* y_row = y + row * n + n0;
        std::size_t r = 0;
        for (; r + 4 <= rows; r += 4) {
          dot_four_rows(x_slice, tile_row[r], tile_row[r + 1], tile_row[r + 2], tile_row[r + 3], depth, y_row + r);
        }
        for (; r < rows; ++r) y_row[r] += dot_one_row(x_slice, tile_row[r], depth);
      }
    }
  }
}

}  // namespace hostrun::ref
