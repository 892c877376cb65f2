// The decode attention instances over int4 KV pages (bf16 and f16
// queries, head_dim 64 and 128), in a file of their own so they compile in
// parallel with the 16-bit ones.
#include "cuda/attention_decode.cuh"

namespace hostrun::cuda::detail {

template cudaError_t launch_decode_split<__nv_bfloat16, 64, 4>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_decode_split<__nv_bfloat16, 128, 4>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_decode_split<__half, 64, 4>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_decode_split<__half, 128, 4>(const AttentionKernelParams&, int, cudaStream_t);
template int decode_ctas_per_sm<__nv_bfloat16, 64, 4>();
template int decode_ctas_per_sm<__nv_bfloat16, 128, 4>();
template int decode_ctas_per_sm<__half, 64, 4>();
template int decode_ctas_per_sm<__half, 128, 4>();

}  // namespace hostrun::cuda::detail
