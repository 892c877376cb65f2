// y = x @ weight^T (ref::gemm's layout) with the weight rows split over threads.
//
// Each output element's additions happen in the same order whatever the
// split (ref::gemm sums every element the same way whether it is computed
// alone or with three neighbours, and the split never cuts the k dimension),
// so the result is bit-identical for any thread count.
#pragma once

#include <cstddef>

namespace hostrun::llama_cpu {

// x [m, k], weight [n, k] f32, y [m, n]; y must not alias x or weight.
void parallel_gemm(const float* x, const float* weight, std::size_t m, std::size_t n, std::size_t k, float* y,
                   int threads);

}  // namespace hostrun::llama_cpu
