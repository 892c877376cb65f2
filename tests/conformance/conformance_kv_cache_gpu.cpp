// The KV cache policies that run on a GPU, through the KvCachePolicy suite
// (kv_cache_suite.cpp): inputs are copied to the device, results back, and
// compared with kv_cpu's f32 pages on the host. Built with CUDA, run on the
// GPU machine (ctest label gpu). A new GPU policy joins with one row.
#include "cuda_memory.hpp"
#include "kv_cache_suite.hpp"

namespace conformance {

namespace {

using hostrun::DeviceKind;
using hostrun::DType;

// label, plugin, settings, device, activation dtype, tolerance (relative, vs kv_cpu f32 pages)
const KvPolicyRow kRows[] = {
    // Pages in the activation dtype; attention accumulates in f32 and writes 16-bit outputs.
    {"kv_cuda bf16", "kv_cuda", {}, DeviceKind::cuda, DType::bf16, 2e-2},
    {"kv_cuda f16", "kv_cuda", {}, DeviceKind::cuda, DType::f16, 5e-3},
    {"kv_cuda bf16, prefill on the decode stream", "kv_cuda", {{"concurrent_prefill", false}}, DeviceKind::cuda,
     DType::bf16, 2e-2},
    // On compute capability 9.0 the rows above prefill on wgmma; this one on
    // mma.sync (elsewhere it repeats the first row).
    {"kv_cuda bf16, mma.sync prefill", "kv_cuda", {{"wgmma_prefill", false}}, DeviceKind::cuda, DType::bf16, 2e-2},
    // int8 / int4 pages (quant_policy): kv_cpu's tolerances for the formats,
    // plus the 16-bit queries and outputs.
    {"kv_cuda int8, bf16 activations", "kv_cuda", {{"quant_policy", int64_t(8)}}, DeviceKind::cuda, DType::bf16, 3e-2},
    {"kv_cuda int8, f16 activations", "kv_cuda", {{"quant_policy", int64_t(8)}}, DeviceKind::cuda, DType::f16, 2e-2},
    {"kv_cuda int4, bf16 activations", "kv_cuda", {{"quant_policy", int64_t(4)}}, DeviceKind::cuda, DType::bf16, 0.4},
};

}  // namespace

std::span<const KvPolicyRow> kv_policy_rows() { return kRows; }

DeviceMemory& kv_device_memory() {
  static CudaMemory memory;
  return memory;
}

}  // namespace conformance
