// Internal to kernels/cuda: shared-memory barriers with a phase (mbarrier,
// sm_80+) and the register reallocation of warp-specialized kernels
// (setmaxnreg, sm_90a), as inline PTX. A producer and its consumers hand a
// buffer back and forth through two barriers, "full" and "empty", without a
// block-wide __syncthreads: each side waits only for the phase it needs.
//
// A barrier counts `count` arrivals a phase; when they are in, the phase
// completes and the next begins. Waiting names the parity of the phase to
// wait for: the k-th use of a barrier (k = 0, 1, ...) completes phase parity
// k & 1. A fresh barrier's "previous" phase (parity 1) counts as complete, so
// a producer that waits on `empty` with parity ((k & 1) ^ 1) passes its first
// round at once.
#pragma once

#include <cstdint>

#include "cuda/mma.cuh"

namespace hostrun::cuda::detail {

__device__ __forceinline__ void mbarrier_init(std::uint64_t* barrier, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(barrier)), "r"(count) : "memory");
}
// Makes initialized barriers visible to the other threads (and to the async
// proxy) before the block barrier that follows.
__device__ __forceinline__ void mbarrier_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbarrier_arrive(std::uint64_t* barrier) {
  asm volatile(
      "{\n"
      ".reg .b64 state;\n"
      "mbarrier.arrive.release.cta.shared::cta.b64 state, [%0];\n"
      "}\n" ::"r"(smem_address(barrier))
      : "memory");
}
__device__ __forceinline__ void mbarrier_wait(std::uint64_t* barrier, std::uint32_t parity) {
  std::uint32_t done = 0;
  do {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(smem_address(barrier)), "r"(parity)
        : "memory");
  } while (!done);
}

// A warpgroup's register budget, raised or lowered (every thread of the
// warpgroup executes it): a producer that only copies gives registers to
// consumers that hold accumulators.
template <int kRegisters>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(kRegisters % 8 == 0 && kRegisters >= 24 && kRegisters <= 256);
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(kRegisters % 8 == 0 && kRegisters >= 24 && kRegisters <= 256);
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

}  // namespace hostrun::cuda::detail
