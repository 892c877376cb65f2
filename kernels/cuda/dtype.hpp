// Types shared by every CUDA op's public header: the storage dtype tag (the
// reference's, so a plugin passes the same value to either path) and the
// device error flag that replaces ref::Status on the GPU.
//
// Error flag: an int32 in device memory that a kernel sets, never clears, when
// a caller-supplied index is bad (a token id outside the vocabulary, a slot
// outside the pool). Its value is the ref::Status code of the first problem
// recorded (atomicCAS from 0), so the host reads it back when convenient
// (e.g. once per engine step, after the stream's last launch) and reports it
// with ref::status_name. Kernels never read out of bounds because of it: the
// offending row is written as zeros (embedding) or skipped (KV write).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ref/dtype.hpp"
#include "ref/status.hpp"

namespace hostrun::cuda {

using DType = ref::DType;
using Status = ref::Status;

}  // namespace hostrun::cuda
