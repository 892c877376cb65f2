// Where device work runs, passed into every op that may launch kernels.
#pragma once

#include "hostrun/tensor.hpp"

namespace hostrun {

struct ExecContext {
  Device device{};
  // The device stream to launch on (a cudaStream_t on CUDA); nullptr on the CPU.
  void* stream = nullptr;
  // Scratch memory owned by the caller, valid for the duration of the call.
  // Ops take workspace from here and never allocate on the hot path.
  TensorView workspace{};
};

}  // namespace hostrun
