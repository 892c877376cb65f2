// The wgmma prefill attention instances for f16 queries (head_dim 128; 16-bit,
// int8 and int4 pages; the warp-specialized one over 16-bit pages, those over
// quantized pages being in attention_prefill_ws_kv_f16.cu), built for sm_90a
// only (CMakeLists.txt).
#include "cuda/attention_prefill.cuh"
#include "cuda/attention_prefill_ws.cuh"

namespace hostrun::cuda::detail {

template cudaError_t launch_prefill<__half, 128, 0, true, 128>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill<__half, 128, 8, true, 128>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill<__half, 128, 4, true, 128>(const AttentionKernelParams&, int, cudaStream_t);
template cudaError_t launch_prefill_ws<__half, 128, 0>(const AttentionKernelParams&, int, cudaStream_t);

}  // namespace hostrun::cuda::detail
