// The library's one entry point: plugin "llama_cpu", role Model.
#include <hostrun/sdk.hpp>

#include <fmt/format.h>

#include "llama_model.hpp"

namespace {

hostrun::Status probe(const hostrun::Device& device) noexcept {
  if (device.kind != hostrun::DeviceKind::cpu)
    return hostrun::Status(hostrun::ErrorCode::unsupported,
                           fmt::format("llama_cpu computes on the CPU in host memory; {}:{} was asked for (use a CUDA "
                                       "model plugin such as llama_cuda)",
                                       hostrun::device_kind_name(device.kind), device.index));
  return {};
}

const hostrun::SettingSpec kSettings[] = {
    {"threads", hostrun::SettingType::integer,
     "Threads for the matrix multiplications (results are identical for any count)", false, "1", 1, 256},
};
const hostrun::RoleEntry kRoles[] = {
    hostrun::role_entry<hostrun::Model, hostrun::llama_cpu::LlamaCpuModel>(kSettings, &probe)};

}  // namespace

HOSTRUN_PLUGIN("llama_cpu", "0.2.0",
               "Llama (LlamaForCausalLM) on the CPU in f32 from the reference kernels; the oracle for GPU models",
               kRoles)
