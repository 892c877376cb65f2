#include "ref/silu_mul.hpp"

#include <cmath>

namespace hostrun::ref {

void silu_and_mul(const float* gate_up, std::size_t num_tokens, std::size_t intermediate_size, float* out) {
  for (std::size_t t = 0; t < num_tokens; ++t) {
    const float* gate = gate_up + t * 2 * intermediate_size;
    const float* up = gate + intermediate_size;
    float* out_row = out + t * intermediate_size;
    for (std::size_t i = 0; i < intermediate_size; ++i) {
      // For very negative g, exp(-g) overflows to inf and g / inf = -0, the
      // correct limit; no special case needed.
      const float g = gate[i];
      out_row[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  }
}

}  // namespace hostrun::ref
