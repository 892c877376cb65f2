// SiLU-and-multiply on the fused gate|up projection (twin of ref/silu_mul.hpp):
//
//   gate_up  [num_tokens, 2 * intermediate_size] = [gate | up] per token
//   out[t, i] = silu(gate[t, i]) * up[t, i],   silu(g) = g / (1 + exp(-g))
//   out      [num_tokens, intermediate_size]
//
// f32 / bf16 / f16 (one dtype for both), f32 math. out must not alias gate_up.
#pragma once

#include "cuda/dtype.hpp"

namespace hostrun::cuda {

cudaError_t silu_and_mul(const void* gate_up, DType dtype, int num_tokens, int intermediate_size, void* out,
                         cudaStream_t stream);

}  // namespace hostrun::cuda
