#include "step_workspace.hpp"

#include <fmt/format.h>

#include "errors.hpp"

namespace hostrun::llama_cuda {

namespace {

size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Every buffer with its size, in one place: each(member, bytes), in order.
template <typename Each>
void for_each_buffer(StepWorkspace& w, const WorkspaceSizes& s, Each&& each) {
  const size_t t = size_t(s.tokens), r = size_t(s.rows), e = dtype_bits(s.dtype) / 8;
  const size_t hidden = size_t(s.hidden), inter = size_t(s.intermediate);
  each(w.residual, t * hidden * e);
  each(w.normed, t * hidden * e);
  each(w.delta, t * hidden * e);
  each(w.qkv, t * size_t(s.q_size + 2 * s.kv_size) * e);
  each(w.attended, t * size_t(s.q_size) * e);
  each(w.gate_up, t * 2 * inter * e);
  each(w.activated, t * inter * e);
  each(w.last_residual, r * hidden * e);
  each(w.last_delta, r * hidden * e);
  each(w.last_normed, r * hidden * e);
  each(w.logits, r * size_t(s.vocab) * sizeof(float));
  each(w.sampling, s.sampling_bytes);
  each(w.linear, s.linear_bytes);
  each(w.inv_freq, size_t(s.head_dim / 2) * sizeof(float));
  each(w.error_flag, sizeof(int32_t));
}

}  // namespace

size_t StepWorkspace::bytes_for(const WorkspaceSizes& sizes) {
  StepWorkspace unused;
  size_t total = 0;
  for_each_buffer(unused, sizes, [&](auto*&, size_t bytes) { total += align256(bytes); });
  return total;
}

void StepWorkspace::allocate(const WorkspaceSizes& sizes) {
  const size_t total = bytes_for(sizes);
  size_t free_bytes = 0, total_bytes = 0;
  check_cuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  if (total > free_bytes)
    fail(ErrorCode::out_of_memory,
         fmt::format("the step workspace ({} tokens, {} rows) takes {} MiB but only {} MiB of {} MiB are free; lower "
                     "[model] max_tokens_per_step or max_batch",
                     sizes.tokens, sizes.rows, total >> 20, free_bytes >> 20, total_bytes >> 20));
  memory_.allocate(total, "the step workspace");
  this->sizes = sizes;
  std::byte* cursor = memory_.data();
  for_each_buffer(*this, sizes, [&](auto*& member, size_t bytes) {
    member = reinterpret_cast<std::remove_reference_t<decltype(member)>>(cursor);
    cursor += align256(bytes);
  });
}

}  // namespace hostrun::llama_cuda
