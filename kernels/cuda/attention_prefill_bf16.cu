// The prefill attention instances for bf16 (head_dim 64 and 128): one small
// file per dtype so each compiles on its own and in parallel.
#include "cuda/attention_prefill.cuh"

namespace hostrun::cuda::detail {

template cudaError_t launch_prefill<__nv_bfloat16, 64, 0>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill<__nv_bfloat16, 128, 0>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill<__nv_bfloat16, 64, 0, false, 128>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill<__nv_bfloat16, 128, 0, false, 128>(const AttentionKernelParams&, int, cudaStream_t);

}  // namespace hostrun::cuda::detail
