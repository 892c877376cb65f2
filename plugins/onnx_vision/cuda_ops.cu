#include "onnx_vision/cuda_ops.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cuda/common.cuh"

namespace hostrun::onnx_vision::cuda_ops {

namespace {

constexpr int kThreads = 256;

int blocks_for(std::int64_t n) { return int(std::min<std::int64_t>((n + kThreads - 1) / kThreads, 65535 * 8)); }

struct Operands {
  StridedInput in[3];
  OutputShape shape;
};

// The one logistic function of every kernel here (the interpreter, the
// single-operator kernels and quick_gelu), so their values agree to the bit.
__device__ __forceinline__ float sigmoid_of(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float apply(Elementwise op, float a, float b, float c) {
  switch (op) {
    case Elementwise::copy: return a;
    case Elementwise::add: return a + b;
    case Elementwise::sub: return a - b;
    case Elementwise::mul: return a * b;
    case Elementwise::div: return a / b;
    case Elementwise::pow: return powf(a, b);
    case Elementwise::where: return c != 0.0f ? a : b;
    case Elementwise::sigmoid: return sigmoid_of(a);
    case Elementwise::erf: return erff(a);
    case Elementwise::sqrt: return sqrtf(a);
    case Elementwise::tanh: return tanhf(a);
    case Elementwise::relu: return fmaxf(a, 0.0f);
    case Elementwise::neg: return -a;
  }
  return a;
}

// Where output element i reads each of `count` (<= kMax) operands. Index is
// 32-bit when the launch allows it (elementwise() decides): a 64-bit
// division per dimension and element made these kernels compute-bound, ~10x
// the time of their bytes (ViT-L at batch 8, H100). The loops run to the
// compile-time maxima, so `at` stays in registers: bounded by the runtime
// count and rank they put it in local memory.
template <int kMax, typename Index>
__device__ __forceinline__ void operand_offsets(Index i, const OutputShape& shape, const StridedInput* in, int count,
                                                Index (&at)[kMax]) {
#pragma unroll
  for (int j = 0; j < kMax; ++j) at[j] = j < count ? Index(in[j].offset) : Index(0);
#pragma unroll
  for (int k = kMaxRank - 1; k >= 0; --k) {
    if (k >= shape.rank) continue;
    // What is left of i indexes the outermost dimension as it is.
    const Index size = Index(shape.sizes[k]);
    const Index index = k == 0 ? i : i % size;
    if (k > 0) i /= size;
#pragma unroll
    for (int j = 0; j < kMax; ++j)
      if (j < count) at[j] += index * Index(in[j].strides[k]);
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

// An ElementwiseProgram as the kernel runs it: values live in slots, the
// leaves in slots 0 .. kMaxLeaves - 1 and step s's result in kMaxLeaves + s;
// the loads are not steps (every leaf is loaded first).
struct ProgramSteps {
  static constexpr int kSlots = ElementwiseProgram::kMaxLeaves + ElementwiseProgram::kMaxInstructions;
  struct Step {
    Elementwise op;
    std::int8_t a, b;  // slots
  };
  int count = 0;
  int result = 0;  // slot
  Step step[ElementwiseProgram::kMaxInstructions];
};

ProgramSteps compile(const ElementwiseProgram& program) {
  ProgramSteps steps;
  std::int8_t slot_of[ElementwiseProgram::kMaxInstructions] = {};
  for (int k = 0; k < program.count; ++k) {
    const ElementwiseProgram::Instruction& in = program.instruction[k];
    if (in.leaf >= 0) {
      slot_of[k] = in.leaf;
      continue;
    }
    steps.step[steps.count] = {in.op, slot_of[in.a], slot_of[in.b]};
    slot_of[k] = std::int8_t(ElementwiseProgram::kMaxLeaves + steps.count++);
  }
  steps.result = slot_of[program.count - 1];
  return steps;
}

struct ProgramOperands {
  ProgramSteps steps;
  StridedInput leaves[ElementwiseProgram::kMaxLeaves];
  OutputShape shape;
  int leaf_count;
};

__device__ __forceinline__ void write_value(float* p, float x) { *p = x; }
__device__ __forceinline__ void write_value(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }
__device__ __forceinline__ void write4(float* p, float a, float b, float c, float d) {
  *reinterpret_cast<float4*>(p) = float4{a, b, c, d};
}
__device__ __forceinline__ void write4(__nv_bfloat16* p, float a, float b, float c, float d) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
  uint2 packed;
  packed.x = *reinterpret_cast<const unsigned*>(&lo);
  packed.y = *reinterpret_cast<const unsigned*>(&hi);
  *reinterpret_cast<uint2*>(p) = packed;
}

// Each thread runs the program over kProgramElements elements a block's
// width apart (coalesced): every leaf of all of them is loaded first, so
// that many loads are in flight per thread (one element a thread, one at a
// time, left memory latency uncovered). The slots are the thread's own
// column of shared memory: indexed by the program's runtime numbers,
// registers go to local memory, and unrolling the program to keep them in
// registers made ~240 KB of code, more than the instruction caches hold.
// Interpreting still costs: on ViT-L's QuickGELU at batch 8 (H100) this
// kernel takes 153 us, the first form 238 us, the bytes ~35 us, which is why
// the executor runs the activations it recognizes as activation() instead.
constexpr int kProgramElements = 4;
constexpr int kProgramThreads = 128;

// One step over a thread's elements (slot columns kProgramThreads apart):
// the operator is dispatched once for all of them and the cheap ones
// unrolled; powf, erff and tanhf stay one copy each in the code.
template <int kStride, bool kUnroll, typename F>
__device__ __forceinline__ void each_element(const float* a, const float* b, float* y, F f) {
  if constexpr (kUnroll) {
#pragma unroll
    for (int e = 0; e < kProgramElements; ++e) y[e * kStride] = f(a[e * kStride], b[e * kStride]);
  } else {
#pragma unroll 1
    for (int e = 0; e < kProgramElements; ++e) y[e * kStride] = f(a[e * kStride], b[e * kStride]);
  }
}

template <int kStride>
__device__ __forceinline__ void run_step(Elementwise op, const float* a, const float* b, float* y) {
  switch (op) {
    case Elementwise::copy: return each_element<kStride, true>(a, b, y, [](float x, float) { return x; });
    case Elementwise::add: return each_element<kStride, true>(a, b, y, [](float x, float z) { return x + z; });
    case Elementwise::sub: return each_element<kStride, true>(a, b, y, [](float x, float z) { return x - z; });
    case Elementwise::mul: return each_element<kStride, true>(a, b, y, [](float x, float z) { return x * z; });
    case Elementwise::div: return each_element<kStride, true>(a, b, y, [](float x, float z) { return x / z; });
    case Elementwise::sigmoid:
      return each_element<kStride, true>(a, b, y, [](float x, float) { return sigmoid_of(x); });
    case Elementwise::sqrt: return each_element<kStride, true>(a, b, y, [](float x, float) { return sqrtf(x); });
    case Elementwise::relu: return each_element<kStride, true>(a, b, y, [](float x, float) { return fmaxf(x, 0.0f); });
    case Elementwise::neg: return each_element<kStride, true>(a, b, y, [](float x, float) { return -x; });
    case Elementwise::pow: return each_element<kStride, false>(a, b, y, [](float x, float z) { return powf(x, z); });
    case Elementwise::erf: return each_element<kStride, false>(a, b, y, [](float x, float) { return erff(x); });
    case Elementwise::tanh: return each_element<kStride, false>(a, b, y, [](float x, float) { return tanhf(x); });
    case Elementwise::where: return;  // three operands: never a program step (the planner's chainable ops)
  }
}

template <typename Index, typename Out>
__global__ void __launch_bounds__(kProgramThreads)
    elementwise_program_kernel(const ProgramOperands o, Out* __restrict__ out, Index n) {
  constexpr int E = kProgramElements;
  __shared__ float slots[ProgramSteps::kSlots][E][kProgramThreads];
  const int t = threadIdx.x;
  const Index width = Index(kProgramThreads) * E;
  for (Index base = blockIdx.x * width; base < n; base += Index(gridDim.x) * width) {
    Index at[E][ElementwiseProgram::kMaxLeaves];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const Index i = base + t + Index(e) * kProgramThreads;
      operand_offsets(i < n ? i : Index(0), o.shape, o.leaves, o.leaf_count, at[e]);
    }
    float leaf[ElementwiseProgram::kMaxLeaves][E];
#pragma unroll
    for (int j = 0; j < ElementwiseProgram::kMaxLeaves; ++j)
#pragma unroll
      for (int e = 0; e < E; ++e) leaf[j][e] = j < o.leaf_count ? o.leaves[j].data[at[e][j]] : 0.0f;
#pragma unroll
    for (int j = 0; j < ElementwiseProgram::kMaxLeaves; ++j)
#pragma unroll
      for (int e = 0; e < E; ++e) slots[j][e][t] = leaf[j][e];
    for (int s = 0; s < o.steps.count; ++s) {
      const ProgramSteps::Step step = o.steps.step[s];
      run_step<kProgramThreads>(step.op, &slots[step.a][0][t], &slots[step.b][0][t], &slots[ElementwiseProgram::kMaxLeaves + s][0][t]);
    }
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const Index i = base + t + Index(e) * kProgramThreads;
      if (i < n) write_value(out + i, slots[o.steps.result][e][t]);
    }
  }
}

// quick_gelu as the exported chain computes it, operation for operation
// (x * sigmoid(alpha x)), so its values are the interpreter's to the bit;
// GELU in its exact erf form.
template <Activation kKind>
__device__ __forceinline__ float activate(float x, float alpha) {
  if constexpr (kKind == Activation::quick_gelu) return x * sigmoid_of(x * alpha);
  else return (x * 0.5f) * (erff(x * 0.70710678118654752f) + 1.0f);
}

// Four values a thread per step (a float4 or four bf16 in; a float4 or four
// bf16 out) when n is a multiple of 4 and the pointers are aligned (else one
// a step). x in bf16 is a GEMM's output rounded by its epilogue.
__device__ __forceinline__ float4 load4(const float* x, std::int64_t i) { return reinterpret_cast<const float4*>(x)[i]; }
__device__ __forceinline__ float4 load4(const __nv_bfloat16* x, std::int64_t i) {
  const uint2 w = reinterpret_cast<const uint2*>(x)[i];
  return {__uint_as_float(w.x << 16), __uint_as_float(w.x & 0xffff0000u), __uint_as_float(w.y << 16),
          __uint_as_float(w.y & 0xffff0000u)};
}
__device__ __forceinline__ float load1(const float* x, std::int64_t i) { return x[i]; }
__device__ __forceinline__ float load1(const __nv_bfloat16* x, std::int64_t i) { return __bfloat162float(x[i]); }

template <Activation kKind, typename In, typename Out>
__global__ void activation_kernel(const In* __restrict__ x, float alpha, std::int64_t n, bool vectors,
                                  Out* __restrict__ out) {
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  if (vectors) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n / 4; i += stride) {
      const float4 v = load4(x, i);
      write4(out + 4 * i, activate<kKind>(v.x, alpha), activate<kKind>(v.y, alpha), activate<kKind>(v.z, alpha),
             activate<kKind>(v.w, alpha));
    }
    return;
  }
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n; i += stride)
    write_value(out + i, activate<kKind>(load1(x, i), alpha));
}

