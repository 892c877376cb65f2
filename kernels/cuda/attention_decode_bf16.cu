// The decode attention instances for bf16 (head_dim 64 and 128): one small
// file per dtype so each compiles on its own and in parallel.
#include "cuda/attention_decode.cuh"

namespace hostrun::cuda::detail {

template cudaError_t launch_decode_split<__nv_bfloat16, 64, 0>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_decode_split<__nv_bfloat16, 128, 0>(const AttentionKernelParams&, int, cudaStream_t);
template int decode_ctas_per_sm<__nv_bfloat16, 64, 0>();
template int decode_ctas_per_sm<__nv_bfloat16, 128, 0>();

}  // namespace hostrun::cuda::detail
