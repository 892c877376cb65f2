// The warp-specialized prefill attention instances for f16 queries over int8
// and int4 pages (head_dim 128), built for sm_90a only (CMakeLists.txt), in a
// file of their own so they compile in parallel with the 16-bit ones.
#include "cuda/attention_prefill.cuh"
#include "cuda/attention_prefill_ws.cuh"

namespace hostrun::cuda::detail {

template cudaError_t launch_prefill_ws<__half, 128, 8>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill_ws<__half, 128, 4>(const AttentionKernelParams&, int, cudaStream_t);

}  // namespace hostrun::cuda::detail
