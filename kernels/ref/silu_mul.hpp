// SiLU-and-multiply, the Llama MLP activation on a fused gate/up projection:
//
//   gate_up  [num_tokens, 2 * intermediate_size] = [gate | up] per token
//   out[t, i] = silu(gate[t, i]) * up[t, i],   silu(g) = g / (1 + exp(-g))
//   out      [num_tokens, intermediate_size]
#pragma once

#include <cstddef>

namespace hostrun::ref {

// out must not alias gate_up.
void silu_and_mul(const float* gate_up, std::size_t num_tokens, std::size_t intermediate_size, float* out);

}  // namespace hostrun::ref
