// Status: what a reference kernel reports instead of reading or writing out of
// bounds. Kernels never throw (they run inside plugins, and exceptions must
// not cross the plugin boundary) and never abort on bad input from a caller.
#pragma once

#include <cstdint>

namespace hostrun::ref {

enum class Status : std::uint8_t {
  ok = 0,
  token_id_out_of_range,  // an id < 0 or >= vocab size (embedding, penalties)
  slot_out_of_range,      // a slot_mapping entry outside the KV pool
  block_out_of_range,     // a block_tables entry outside the KV pool
  bad_step_layout,        // query_start / context_lens / block table inconsistent
  invalid_argument,       // a size or parameter that makes no sense (e.g. q_heads % kv_heads != 0)
};

// A stable lower_snake name for logs and test messages ("token_id_out_of_range").
const char* status_name(Status status);

}  // namespace hostrun::ref
