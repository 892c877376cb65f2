#include "onnx_vision/cuda_ops.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace hostrun::onnx_vision::cuda_ops {

namespace {

constexpr int kThreads = 256;

int blocks_for(std::int64_t n) { return int(std::min<std::int64_t>((n + kThreads - 1) / kThreads, 65535 * 8)); }

struct Operands {
  StridedInput in[3];
  OutputShape shape;
};

__device__ __forceinline__ float apply(Elementwise op, float a, float b, float c) {
  switch (op) {
    case Elementwise::copy: return a;
    case Elementwise::add: return a + b;
    case Elementwise::sub: return a - b;
    case Elementwise::mul: return a * b;
    case Elementwise::div: return a / b;
    case Elementwise::pow: return powf(a, b);
    case Elementwise::where: return c != 0.0f ? a : b;
    case Elementwise::sigmoid: return 1.0f / (1.0f + expf(-a));
    case Elementwise::erf: return erff(a);
    case Elementwise::sqrt: return sqrtf(a);
    case Elementwise::tanh: return tanhf(a);
    case Elementwise::relu: return fmaxf(a, 0.0f);
    case Elementwise::neg: return -a;
  }
  return a;
}

// Where output element i reads each of `count` operands. Index is 32-bit
// when the launch allows it (elementwise() decides): a 64-bit division per
// dimension and element made these kernels compute-bound, ~10x the time of
// their bytes (ViT-L at batch 8, H100).
template <typename Index>
__device__ __forceinline__ void operand_offsets(Index i, const OutputShape& shape, const StridedInput* in, int count,
                                                Index* at) {
  for (int j = 0; j < count; ++j) at[j] = Index(in[j].offset);
  for (int k = shape.rank - 1; k >= 0; --k) {
    const Index size = Index(shape.sizes[k]);
    const Index index = i % size;
    i /= size;
    for (int j = 0; j < count; ++j) at[j] += index * Index(in[j].strides[k]);
  }
}

// Operands read: a always, b for the binary ops and where, c for where.
template <typename Index>
__global__ void elementwise_kernel(Elementwise op, int operands, Operands o, float* __restrict__ out, Index n) {
  for (Index i = blockIdx.x * Index(blockDim.x) + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    Index at[3];
    operand_offsets(i, o.shape, o.in, operands, at);
    const float a = o.in[0].data[at[0]];
    const float b = operands > 1 ? o.in[1].data[at[1]] : 0.0f;
    const float c = operands > 2 ? o.in[2].data[at[2]] : 0.0f;
    out[i] = apply(op, a, b, c);
  }
}

struct ProgramOperands {
  ElementwiseProgram program;
  StridedInput leaves[ElementwiseProgram::kMaxLeaves];
  OutputShape shape;
  int leaf_count;
};

template <typename Index>
__global__ void elementwise_program_kernel(const ProgramOperands o, float* __restrict__ out, Index n) {
  for (Index i = blockIdx.x * Index(blockDim.x) + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    Index at[ElementwiseProgram::kMaxLeaves];
    operand_offsets(i, o.shape, o.leaves, o.leaf_count, at);
    float r[ElementwiseProgram::kMaxInstructions];
    for (int k = 0; k < o.program.count; ++k) {
      const ElementwiseProgram::Instruction& in = o.program.instruction[k];
      r[k] = in.leaf >= 0 ? o.leaves[in.leaf].data[at[in.leaf]] : apply(in.op, r[in.a], r[in.b], 0.0f);
    }
    out[i] = r[o.program.count - 1];
  }
}

// The same reads over fewer dimensions: size-1 dimensions dropped, and a
// dimension merged into the one inside it wherever every operand steps
// across both as across one (a bias [1024] over [8, 577, 1024] becomes
// [4616, 1024]; the output is contiguous, so its flat index is unchanged).
void coalesce(OutputShape& shape, StridedInput* in, int count) {
  static_assert(ElementwiseProgram::kMaxLeaves <= 4, "strides below holds four operands");
  OutputShape merged;
  std::int64_t strides[4][kMaxRank] = {};  // [operand][merged dimension], innermost first
  int groups = 0;
  for (int k = shape.rank - 1; k >= 0; --k) {
    const std::int64_t size = shape.sizes[k];
    if (size == 1) continue;
    bool joins = groups > 0;
    for (int j = 0; joins && j < count; ++j)
      joins = in[j].strides[k] == strides[j][groups - 1] * merged.sizes[groups - 1];
    if (joins) {
      merged.sizes[groups - 1] *= size;
      continue;
    }
    for (int j = 0; j < count; ++j) strides[j][groups] = in[j].strides[k];
    merged.sizes[groups++] = size;
  }
  shape.rank = groups;
  for (int g = 0; g < groups; ++g) shape.sizes[g] = merged.sizes[groups - 1 - g];
  for (int j = 0; j < count; ++j)
    for (int k = 0; k < kMaxRank; ++k) in[j].strides[k] = k < groups ? strides[j][groups - 1 - k] : 0;
}

// Whether every index of the launch, and every operand offset it reaches,
// fits 31 bits (unsigned 32-bit math then cannot wrap: the grid stride adds < 2^28).
bool fits_32_bits(const OutputShape& shape, const StridedInput* in, int count) {
  constexpr std::int64_t kLimit = 0x7fffffff;
  if (shape.count() >= kLimit) return false;
  for (int j = 0; j < count; ++j) {
    std::int64_t reach = in[j].offset;
    for (int k = 0; k < shape.rank; ++k) {
      if (in[j].strides[k] < 0) return false;
      reach += (shape.sizes[k] - 1) * in[j].strides[k];
    }
    if (in[j].offset < 0 || reach >= kLimit) return false;
  }
  return true;
}

// Every operand contiguous in the output's order: no index arithmetic.
__global__ void elementwise_flat_kernel(Elementwise op, int operands, const float* __restrict__ a,
                                        const float* __restrict__ b, const float* __restrict__ c,
                                        float* __restrict__ out, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    out[i] = apply(op, a[i], operands > 1 ? b[i] : 0.0f, operands > 2 ? c[i] : 0.0f);
}

bool contiguous(const StridedInput& in, const OutputShape& shape) {
  if (in.offset != 0) return false;
  std::int64_t stride = 1;
  for (int k = shape.rank - 1; k >= 0; --k) {
    if (shape.sizes[k] != 1 && in.strides[k] != stride) return false;
    stride *= shape.sizes[k];
  }
  return true;
}

// Sum over the block; every thread gets it. `scratch` holds 32 floats.
__device__ float block_sum(float v, float* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x / 32) ? scratch[lane] : 0.0f;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ float block_max(float v, float* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x / 32) ? scratch[lane] : -INFINITY;
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// One block per (outer, inner) row; its elements `inner` apart.
__global__ void softmax_kernel(const float* __restrict__ in, std::int64_t length, std::int64_t inner,
                               float* __restrict__ out) {
  __shared__ float scratch[32];
  const std::int64_t o = blockIdx.x / inner, i = blockIdx.x % inner;
  const float* row = in + o * length * inner + i;
  float* dst = out + o * length * inner + i;
  float m = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < length; j += blockDim.x) m = fmaxf(m, row[j * inner]);
  m = block_max(m, scratch);
  float s = 0.0f;
  for (std::int64_t j = threadIdx.x; j < length; j += blockDim.x) s += expf(row[j * inner] - m);
  s = block_sum(s, scratch);
  const float inv = 1.0f / s;
  for (std::int64_t j = threadIdx.x; j < length; j += blockDim.x) dst[j * inner] = expf(row[j * inner] - m) * inv;
}

