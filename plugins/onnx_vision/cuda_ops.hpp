// The CUDA kernels of onnx_vision's CUDA executor (cuda_executor.hpp), f32
// in and out, each the device twin of an operator of cpu_executor.cpp, which
// is their reference: ctest onnx_vision_cuda runs graphs through both.
// GEMMs are not here: the executor calls cuBLAS for MatMul, Gemm and Conv.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hostrun::onnx_vision::cuda_ops {

inline constexpr int kMaxRank = 6;

// A tensor read through strides: element (i0, ..., i{rank-1}) of the output's
// index space is at data[offset + sum(i_k * strides[k])]. A broadcast
// dimension has stride 0; a transpose permutes strides; a slice scales them.
struct StridedInput {
  const float* data = nullptr;
  std::int64_t offset = 0;
  std::int64_t strides[kMaxRank] = {};
};

struct OutputShape {
  int rank = 0;
  std::int64_t sizes[kMaxRank] = {};
  std::int64_t count() const {
    std::int64_t n = 1;
    for (int k = 0; k < rank; ++k) n *= sizes[k];
    return n;
  }
};

// What a kernel that can write either stores: f32, or bf16 rounded to
// nearest even (a value only GEMMs read, kept as their bf16 operand).
enum class Store { f32, bf16 };

enum class Elementwise : int {
  copy,     // a (Transpose, Slice, Expand, Gather of one index)
  add, sub, mul, div, pow,  // a op b, numpy broadcasting through the strides
  where,    // c != 0 ? a : b
  sigmoid, erf, sqrt, tanh, relu, neg,
};

// The operands `op` reads: 1, 2, or 3 (where).
int operand_count(Elementwise op);

// out (contiguous, `shape`) = op(a[, b[, c]]).
cudaError_t elementwise(Elementwise op, const OutputShape& shape, const StridedInput& a, const StridedInput& b,
                        const StridedInput& c, float* out, cudaStream_t stream);

// A chain of elementwise operators run as one kernel: instruction i sets
// register i, either loading leaf `leaf` (read through its strides) or
// applying `op` to registers a, b (earlier ones); the last register is the
// output. The executor builds it from nodes whose intermediates nothing else
// reads (x * sigmoid(1.702 x) is one pass, not three).
struct ElementwiseProgram {
  static constexpr int kMaxLeaves = 4, kMaxInstructions = 12;
  struct Instruction {
    std::int8_t leaf = -1;  // >= 0: load that leaf
    Elementwise op = Elementwise::copy;
    std::int8_t a = 0, b = 0;
  };
  int count = 0;
  Instruction instruction[kMaxInstructions];
};
cudaError_t elementwise_program(const ElementwiseProgram& program, const OutputShape& shape,
                                const StridedInput (&leaves)[ElementwiseProgram::kMaxLeaves], void* out, Store store,
                                cudaStream_t stream);

// The activations of ViT-family MLPs over n contiguous floats: x *
// sigmoid(alpha x) (CLIP's quick_gelu) and x / 2 (1 + erf(x / sqrt 2))
// (exact GELU; alpha unused). The executor runs one for an elementwise chain
// it recognizes as it: as a program the chain is interpreted per element and
// runs at several times its bytes' time. x is f32 or, where a GEMM wrote it
// for the activation alone, bf16 (`x_stored`).
enum class Activation { quick_gelu, gelu };
cudaError_t activation(Activation kind, float alpha, const void* x, Store x_stored, std::int64_t n, void* out,
                       Store store, cudaStream_t stream);

// Softmax along the middle axis of in viewed as [outer, length, inner].
cudaError_t softmax_axis(const float* in, std::int64_t outer, std::int64_t length, std::int64_t inner, float* out,
                         cudaStream_t stream);
// Row-wise over the last `cols` elements of `rows` contiguous rows.
// (x - mean) / sqrt(var + eps) * scale + bias; bias may be null.
cudaError_t layer_norm_rows(const float* in, const float* scale, const float* bias, std::int64_t rows,
                            std::int64_t cols, float eps, void* out, Store store, cudaStream_t stream);
cudaError_t mean_rows(const float* in, std::int64_t rows, std::int64_t cols, float* out, cudaStream_t stream);

// Gather along one axis: in viewed as [outer, axis_size, inner], out as
// [outer, index_count, inner]; indices (device, int64) already in range.
cudaError_t gather_axis(const float* in, const std::int64_t* indices, std::int64_t outer, std::int64_t axis_size,
                        std::int64_t index_count, std::int64_t inner, float* out, cudaStream_t stream);

// Conv2d's patches: one image [channels, height, width] to columns
// [channels * kernel_h * kernel_w, out_h * out_w], zeros where the window
// reaches into the padding.
struct Im2col {
  int channels = 0, height = 0, width = 0;
  int kernel_h = 0, kernel_w = 0, stride_h = 1, stride_w = 1, pad_top = 0, pad_left = 0, dilation_h = 1,
      dilation_w = 1;
  int out_h = 0, out_w = 0;
};
cudaError_t im2col(const Im2col& shape, const float* image, float* columns, cudaStream_t stream);

// f32 to bf16 (1) or f16 (2), rounding to nearest even (the encoder's output).
cudaError_t convert_f32(const float* in, std::int64_t count, int to, void* out, cudaStream_t stream);

}  // namespace hostrun::onnx_vision::cuda_ops
