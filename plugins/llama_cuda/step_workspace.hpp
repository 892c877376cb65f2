// The device buffers one forward pass works in, sized once at load and
// allocated as one block: activations for `tokens` query tokens, the LM
// head's buffers for `rows` sampled rows, and the workspaces sampling and
// the linear layers asked for. (Attention's workspace depends on the KV
// cache's shape, so it is made with the cache.)
#pragma once

#include <hostrun/tensor.hpp>

#include <cstddef>
#include <cstdint>

#include "device_memory.hpp"

namespace hostrun::llama_cuda {

// What the buffers are sized for.
struct WorkspaceSizes {
  int64_t tokens = 0;        // query tokens of one pass (max_tokens_per_step)
  int64_t rows = 0;          // sampled rows of one LM-head chunk (max_batch)
  int64_t hidden = 0;
  int64_t q_size = 0;        // q_heads * head_dim
  int64_t kv_size = 0;       // kv_heads * head_dim
  int64_t intermediate = 0;
  int64_t vocab = 0;
  int64_t head_dim = 0;
  DType dtype = DType::bf16;  // of the activations
  size_t sampling_bytes = 0;   // cuda::sampling_workspace_bytes(rows, vocab)
  size_t linear_bytes = 0;     // the most any LinearLayer asked for
};

struct StepWorkspace {
  // [tokens, hidden]: the residual stream, its normed copy, a block's output.
  std::byte* residual = nullptr;
  std::byte* normed = nullptr;
  std::byte* delta = nullptr;
  std::byte* qkv = nullptr;        // [tokens, q_size + 2 kv_size]: q, k, v heads of a row
  std::byte* attended = nullptr;   // [tokens, q_size]
  std::byte* gate_up = nullptr;    // [tokens, 2 intermediate], when SiLU-and-multiply is not fused
  std::byte* activated = nullptr;  // [tokens, intermediate]
  // [rows, hidden]: the sampled rows' residual and delta gathered, then normed.
  std::byte* last_residual = nullptr;
  std::byte* last_delta = nullptr;
  std::byte* last_normed = nullptr;
  float* logits = nullptr;         // [rows, vocab]
  std::byte* sampling = nullptr;   // sizes.sampling_bytes
  std::byte* linear = nullptr;     // sizes.linear_bytes
  float* inv_freq = nullptr;       // [head_dim / 2]
  int32_t* error_flag = nullptr;   // kernels' error flag (kernels/cuda/dtype.hpp)
  WorkspaceSizes sizes;

  // Bytes the buffers take together.
  static size_t bytes_for(const WorkspaceSizes& sizes);
  // Allocates them (throws Error naming the sizes and the free memory).
  void allocate(const WorkspaceSizes& sizes);
  size_t bytes() const { return memory_.bytes(); }

 private:
  DeviceBuffer memory_;
};

}  // namespace hostrun::llama_cuda