__global__ void layer_norm_kernel(const float* __restrict__ in, const float* __restrict__ scale,
                                  const float* __restrict__ bias, std::int64_t cols, float eps,
                                  float* __restrict__ out) {
  __shared__ float scratch[32];
  const float* row = in + blockIdx.x * cols;
  float* dst = out + blockIdx.x * cols;
  float s = 0.0f;
  for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += row[j];
  const float mean = block_sum(s, scratch) / float(cols);
  float q = 0.0f;
  for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const float d = row[j] - mean;
    q += d * d;
  }
  const float inv = rsqrtf(block_sum(q, scratch) / float(cols) + eps);
  for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x)
    dst[j] = (row[j] - mean) * inv * scale[j] + (bias ? bias[j] : 0.0f);
}

__global__ void mean_kernel(const float* __restrict__ in, std::int64_t cols, float* __restrict__ out) {
  __shared__ float scratch[32];
  const float* row = in + blockIdx.x * cols;
  float s = 0.0f;
  for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += row[j];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = s / float(cols);
}

__global__ void gather_kernel(const float* __restrict__ in, const std::int64_t* __restrict__ indices,
                              std::int64_t axis_size, std::int64_t index_count, std::int64_t inner,
                              float* __restrict__ out, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t e = i % inner, j = (i / inner) % index_count, outer = i / (inner * index_count);
    out[i] = in[(outer * axis_size + indices[j]) * inner + e];
  }
}

__global__ void im2col_kernel(Im2col s, const float* __restrict__ image, float* __restrict__ columns, std::int64_t n) {
  const std::int64_t pixels = std::int64_t(s.out_h) * s.out_w;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t p = i % pixels, row = i / pixels;  // row: (channel, ky, kx)
    const int kx = int(row % s.kernel_w), ky = int((row / s.kernel_w) % s.kernel_h),
              ch = int(row / (s.kernel_w * s.kernel_h));
    const int oy = int(p / s.out_w), ox = int(p % s.out_w);
    const int y = oy * s.stride_h - s.pad_top + ky * s.dilation_h;
    const int x = ox * s.stride_w - s.pad_left + kx * s.dilation_w;
    columns[i] = (y >= 0 && y < s.height && x >= 0 && x < s.width)
                     ? image[(std::int64_t(ch) * s.height + y) * s.width + x]
                     : 0.0f;
  }
}