// operand_offsets' reads over fewer dimensions: size-1 dimensions dropped, and a
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

using hostrun::cuda::detail::warp_sum;

// Sum over the block; every thread gets it. `scratch` holds 32 floats.
__device__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x / 32) ? scratch[lane] : 0.0f;
  return warp_sum(v);
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

template <typename Out>
__global__ void layer_norm_kernel(const float* __restrict__ in, const float* __restrict__ scale,
                                  const float* __restrict__ bias, std::int64_t cols, float eps,
                                  Out* __restrict__ out) {
  __shared__ float scratch[32];
  const float* row = in + blockIdx.x * cols;
  Out* dst = out + blockIdx.x * cols;
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
    write_value(dst + j, (row[j] - mean) * inv * scale[j] + (bias ? bias[j] : 0.0f));
}

// The same for rows of up to kThreads * 4 * kLayerNormVectors floats whose
// width is a multiple of 4 (ViT-L's 1024): each thread reads its float4s of
// the row once into registers, where both reductions and the output are
// computed (the loop above reads the row three times).
constexpr int kLayerNormVectors = 4;

template <typename Out>
__global__ void layer_norm_vector_kernel(const float* __restrict__ in, const float* __restrict__ scale,
                                         const float* __restrict__ bias, int cols, float eps, Out* __restrict__ out) {
  __shared__ float scratch[32];
  const float4* row = reinterpret_cast<const float4*>(in + std::int64_t(blockIdx.x) * cols);
  const int vectors = cols / 4;
  float4 x[kLayerNormVectors];
  float s = 0.0f;
#pragma unroll
  for (int v = 0; v < kLayerNormVectors; ++v) {
    const int c = threadIdx.x + v * blockDim.x;
    x[v] = c < vectors ? row[c] : float4{0.0f, 0.0f, 0.0f, 0.0f};
    s += (x[v].x + x[v].y) + (x[v].z + x[v].w);
  }
  const float mean = block_sum(s, scratch) / float(cols);
  float q = 0.0f;
#pragma unroll
  for (int v = 0; v < kLayerNormVectors; ++v) {
    if (threadIdx.x + v * blockDim.x >= vectors) continue;
    const float a = x[v].x - mean, b = x[v].y - mean, c = x[v].z - mean, d = x[v].w - mean;
    q += (a * a + b * b) + (c * c + d * d);
  }
  const float inv = rsqrtf(block_sum(q, scratch) / float(cols) + eps);
  Out* dst = out + std::int64_t(blockIdx.x) * cols;
#pragma unroll
  for (int v = 0; v < kLayerNormVectors; ++v) {
    const int c = threadIdx.x + v * blockDim.x;
    if (c >= vectors) continue;
    const float4 g = reinterpret_cast<const float4*>(scale)[c];
    const float4 b = bias ? reinterpret_cast<const float4*>(bias)[c] : float4{0.0f, 0.0f, 0.0f, 0.0f};
    write4(dst + 4 * c, (x[v].x - mean) * inv * g.x + b.x, (x[v].y - mean) * inv * g.y + b.y,
           (x[v].z - mean) * inv * g.z + b.z, (x[v].w - mean) * inv * g.w + b.w);
  }
}

