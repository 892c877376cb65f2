// Embedding lookup:  out[t, :] = table[token_ids[t], :]   (converted to f32)
//
//   token_ids  [num_tokens]              int32
//   table      [vocab_size, hidden_size] f32 / bf16 / f16, row-major
//   out        [num_tokens, hidden_size] f32
#pragma once

#include <cstddef>
#include <cstdint>

#include "ref/dtype.hpp"
#include "ref/status.hpp"

namespace hostrun::ref {

// Every id is checked before anything is written: on an id < 0 or
// >= vocab_size it returns Status::token_id_out_of_range, leaves out untouched
// and, when first_bad_token is given, stores the index (into token_ids) of the
// first offending id there so the caller can say which one.
Status embedding_lookup(const std::int32_t* token_ids, std::size_t num_tokens, const void* table,
                        DType table_dtype, std::size_t vocab_size, std::size_t hidden_size, float* out,
                        std::size_t* first_bad_token = nullptr);

}  // namespace hostrun::ref