template <typename T>
__global__ void convert_kernel(const float* __restrict__ in, std::int64_t n, T* __restrict__ out) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) out[i] = __float2bfloat16_rn(in[i]);
    else out[i] = __float2half_rn(in[i]);
  }
}

int operand_count(Elementwise op) {
  switch (op) {
    case Elementwise::add: case Elementwise::sub: case Elementwise::mul: case Elementwise::div:
    case Elementwise::pow: return 2;
    case Elementwise::where: return 3;
    default: return 1;
  }
}

}  // namespace

cudaError_t elementwise(Elementwise op, const OutputShape& shape, const StridedInput& a, const StridedInput& b,
                        const StridedInput& c, float* out, cudaStream_t stream) {
  const std::int64_t n = shape.count();
  if (n == 0) return cudaSuccess;
  const int operands = operand_count(op);
  const StridedInput* in[3] = {&a, &b, &c};
  bool flat = true;
  for (int j = 0; j < operands; ++j) flat = flat && contiguous(*in[j], shape);
  if (flat) {
    elementwise_flat_kernel<<<blocks_for(n), kThreads, 0, stream>>>(op, operands, a.data, b.data, c.data, out, n);
  } else {
    Operands o{{a, b, c}, shape};
    coalesce(o.shape, o.in, operands);
    if (fits_32_bits(o.shape, o.in, operands))
      elementwise_kernel<<<blocks_for(n), kThreads, 0, stream>>>(op, operands, o, out, std::uint32_t(n));
    else
      elementwise_kernel<<<blocks_for(n), kThreads, 0, stream>>>(op, operands, o, out, n);
  }
  return cudaGetLastError();
}

cudaError_t softmax_axis(const float* in, std::int64_t outer, std::int64_t length, std::int64_t inner, float* out,
                         cudaStream_t stream) {
  if (outer * inner == 0) return cudaSuccess;
  softmax_kernel<<<unsigned(outer * inner), kThreads, 0, stream>>>(in, length, inner, out);
  return cudaGetLastError();
}

cudaError_t layer_norm_rows(const float* in, const float* scale, const float* bias, std::int64_t rows,
                            std::int64_t cols, float eps, float* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  layer_norm_kernel<<<unsigned(rows), kThreads, 0, stream>>>(in, scale, bias, cols, eps, out);
  return cudaGetLastError();
}

cudaError_t mean_rows(const float* in, std::int64_t rows, std::int64_t cols, float* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  mean_kernel<<<unsigned(rows), kThreads, 0, stream>>>(in, cols, out);
  return cudaGetLastError();
}

cudaError_t gather_axis(const float* in, const std::int64_t* indices, std::int64_t outer, std::int64_t axis_size,
                        std::int64_t index_count, std::int64_t inner, float* out, cudaStream_t stream) {
  const std::int64_t n = outer * index_count * inner;
  if (n == 0) return cudaSuccess;
  gather_kernel<<<blocks_for(n), kThreads, 0, stream>>>(in, indices, axis_size, index_count, inner, out, n);
  return cudaGetLastError();
}

cudaError_t im2col(const Im2col& shape, const float* image, float* columns, cudaStream_t stream) {
  const std::int64_t n =
      std::int64_t(shape.channels) * shape.kernel_h * shape.kernel_w * shape.out_h * shape.out_w;
  if (n == 0) return cudaSuccess;
  im2col_kernel<<<blocks_for(n), kThreads, 0, stream>>>(shape, image, columns, n);
  return cudaGetLastError();
}

cudaError_t elementwise_program(const ElementwiseProgram& program, const OutputShape& shape,
                                const StridedInput (&leaves)[ElementwiseProgram::kMaxLeaves], float* out,
                                cudaStream_t stream) {
  const std::int64_t n = shape.count();
  if (n == 0) return cudaSuccess;
  if (program.count < 1 || program.count > ElementwiseProgram::kMaxInstructions) return cudaErrorInvalidValue;
  ProgramOperands o{program, {}, shape, 0};
  for (int j = 0; j < ElementwiseProgram::kMaxLeaves; ++j) {
    o.leaves[j] = leaves[j];
    if (leaves[j].data != nullptr) o.leaf_count = j + 1;
  }
  coalesce(o.shape, o.leaves, o.leaf_count);
  if (fits_32_bits(o.shape, o.leaves, o.leaf_count))
    elementwise_program_kernel<<<blocks_for(n), kThreads, 0, stream>>>(o, out, std::uint32_t(n));
  else
    elementwise_program_kernel<<<blocks_for(n), kThreads, 0, stream>>>(o, out, n);
  return cudaGetLastError();
}

cudaError_t convert_f32(const float* in, std::int64_t count, int to, void* out, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (to == 1)
    convert_kernel<<<blocks_for(count), kThreads, 0, stream>>>(in, count, static_cast<__nv_bfloat16*>(out));
  else
    convert_kernel<<<blocks_for(count), kThreads, 0, stream>>>(in, count, static_cast<__half*>(out));
  return cudaGetLastError();
}

}  // namespace hostrun::onnx_vision::cuda_ops
