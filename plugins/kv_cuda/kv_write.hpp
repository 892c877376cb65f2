// The plain paged K/V write of kv_cuda (twin of ref/write_kv.hpp):
//
//   k_pages[slot_mapping[t], g, :] = keys[t, g, :]
//   v_pages[slot_mapping[t], g, :] = values[t, g, :]
//
// keys/values are rows of kv_heads * head_dim contiguous elements with a row
// stride (often views into the model's fused QKV buffer); elements are
// element_bytes wide, an even number (the pages hold the activation dtype). A slot
// < 0 is padding and skipped; a slot >= num_slots is skipped too (the model
// checks every slot on the host before the step, so that never happens).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace hostrun::kv_cuda {

struct KvWriteArgs {
  int num_tokens = 0;
  int row_elements = 0;  // kv_heads * head_dim
  int element_bytes = 0;
  const void* keys = nullptr;
  const void* values = nullptr;
  std::int64_t keys_row_stride = 0;    // elements
  std::int64_t values_row_stride = 0;  // elements
  const std::int32_t* slot_mapping = nullptr;
  void* k_pages = nullptr;
  void* v_pages = nullptr;
  std::int64_t num_slots = 0;
};

cudaError_t write_kv(const KvWriteArgs& args, cudaStream_t stream);

}  // namespace hostrun::kv_cuda
