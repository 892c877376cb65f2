#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/small_gemm.hpp"

namespace hostrun::cuda {

namespace {

// Launch shape used by the model (see small_gemm_sweep for the others tried).
constexpr int default_warps_per_block = 4;
constexpr int default_unroll = 4;  // 16-byte weight loads in flight per lane and weight row

// 16 bytes of weight, streamed: not kept in L1 (read once per step).
__device__ __forceinline__ uint4 load_streaming(const void* p) {
  return __ldcs(reinterpret_cast<const uint4*>(p));
}

template <typename T>
__device__ __forceinline__ void unpack(const uint4& raw, float (&out)[8]) {
  union {
    uint4 raw;
    T elements[8];
  } u;
  u.raw = raw;
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = detail::to_f32(u.elements[i]);
}


// What a warp does with its column's dot products.
enum class Epilogue {
  store,     // one column j: y[r, j] (dtype or f32)
  silu_mul,  // weight [2n, k] = [gate | up]; columns j and n + j: y[r, j] = silu(gate) * up
  rope,      // a pair of columns: (i, i + head_dim/2) of one of the first rope_heads heads, rotated by
             // RoPE at positions[r]; past those heads, two neighbouring columns stored as they are
};

struct RopeArgs {
  int rope_heads = 0;
  int head_dim = 0;
  const std::int32_t* positions = nullptr;
  const float* inv_freq = nullptr;
};

// The weight rows (= output columns) warp `item` owns; false past the end.
template <Epilogue E>
__device__ __forceinline__ bool columns_of(int item, int n, const RopeArgs& rope, int (&c)[2], int& freq) {
  if constexpr (E == Epilogue::store) {
    c[0] = c[1] = item;
    return item < n;
  } else if constexpr (E == Epilogue::silu_mul) {
    c[0] = item;
    c[1] = item + n;
    return item < n;
  } else {
    const int half = rope.head_dim / 2;
    const int rope_pairs = rope.rope_heads * half;
    if (item < rope_pairs) {
      freq = item % half;
      c[0] = (item / half) * rope.head_dim + freq;
      c[1] = c[0] + half;
    } else {
      freq = -1;
      c[0] = rope.rope_heads * rope.head_dim + 2 * (item - rope_pairs);
      c[1] = c[0] + 1;
    }
    return item < n / 2;
  }
}

// grid.x * kWarps warps, one work item each (above); M >= m rows.
template <typename T, int M, Epilogue E, int kUnroll = default_unroll, int kWarps = default_warps_per_block>
__global__ void __launch_bounds__(kWarps * 32)
    small_gemm_kernel(const T* __restrict__ x, const T* __restrict__ weight, int m, int n, int k, void* __restrict__ y,
                      bool y_f32, RopeArgs rope) {
  constexpr int W = E == Epilogue::store ? 1 : 2;  // weight rows per warp
  const int lane = threadIdx.x & 31;
  constexpr int unroll = kUnroll;
  const int item = blockIdx.x * kWarps + (threadIdx.x >> 5);
  int columns[2], freq = -1;
  if (!columns_of<E>(item, n, rope, columns, freq)) return;
  const T* w_rows[W];
#pragma unroll
  for (int j = 0; j < W; ++j) w_rows[j] = weight + static_cast<std::int64_t>(columns[j]) * k;
  float acc[W][M];
#pragma unroll
  for (int j = 0; j < W; ++j)
#pragma unroll
    for (int r = 0; r < M; ++r) acc[j][r] = 0.0f;
  constexpr int step = 32 * 8;  // elements one warp covers with one load per lane
  // Multiply-add the 16-byte pieces of the weight rows at `at` with each x row.
  auto accumulate = [&](const uint4 (&raw)[W], int at) {
    float wf[W][8];
#pragma unroll
    for (int j = 0; j < W; ++j) unpack<T>(raw[j], wf[j]);
#pragma unroll
    for (int r = 0; r < M; ++r) {
      if (r < m) {
        float xf[8];
        unpack<T>(__ldg(reinterpret_cast<const uint4*>(x + static_cast<std::int64_t>(r) * k + at)), xf);
#pragma unroll
        for (int j = 0; j < W; ++j)
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[j][r] = fmaf(xf[i], wf[j][i], acc[j][r]);
      }
    }
  };
  int base = lane * 8;
  // Launched as a programmatic dependent of the kernel before it (which makes
  // x): the first group of weight loads is issued before waiting for that
  // kernel, so the weight stream is already running when x becomes readable.
  // Nothing read before the wait is written by earlier work in the stream.
  detail::allow_next_grid_to_launch();
  const bool first_group = base + (unroll - 1) * step < k;
  {
    uint4 raw[unroll][W];
    if (first_group) {
#pragma unroll
      for (int u = 0; u < unroll; ++u)
#pragma unroll
        for (int j = 0; j < W; ++j) raw[u][j] = load_streaming(w_rows[j] + base + u * step);
    }
    detail::wait_for_previous_grid();
    if (first_group) {
#pragma unroll
      for (int u = 0; u < unroll; ++u) accumulate(raw[u], base + u * step);
      base += step * unroll;
    }
  }
  // Whole groups: `unroll` loads per row issued before any is used.
  for (; base + (unroll - 1) * step < k; base += step * unroll) {
    uint4 raw[unroll][W];
#pragma unroll
    for (int u = 0; u < unroll; ++u)
#pragma unroll
      for (int j = 0; j < W; ++j) raw[u][j] = load_streaming(w_rows[j] + base + u * step);
#pragma unroll
    for (int u = 0; u < unroll; ++u) accumulate(raw[u], base + u * step);
  }
  for (; base < k; base += step) {
    uint4 raw[W];
#pragma unroll
    for (int j = 0; j < W; ++j) raw[j] = load_streaming(w_rows[j] + base);
    accumulate(raw, base);
  }
  // The epilogue rounds each product to T first, as the unfused path stores
  // it, so a token's numbers do not depend on which path its batch size took.
  auto rounded = [](float v) { return detail::to_f32(detail::from_f32<T>(v)); };
#pragma unroll
  for (int r = 0; r < M; ++r) {
    if (r >= m) break;
    const float first = detail::warp_sum(acc[0][r]);
    const float second = W == 2 ? detail::warp_sum(acc[W - 1][r]) : 0.0f;
    if (lane != 0) continue;
    if constexpr (E == Epilogue::store) {
      const std::int64_t at = static_cast<std::int64_t>(r) * n + columns[0];
      if (y_f32) static_cast<float*>(y)[at] = first;
      else static_cast<T*>(y)[at] = detail::from_f32<T>(first);
    } else if constexpr (E == Epilogue::silu_mul) {
      static_cast<T*>(y)[static_cast<std::int64_t>(r) * n + columns[0]] =
          detail::from_f32<T>(detail::silu(rounded(first)) * rounded(second));
    } else {
      float a = rounded(first), b = rounded(second);
      if (freq >= 0) {  // llama_kernels.cu's rope_kernel, term for term
        const float angle = __fmul_rn(static_cast<float>(rope.positions[r]), rope.inv_freq[freq]);
        double sd, cd;
        sincos(static_cast<double>(angle), &sd, &cd);
        const float c = static_cast<float>(cd), s = static_cast<float>(sd);
        const float ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        const float rb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
        a = ra;
        b = rb;
      }
      T* row = static_cast<T*>(y) + static_cast<std::int64_t>(r) * n;
      row[columns[0]] = detail::from_f32<T>(a);
      row[columns[1]] = detail::from_f32<T>(b);
    }
  }
}

template <typename T, int M, Epilogue E>
cudaError_t launch_width(dim3 grid, dim3 block, cudaStream_t stream, const T* x, const T* weight, int m, int n, int k,
                         void* y, bool y_f32, const RopeArgs& rope) {
  return detail::launch_dependent(small_gemm_kernel<T, M, E>, grid, block, 0, stream, x, weight, m, n, k, y, y_f32,
                                  rope);
}

template <typename T, Epilogue E>
cudaError_t launch(const void* x, const void* weight, int m, int n, int k, void* y, bool y_f32, const RopeArgs& rope,
                   cudaStream_t stream) {
  const int items = E == Epilogue::rope ? n / 2 : n;
  constexpr int warps_per_block = default_warps_per_block;
  const dim3 grid((items + warps_per_block - 1) / warps_per_block), block(warps_per_block * 32);
  const T* xt = static_cast<const T*>(x);
  const T* wt = static_cast<const T*>(weight);
  // Accumulators for M rows live in registers: instantiate a few widths.
  if (m == 1) return launch_width<T, 1, E>(grid, block, stream, xt, wt, m, n, k, y, y_f32, rope);
  if (m == 2) return launch_width<T, 2, E>(grid, block, stream, xt, wt, m, n, k, y, y_f32, rope);
  if (m <= 4) return launch_width<T, 4, E>(grid, block, stream, xt, wt, m, n, k, y, y_f32, rope);
  return launch_width<T, 8, E>(grid, block, stream, xt, wt, m, n, k, y, y_f32, rope);
}

template <Epilogue E>
cudaError_t dispatch(DType dtype, const void* x, const void* weight, int m, int n, int k, void* y, bool y_f32,
                     const RopeArgs& rope, cudaStream_t stream) {
  return dtype == DType::bf16 ? launch<__nv_bfloat16, E>(x, weight, m, n, k, y, y_f32, rope, stream)
                              : launch<__half, E>(x, weight, m, n, k, y, y_f32, rope, stream);
}

template <int kUnroll, int kWarps>
cudaError_t sweep_launch(bool gated, const void* x, const void* weight, int n, int k, void* y, cudaStream_t stream) {
  const dim3 grid((n + kWarps - 1) / kWarps), block(kWarps * 32);
  const auto* xt = static_cast<const __nv_bfloat16*>(x);
  const auto* wt = static_cast<const __nv_bfloat16*>(weight);
  if (gated)
    small_gemm_kernel<__nv_bfloat16, 1, Epilogue::silu_mul, kUnroll, kWarps>
        <<<grid, block, 0, stream>>>(xt, wt, 1, n, k, y, false, {});
  else
    small_gemm_kernel<__nv_bfloat16, 1, Epilogue::store, kUnroll, kWarps>
        <<<grid, block, 0, stream>>>(xt, wt, 1, n, k, y, false, {});
  return cudaGetLastError();
}

}  // namespace

cudaError_t small_gemm_sweep(int unroll, int warps_per_block, bool gated, const void* x, const void* weight, int n,
                             int k, void* y, cudaStream_t stream) {
  if (k % 8 != 0 || n <= 0) return cudaErrorInvalidValue;
  if (unroll == 2 && warps_per_block == 4) return sweep_launch<2, 4>(gated, x, weight, n, k, y, stream);
  if (unroll == 4 && warps_per_block == 4) return sweep_launch<4, 4>(gated, x, weight, n, k, y, stream);
  if (unroll == 8 && warps_per_block == 4) return sweep_launch<8, 4>(gated, x, weight, n, k, y, stream);
  if (unroll == 4 && warps_per_block == 8) return sweep_launch<4, 8>(gated, x, weight, n, k, y, stream);
  if (unroll == 8 && warps_per_block == 8) return sweep_launch<8, 8>(gated, x, weight, n, k, y, stream);
  if (unroll == 8 && warps_per_block == 2) return sweep_launch<8, 2>(gated, x, weight, n, k, y, stream);
  return cudaErrorInvalidValue;
}

bool small_gemm_supported(DType dtype, int m, int k, const void* x, const void* weight) {
  return (dtype == DType::bf16 || dtype == DType::f16) && m >= 1 && m <= small_gemm_max_rows && k > 0 && k % 8 == 0 &&
         reinterpret_cast<std::uintptr_t>(x) % 16 == 0 && reinterpret_cast<std::uintptr_t>(weight) % 16 == 0;
}

cudaError_t small_gemm(const void* x, const void* weight, DType dtype, int m, int n, int k, void* y, bool y_f32,
                       cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n < 0 || !small_gemm_supported(dtype, m, k, x, weight)) return cudaErrorInvalidValue;
  return dispatch<Epilogue::store>(dtype, x, weight, m, n, k, y, y_f32, {}, stream);
}

