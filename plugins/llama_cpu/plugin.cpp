// The library's one entry point: plugin "llama_cpu", role Model.
#include <hostrun/sdk.hpp>

#include "llama_model.hpp"

namespace {

const hostrun::SettingSpec kSettings[] = {
    {"threads", hostrun::SettingType::integer,
     "Threads for the matrix multiplications (results are identical for any count)", false, "1", 1, 256},
};
const hostrun::RoleEntry kRoles[] = {
    hostrun::role_entry<hostrun::Model, hostrun::llama_cpu::LlamaCpuModel>(kSettings)};

}  // namespace

HOSTRUN_PLUGIN("llama_cpu", "0.1.0",
               "Llama (LlamaForCausalLM) on the CPU in f32 from the reference kernels; the oracle for GPU models",
               kRoles)
