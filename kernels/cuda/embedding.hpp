// Embedding lookup on the GPU (twin of ref/embedding.hpp):
//
//   out[t, :] = table[token_ids[t], :]
//
//   token_ids  [num_tokens]              int32, device
//   table      [vocab_size, hidden_size] f32 / bf16 / f16, device
//   out        [num_tokens, hidden_size] same dtype as the table
//
// An id < 0 or >= vocab_size never reads the table: its row is written as
// zeros and error_flag (dtype.hpp) is set to Status::token_id_out_of_range.
#pragma once

#include "cuda/dtype.hpp"

namespace hostrun::cuda {

// One block of 128 threads per token, 16-byte accesses when hidden_size
// allows. Returns the launch error (cudaErrorInvalidValue for a bad dtype).
cudaError_t embedding_lookup(const std::int32_t* token_ids, int num_tokens, const void* table, DType dtype,
                             std::int64_t vocab_size, int hidden_size, void* out, std::int32_t* error_flag,
                             cudaStream_t stream);

}  // namespace hostrun::cuda
