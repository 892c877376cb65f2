#include "ref/embedding.hpp"

namespace hostrun::ref {

Status embedding_lookup(const std::int32_t* token_ids, std::size_t num_tokens, const void* table,
                        DType table_dtype, std::size_t vocab_size, std::size_t hidden_size, float* out,
                        std::size_t* first_bad_token) {
  for (std::size_t t = 0; t < num_tokens; ++t) {
    if (token_ids[t] < 0 || static_cast<std::size_t>(token_ids[t]) >= vocab_size) {
      if (first_bad_token != nullptr) *first_bad_token = t;
      return Status::token_id_out_of_range;
    }
  }
  const std::size_t row_bytes = hidden_size * dtype_size(table_dtype);
  for (std::size_t t = 0; t < num_tokens; ++t) {
    const auto* row = static_cast<const unsigned char*>(table) + static_cast<std::size_t>(token_ids[t]) * row_bytes;
    convert_to_f32(row, table_dtype, hidden_size, out + t * hidden_size);
  }
  return Status::ok;
}

}  // namespace hostrun::ref
