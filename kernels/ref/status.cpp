#include "ref/status.hpp"

namespace hostrun::ref {

const char* status_name(Status status) {
  switch (status) {
    case Status::ok: return "ok";
    case Status::token_id_out_of_range: return "token_id_out_of_range";
    case Status::slot_out_of_range: return "slot_out_of_range";
    case Status::block_out_of_range: return "block_out_of_range";
    case Status::bad_step_layout: return "bad_step_layout";
    case Status::invalid_argument: return "invalid_argument";
  }
  return "unknown_status";
}

}  // namespace hostrun::ref
