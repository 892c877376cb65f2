// Device side of the quantized KV pages (int8 / int4, the format and block
// layout of ref/kv_quant.hpp): the warp-wide quantizer the stores use and the
// exact dequantizer the attention kernels use. Internal to kernels/cuda.
//
// Bit-for-bit with ref: the statistics are f32 max/min over the finite values,
// scale = IEEE (max - min) / (2^bits - 1), both rounded to f16 after
// saturation, then per value one IEEE subtraction, one IEEE division and a
// round-half-even (rintf); dequantization is fmaf(float(q), scale, zero). No
// --use_fast_math in this library, and the explicit _rn intrinsics keep the
// compiler from contracting any of it.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "ref/kv_quant.hpp"

namespace hostrun::cuda::detail {

// Bytes one row (one token's one KV head) of codes takes.
template <int kHeadDim, int kBits>
inline constexpr int kv_row_code_bytes = kHeadDim * kBits / 8;

// A quantized pool as a kernel addresses it: block b starts at
// b * block_bytes; row (offset, head), r = head * block_tokens + offset
// (head-major, ref::KvQuantBlockLayout), has its codes at r * row_code_bytes
// and its (scale, zero) at params_start + 4 r.
struct QuantizedPool {
  unsigned char* base = nullptr;
  std::int64_t block_bytes = 0;
  int params_start = 0;
  int row_code_bytes = 0;
  int kv_heads = 0;
  int block_tokens = 0;

  static QuantizedPool of(void* base, const ref::KvQuantBlockLayout& layout) {
    return {static_cast<unsigned char*>(base), static_cast<std::int64_t>(layout.block_bytes()),
            static_cast<int>(layout.params_start()), static_cast<int>(layout.row_code_bytes()),
            static_cast<int>(layout.kv_heads), static_cast<int>(layout.block_tokens)};
  }
  __device__ __forceinline__ unsigned char* codes(std::int64_t slot, int head) const {
    const std::int64_t block = slot / block_tokens;
    const int row = head * block_tokens + static_cast<int>(slot % block_tokens);
    return base + block * block_bytes + static_cast<std::int64_t>(row) * row_code_bytes;
  }
  __device__ __forceinline__ std::uint32_t* params(std::int64_t slot, int head) const {
    const std::int64_t block = slot / block_tokens;
    const int word = head * block_tokens + static_cast<int>(slot % block_tokens);
    return reinterpret_cast<std::uint32_t*>(base + block * block_bytes + params_start + 4 * word);
  }
};

// (scale, zero) as stored: scale's f16 bits in the low half (first in memory).
__device__ __forceinline__ float2 unpack_kv_params(std::uint32_t word) {
  return make_float2(__half2float(__ushort_as_half(static_cast<unsigned short>(word & 0xffffu))),
                     __half2float(__ushort_as_half(static_cast<unsigned short>(word >> 16))));
}

// float(q) for a code q < 2^23, exactly, without an I2F: 2^23 + q is a float
// whose mantissa holds q.
__device__ __forceinline__ float code_to_float(std::uint32_t q) {
  return __fsub_rn(__uint_as_float(0x4B000000u | q), 8388608.0f);
}

__device__ __forceinline__ float dequantize_kv(std::uint32_t q, float2 params) {
  return __fmaf_rn(code_to_float(q), params.x, params.y);
}

// Code i of a 32-bit word of codes (int8: byte i; int4: nibble i, low
// first; i a constant once unrolled), dequantized: the same float as
// dequantize_kv, in fewer instructions. A byte goes into 2^23's mantissa with
// one PRMT. A nibble is masked in place (one LOP3, no shift) from the word or,
// for nibbles 4-7, its upper half shifted down once: 2^23 + c 16^k less 2^23
// is c 16^k exactly (k = i % 4), and scale 16^-k is exact too (a power of
// two; fp16 scales stay normal in f32), so the FMA sees the same product c
// scale as dequantize_kv's.
template <int kBits>
__device__ __forceinline__ float dequantize_code(std::uint32_t word, int i, float2 params) {
  if constexpr (kBits == 8) {
    const float q = __fsub_rn(__uint_as_float(__byte_perm(word, 0x4B000000u, 0x7440u | static_cast<unsigned>(i))),
                              8388608.0f);
    return __fmaf_rn(q, params.x, params.y);
  } else {
    const std::uint32_t half = i < 4 ? word : word >> 16;
    const int k = i % 4;
    const float q = __fsub_rn(__uint_as_float((half & (0xFu << (4 * k))) | 0x4B000000u), 8388608.0f);
    return __fmaf_rn(q, __fmul_rn(params.x, 1.0f / static_cast<float>(1 << (4 * k))), params.y);
  }
}

__device__ __forceinline__ std::uint16_t saturated_f16_bits(float value) {
  return __half_as_ushort(__float2half_rn(fminf(fmaxf(value, -65504.0f), 65504.0f)));
}

// ref::rotate_kv_row of one row held by a warp, lane l holding elements
// [kPerLane * l, + kPerLane) (head_dim = 32 * kPerLane, one block): the same
// butterflies in the same order (strides 1, 2, ... within a lane, then across
// lanes), then each value times the f32 nearest 1/sqrt(head_dim), so the
// result equals ref's bit for bit. All 32 lanes must call it.
template <int kPerLane>
__device__ __forceinline__ void rotate_row_warp(float (&x)[kPerLane]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int h = 1; h < kPerLane; h *= 2)
#pragma unroll
    for (int e = 0; e < kPerLane; ++e)
      if ((e & h) == 0) {
        const float a = x[e], b = x[e + h];
        x[e] = __fadd_rn(a, b);
        x[e + h] = __fsub_rn(a, b);
      }
#pragma unroll
  for (int m = 1; m < 32; m *= 2) {  // element stride kPerLane * m: the partner is lane ^ m
    const bool low = (lane & m) == 0;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const float other = __shfl_xor_sync(0xffffffffu, x[e], m);
      x[e] = low ? __fadd_rn(x[e], other) : __fsub_rn(other, x[e]);
    }
  }
  const float norm = static_cast<float>(1.0 / sqrt(static_cast<double>(32 * kPerLane)));
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) x[e] = __fmul_rn(x[e], norm);
}

