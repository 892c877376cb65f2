// AutoAWQ's "GEMM" 4-bit weight format, exactly as AutoAWQ, LMDeploy and vLLM
// write and read it, so checkpoints made elsewhere load as they are:
//
//   qweight  int32 [in, out / 8]      eight 4-bit codes a word, interleaved:
//                                     nibble n (bits 4n .. 4n + 3) of word
//                                     (i, c) holds the code of column
//                                     8c + kAwqPackOrder[n]
//   qzeros   int32 [in / group, out / 8]   the zero points, packed the same way
//   scales   f16   [in / group, out]
//
//   W[o][i] = (q[i][o] - z[i / group][o]) * s[i / group][o]
//
// computed in f32 as one subtraction (exact: small integers) and one
// multiply, so every consumer that dequantizes gets the same floats. W is the
// HF Linear weight [out, in] (y = x W^T).
//
// Round to nearest (awq_quantize_rtn) is the baseline AWQ's scale search must
// beat, and how tests make AWQ checkpoints: per (group, column) asymmetric,
// scale = max(max - min, 1e-5) / 15 rounded to f16, zero = clamp(round(-min /
// scale), 0, 15), q = clamp(round(w / scale) + zero, 0, 15), with AutoAWQ's
// rounding (half to even, as torch.round).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hostrun::ref {

// Nibble n of a packed word holds column 8c + kAwqPackOrder[n] ...
inline constexpr int kAwqPackOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};
// ... so column 8c + j sits in nibble kAwqNibbleOf[j].
inline constexpr int kAwqNibbleOf[8] = {0, 4, 1, 5, 2, 6, 3, 7};

// A layer's tensors as they are in the checkpoint (host memory).
struct AwqWeights {
  const std::int32_t* qweight = nullptr;  // [in, out / 8]
  const std::int32_t* qzeros = nullptr;   // [in / group, out / 8]
  const std::uint16_t* scales = nullptr;  // [in / group, out], IEEE f16 bits
  std::size_t in_features = 0;
  std::size_t out_features = 0;  // a multiple of 8
  std::size_t group_size = 0;    // divides in_features
};

// Code of column `col` in row `row` of a packed [rows, cols / 8] tensor.
inline std::uint32_t awq_code(const std::int32_t* packed, std::size_t cols, std::size_t row, std::size_t col) {
  const auto word = static_cast<std::uint32_t>(packed[row * (cols / 8) + col / 8]);
  return (word >> (4 * kAwqNibbleOf[col % 8])) & 0xfu;
}

// codes [rows, cols] (0..15, cols a multiple of 8) -> packed [rows, cols / 8].
void awq_pack(const std::uint8_t* codes, std::size_t rows, std::size_t cols, std::int32_t* packed);

// W [out, in] f32 from the packed layer.
void awq_dequantize(const AwqWeights& layer, float* weight);

// y[m, out] = x[m, in] W^T with W dequantized as above, in f32 (the CPU path
// and the oracle of the W4A16 kernels): dequantizes one group of input
// channels at a time into `workspace` (awq_gemm_workspace_floats), so no
// [out, in] f32 copy is held and nothing is allocated. Rows of x and y are
// `x_stride` / `y_stride` floats apart. Each group's partial sums are formed
// in input order, then added to y group by group: a fixed order.
std::size_t awq_gemm_workspace_floats(const AwqWeights& layer);
void awq_gemm(const AwqWeights& layer, const float* x, std::size_t x_stride, std::size_t m, float* y,
              std::size_t y_stride, float* workspace);

// Round-to-nearest 4-bit of W [out, in] (f32): q [in, out], zeros [in / group,
// out] (codes 0..15, unpacked), scales [in / group, out] (f16 bits).
void awq_quantize_rtn(const float* weight, std::size_t out_features, std::size_t in_features, std::size_t group_size,
                      std::uint8_t* q, std::uint8_t* zeros, std::uint16_t* scales);

// The same, packed as a checkpoint holds it (the tensors own their storage).
struct AwqPackedLayer {
  std::vector<std::int32_t> qweight;  // [in, out / 8]
  std::vector<std::int32_t> qzeros;   // [in / group, out / 8]
  std::vector<std::uint16_t> scales;  // [in / group, out]
  std::size_t in_features = 0, out_features = 0, group_size = 0;
  AwqWeights view() const {
    return {qweight.data(), qzeros.data(), scales.data(), in_features, out_features, group_size};
  }
};
AwqPackedLayer awq_quantize_rtn_packed(const float* weight, std::size_t out_features, std::size_t in_features,
                                       std::size_t group_size);

}  // namespace hostrun::ref