cudaError_t small_gemm_silu_mul(const void* x, const void* gate_up_weight, DType dtype, int m, int intermediate_size,
                                int k, void* out, cudaStream_t stream) {
  if (intermediate_size == 0) return cudaSuccess;
  if (intermediate_size < 0 || !small_gemm_supported(dtype, m, k, x, gate_up_weight)) return cudaErrorInvalidValue;
  return dispatch<Epilogue::silu_mul>(dtype, x, gate_up_weight, m, intermediate_size, k, out, false, {}, stream);
}

cudaError_t small_gemm_rope(const void* x, const void* weight, DType dtype, int m, int n, int k, int rope_heads,
                            int head_dim, const std::int32_t* positions, const float* inv_freq, void* y,
                            cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n < 0 || n % 2 != 0 || head_dim <= 0 || head_dim % 2 != 0 || rope_heads < 0 ||
      static_cast<std::int64_t>(rope_heads) * head_dim > n || (rope_heads > 0 && (!positions || !inv_freq)) ||
      !small_gemm_supported(dtype, m, k, x, weight))
    return cudaErrorInvalidValue;
  return dispatch<Epilogue::rope>(dtype, x, weight, m, n, k, y, false, RopeArgs{rope_heads, head_dim, positions, inv_freq},
                                  stream);
}

}  // namespace hostrun::cuda
