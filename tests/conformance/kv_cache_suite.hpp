// The KvCachePolicy conformance suite (kv_cache_suite.cpp holds its test
// cases): any policy against kv_cpu with f32 pages, on the device its format
// names.
//
// Each executable that runs the suite defines the two functions below: the
// table of rows it runs (conformance_kv_cache.cpp: the CPU rows, CI;
// conformance_kv_cache_gpu.cpp: the CUDA rows, label gpu) and the memory the
// rows' device uses. A new policy joins by adding one row.
#pragma once

#include <span>

#include "hostrun/kv_cache.hpp"
#include "hostrun/tensor.hpp"
#include "device_memory.hpp"

namespace conformance {

struct KvPolicyRow {
  const char* label;  // names the row in failures: "kv_cpu bf16 pages"
  const char* plugin;
  SettingList settings;
  hostrun::DeviceKind device;
  hostrun::DType activation_dtype;  // what the suite hands write() and attend()
  // Bound on max |out - reference| / max |reference| of every attention
  // output (and of rotated queries), against kv_cpu f32 pages given the same
  // values rounded to activation_dtype.
  double tolerance;
};

// Defined by the executable that runs the suite.
std::span<const KvPolicyRow> kv_policy_rows();
DeviceMemory& kv_device_memory();

}  // namespace conformance
