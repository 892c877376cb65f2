// The prefill attention instances over int8 KV pages (bf16 and f16
// queries, head_dim 64 and 128), in a file of their own so they compile in
// parallel with the 16-bit ones.
#include "cuda/attention_prefill.cuh"

namespace hostrun::cuda::detail {

template cudaError_t launch_prefill<__nv_bfloat16, 64, 8>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill<__nv_bfloat16, 128, 8>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill<__half, 64, 8>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill<__half, 128, 8>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill<__nv_bfloat16, 64, 8, false, 128>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill<__nv_bfloat16, 128, 8, false, 128>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill<__half, 64, 8, false, 128>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill<__half, 128, 8, false, 128>(const AttentionKernelParams&, int, cudaStream_t);

}  // namespace hostrun::cuda::detail