// Rows of up to 32 * 4 * kWarpRowVectors floats whose width is a multiple of
// 4, one warp a row and kRowsPerBlock rows a block: the row's float4s stay in
// the lanes' registers and both reductions are warp shuffles. Why: ViT-L's
// rows are 4 KB, and a block a row (above) spent each row's time in two
// block-wide reductions with a handful of rows resident per SM: ~1.8 TB/s on
// the H100 at batch 8 (a75d610's profile); a warp a row keeps 8x the rows in
// flight with no barrier.
constexpr int kWarpRowVectors = 8;  // float4s a lane: rows of up to 1,024
constexpr int kRowsPerBlock = kThreads / 32;

template <typename Out>
__global__ void layer_norm_warp_kernel(const float* __restrict__ in, const float* __restrict__ scale,
                                       const float* __restrict__ bias, std::int64_t rows, int cols, float eps,
                                       Out* __restrict__ out) {
  const int lane = threadIdx.x % 32;
  const std::int64_t r = std::int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;
  const float4* row = reinterpret_cast<const float4*>(in + r * cols);
  const int vectors = cols / 4;
  float4 x[kWarpRowVectors];
  float s = 0.0f;
#pragma unroll
  for (int v = 0; v < kWarpRowVectors; ++v) {
    const int c = lane + v * 32;
    x[v] = c < vectors ? row[c] : float4{0.0f, 0.0f, 0.0f, 0.0f};
    s += (x[v].x + x[v].y) + (x[v].z + x[v].w);
  }
  const float mean = warp_sum(s) / float(cols);
  float q = 0.0f;
#pragma unroll
  for (int v = 0; v < kWarpRowVectors; ++v) {
    if (lane + v * 32 >= vectors) continue;
    const float a = x[v].x - mean, b = x[v].y - mean, c = x[v].z - mean, d = x[v].w - mean;
    q += (a * a + b * b) + (c * c + d * d);
  }
  const float inv = rsqrtf(warp_sum(q) / float(cols) + eps);
  Out* dst = out + r * cols;
#pragma unroll
  for (int v = 0; v < kWarpRowVectors; ++v) {
    const int c = lane + v * 32;
    if (c >= vectors) continue;
    const float4 g = reinterpret_cast<const float4*>(scale)[c];
    const float4 b = bias ? reinterpret_cast<const float4*>(bias)[c] : float4{0.0f, 0.0f, 0.0f, 0.0f};
    write4(dst + 4 * c, (x[v].x - mean) * inv * g.x + b.x, (x[v].y - mean) * inv * g.y + b.y,
           (x[v].z - mean) * inv * g.z + b.z, (x[v].w - mean) * inv * g.w + b.w);
  }
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

}  // namespace

