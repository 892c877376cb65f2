// The library's one entry point: plugin "llama_cuda", role Model.
#include <hostrun/sdk.hpp>

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include "llama_cuda_model.hpp"

namespace {

hostrun::Status probe(const hostrun::Device& device) noexcept {
  if (device.kind != hostrun::DeviceKind::cuda)
    return hostrun::Status(hostrun::ErrorCode::unsupported,
                           fmt::format("llama_cuda runs on a CUDA GPU; {} was asked for (llama_cpu runs there)",
                                       hostrun::device_kind_name(device.kind)));
  int count = 0;
  if (const cudaError_t error = cudaGetDeviceCount(&count); error != cudaSuccess)
    return hostrun::Status(hostrun::ErrorCode::unsupported,
                           fmt::format("no CUDA device: cudaGetDeviceCount failed: {}", cudaGetErrorString(error)));
  if (device.index < 0 || device.index >= count)
    return hostrun::Status(hostrun::ErrorCode::unsupported,
                           fmt::format("cuda:{} was asked for but this machine has {} CUDA device(s)", device.index,
                                       count));
  return {};
}

const hostrun::SettingSpec kSettings[] = {
    {"max_tokens_per_step", hostrun::SettingType::integer,
     "Tokens one forward pass holds (the workspace is sized for it at load; a larger step runs as several passes)",
     false, "8192", 16, 1 << 20},
    {"max_batch", hostrun::SettingType::integer,
     "Sampled rows per LM-head pass (logits and sampling workspace are sized for it at load)", false, "256", 1, 65536},
    {"small_gemm_max_rows", hostrun::SettingType::integer,
     "Linear layers over at most this many tokens use the bandwidth-bound small_gemm kernel (with SiLU-mul and "
     "RoPE fused) instead of cuBLAS; 0: always cuBLAS. From 4 rows cuBLAS's tensor cores are faster "
     "(kernels/cuda/NOTES.md)",
     false, "1", 0, 8},
    {"cuda_graphs", hostrun::SettingType::boolean,
     "Replay decode passes of up to 8 sequences as CUDA graphs (fewer launch gaps at small batch)", false, "true"},
    {"profile", hostrun::SettingType::boolean,
     "Time every op of every pass with CUDA events and log the breakdown when the model is unloaded", false, "false"},
};
const hostrun::RoleEntry kRoles[] = {
    hostrun::role_entry<hostrun::Model, hostrun::llama_cuda::LlamaCudaModel>(kSettings, &probe)};

}  // namespace

HOSTRUN_PLUGIN("llama_cuda", "0.2.0",
               "Llama (LlamaForCausalLM) on a CUDA GPU: bf16/f16 activations, linear layers dense (cuBLAS, small_gemm) "
               "or a quantizer's, kernels/cuda for the rest",
               kRoles)
