// How llama_cuda turns failures into the Status its entry points return:
// inside the plugin code throws hostrun::Error, and each Model method's
// guard() converts it. Every message starts with "llama_cuda: ".
#pragma once

#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <hostrun/status.hpp>

#include <string>
#include <string_view>

namespace hostrun::llama_cuda {

[[noreturn]] inline void fail(ErrorCode code, std::string message) {
  throw Error(code, "llama_cuda: " + std::move(message));
}

inline void throw_if_error(const Status& status) {
  if (!status) throw Error(status);
}

inline void check_cuda(cudaError_t error, std::string_view what) {
  if (error != cudaSuccess)
    fail(error == cudaErrorMemoryAllocation ? ErrorCode::out_of_memory : ErrorCode::internal,
         fmt::format("{}: {} ({})", what, cudaGetErrorString(error), cudaGetErrorName(error)));
}

}  // namespace hostrun::llama_cuda