int operand_count(Elementwise op) {
  switch (op) {
    case Elementwise::add: case Elementwise::sub: case Elementwise::mul: case Elementwise::div:
    case Elementwise::pow: return 2;
    case Elementwise::where: return 3;
    default: return 1;
  }
}

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
                            std::int64_t cols, float eps, void* out, Store store, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  const bool vectors = cols % 4 == 0 && aligned(in) && aligned(scale) && (bias == nullptr || aligned(bias)) &&
                       aligned(out);
  if (vectors && cols <= 32 * 4 * kWarpRowVectors) {
    const auto blocks = unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock);
    if (store == Store::bf16)
      layer_norm_warp_kernel<<<blocks, kThreads, 0, stream>>>(in, scale, bias, rows, int(cols), eps,
                                                              static_cast<__nv_bfloat16*>(out));
    else
      layer_norm_warp_kernel<<<blocks, kThreads, 0, stream>>>(in, scale, bias, rows, int(cols), eps,
                                                              static_cast<float*>(out));
    return cudaGetLastError();
  }
  if (vectors && cols <= std::int64_t(kThreads) * 4 * kLayerNormVectors) {
    if (store == Store::bf16)
      layer_norm_vector_kernel<<<unsigned(rows), kThreads, 0, stream>>>(in, scale, bias, int(cols), eps,
                                                                        static_cast<__nv_bfloat16*>(out));
    else
      layer_norm_vector_kernel<<<unsigned(rows), kThreads, 0, stream>>>(in, scale, bias, int(cols), eps,
                                                                        static_cast<float*>(out));
    return cudaGetLastError();
  }
  if (store == Store::bf16)
    layer_norm_kernel<<<unsigned(rows), kThreads, 0, stream>>>(in, scale, bias, cols, eps,
                                                               static_cast<__nv_bfloat16*>(out));
  else
    layer_norm_kernel<<<unsigned(rows), kThreads, 0, stream>>>(in, scale, bias, cols, eps, static_cast<float*>(out));
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
                                const StridedInput (&leaves)[ElementwiseProgram::kMaxLeaves], void* out, Store store,
                                cudaStream_t stream) {
  const std::int64_t n = shape.count();
  if (n == 0) return cudaSuccess;
  if (program.count < 1 || program.count > ElementwiseProgram::kMaxInstructions) return cudaErrorInvalidValue;
  ProgramOperands o{compile(program), {}, shape, 0};
  for (int j = 0; j < ElementwiseProgram::kMaxLeaves; ++j) {
    o.leaves[j] = leaves[j];
    if (leaves[j].data != nullptr) o.leaf_count = j + 1;
  }
  coalesce(o.shape, o.leaves, o.leaf_count);
  const bool narrow = fits_32_bits(o.shape, o.leaves, o.leaf_count);
  const int blocks = int(std::min<std::int64_t>(
      (n + kProgramThreads * kProgramElements - 1) / (kProgramThreads * kProgramElements), 65535 * 8));
  const int threads = kProgramThreads;
  if (store == Store::bf16) {
    auto* y = static_cast<__nv_bfloat16*>(out);
    if (narrow) elementwise_program_kernel<<<blocks, threads, 0, stream>>>(o, y, std::uint32_t(n));
    else elementwise_program_kernel<<<blocks, threads, 0, stream>>>(o, y, n);
  } else {
    auto* y = static_cast<float*>(out);
    if (narrow) elementwise_program_kernel<<<blocks, threads, 0, stream>>>(o, y, std::uint32_t(n));
    else elementwise_program_kernel<<<blocks, threads, 0, stream>>>(o, y, n);
  }
  return cudaGetLastError();
}

