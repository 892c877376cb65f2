// The SDK's two version numbers.
//
// HOSTRUN_SDK_VERSION_* follow semantic versioning of the headers as a product.
// HOSTRUN_ABI_VERSION is the one number the host compares before it touches
// anything else in a plugin library: it changes whenever a class layout, a
// virtual table or the meaning of a descriptor field changes in a way an old
// binary cannot survive. docs/plugin-guide.md says how the SDK grows without
// bumping it (fields appended behind `struct_size`, new interfaces as new roles).
#pragma once

#define HOSTRUN_SDK_VERSION_MAJOR 0
#define HOSTRUN_SDK_VERSION_MINOR 6
#define HOSTRUN_SDK_VERSION_PATCH 1
#define HOSTRUN_SDK_VERSION_STRING "0.6.1"

// A test build may compile a plugin against another ABI number to prove the
// host refuses it; nothing else should define this.
#ifdef HOSTRUN_TEST_ABI_OVERRIDE
#define HOSTRUN_ABI_VERSION HOSTRUN_TEST_ABI_OVERRIDE
#else
// 2: KvCachePolicy::write_rotary (a virtual method added).
// 3: Model::overlaps_steps / submit_step / collect_step, StepSequence::previous_sample.
// 4: the VisionEncoder role, LinearLayer's calls and epilogues, KV formats as
//    fields and KV workspaces, PluginPtr/LibraryPin, probes per device, FP8
//    dtypes, new error codes (docs/plugin-guide.md has the whole list).
// 5: Model::linear_input_groups, QuantizeJob's bits / group_size / progress
//    (`hostrun lite auto_awq`).
// 6: VisionEncoder::encode returns once written, on the encoder's own stream
//    (called from the engine's encoder thread); Model::embedding_exec gone.
#define HOSTRUN_ABI_VERSION 6
#endif