// Quantizes one row held by a warp, lane l holding elements [kPerLane * l,
// + kPerLane) (head_dim = 32 * kPerLane), and stores its codes at `codes`
// (the row's kv_row_code_bytes bytes) and its parameters at `params`.
// All 32 lanes must call it.
template <int kBits, int kPerLane>
__device__ __forceinline__ void quantize_row_warp(const float (&x)[kPerLane], unsigned char* codes,
                                                  std::uint32_t* params) {
  static_assert(kBits == 8 || kBits == 4);
  static_assert(kPerLane == 2 || kPerLane == 4, "head_dim 64 or 128");
  const int lane = threadIdx.x & 31;
  float lo = INFINITY, hi = -INFINITY;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e)
    if (isfinite(x[e])) {
      lo = fminf(lo, x[e]);
      hi = fmaxf(hi, x[e]);
    }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
  }
  if (lo > hi) lo = hi = 0.0f;  // no finite value
  constexpr std::uint32_t top = (1u << kBits) - 1;
  const std::uint16_t scale_bits = saturated_f16_bits(__fdiv_rn(__fsub_rn(hi, lo), float(top)));
  const std::uint16_t zero_bits = saturated_f16_bits(lo);
  const float scale = __half2float(__ushort_as_half(scale_bits));
  const float zero = __half2float(__ushort_as_half(zero_bits));
  std::uint32_t q[kPerLane];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    if (isnan(x[e])) {
      q[e] = 0;
    } else if (isinf(x[e])) {
      q[e] = x[e] > 0.0f ? top : 0;
    } else if (scale == 0.0f) {
      q[e] = 0;
    } else {
      const float r = rintf(__fdiv_rn(__fsub_rn(x[e], zero), scale));
      q[e] = r <= 0.0f ? 0u : r >= float(top) ? top : static_cast<std::uint32_t>(r);
    }
  }
  if constexpr (kBits == 8) {
    if constexpr (kPerLane == 2) {
      reinterpret_cast<std::uint16_t*>(codes)[lane] = static_cast<std::uint16_t>(q[0] | q[1] << 8);
    } else {
#pragma unroll
      for (int w = 0; w < kPerLane / 4; ++w)
        reinterpret_cast<std::uint32_t*>(codes)[lane * (kPerLane / 4) + w] =
            q[4 * w] | q[4 * w + 1] << 8 | q[4 * w + 2] << 16 | q[4 * w + 3] << 24;
    }
  } else {  // element 2i in the low nibble of byte i
    if constexpr (kPerLane == 2) {
      codes[lane] = static_cast<unsigned char>(q[0] | q[1] << 4);
    } else {
      reinterpret_cast<std::uint16_t*>(codes)[lane] = static_cast<std::uint16_t>(q[0] | q[1] << 4 | q[2] << 8 | q[3] << 12);
    }
  }
  if (lane == 0) *params = static_cast<std::uint32_t>(scale_bits) | static_cast<std::uint32_t>(zero_bits) << 16;
}

}  // namespace hostrun::cuda::detail