cudaError_t activation(Activation kind, float alpha, const void* x, Store x_stored, std::int64_t n, void* out,
                       Store store, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const std::uintptr_t x_align = x_stored == Store::bf16 ? 8 : 16, out_align = store == Store::bf16 ? 8 : 16;
  const bool vectors = n % 4 == 0 && reinterpret_cast<std::uintptr_t>(x) % x_align == 0 &&
                       reinterpret_cast<std::uintptr_t>(out) % out_align == 0;
  const int blocks = blocks_for(vectors ? n / 4 : n);
  const auto launch = [&](auto kind_tag, const auto* in) {
    constexpr Activation kKind = decltype(kind_tag)::value;
    if (store == Store::bf16)
      activation_kernel<kKind><<<blocks, kThreads, 0, stream>>>(in, alpha, n, vectors, static_cast<__nv_bfloat16*>(out));
    else
      activation_kernel<kKind><<<blocks, kThreads, 0, stream>>>(in, alpha, n, vectors, static_cast<float*>(out));
  };
  const auto with_input = [&](auto kind_tag) {
    if (x_stored == Store::bf16) launch(kind_tag, static_cast<const __nv_bfloat16*>(x));
    else launch(kind_tag, static_cast<const float*>(x));
  };
  if (kind == Activation::quick_gelu) with_input(std::integral_constant<Activation, Activation::quick_gelu>{});
  else with_input(std::integral_constant<Activation, Activation::gelu>{});
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
