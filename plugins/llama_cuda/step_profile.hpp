// Where a step's time goes, measured in the plugin itself (setting
// `profile = true`, e.g. `--set model.profile=true`): a CUDA event before
// each op of every pass; after the pass's own synchronize the gaps between
// consecutive events are added to the op's total. Host time is split into the
// pass's preparation (before the first launch), launching, and waiting on the
// synchronize. Passes are counted as decode (every query one token) or mixed.
//
// Nsight Systems cannot make reports on the GPU machine we are lent, so this
// is how docs/cuda.md gets its breakdowns; ncu gives per-kernel detail. The
// events cost ~1 us each on the host and nothing measurable on the GPU;
// profile off records nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <chrono>
#include <string>
#include <vector>

namespace hostrun::llama_cuda {

enum class Op : int {
  upload, embedding, norm, qkv_gemm, rope, kv_write, attention, o_gemm, gate_up_gemm, silu_mul, down_gemm,
  lm_head, sampling, read_back, graph, count
};

class StepProfile {
 public:
  ~StepProfile();
  bool enabled() const { return enabled_; }
  void enable();
  // No events while a CUDA graph is being captured (its launches do not run then).
  void pause(bool paused) { paused_ = paused; }

  // Host clock at the start of a pass; `decode` says which totals it feeds.
  void begin_pass(bool decode);
  // An event on `stream` opening `op` (closing the one before).
  void mark(Op op, cudaStream_t stream);
  // Before / after the pass's synchronize: closes the last op, then reads the events.
  void before_sync(cudaStream_t stream);
  void after_sync(int tokens);

  // The totals as a table, for the log.
  std::string report() const;

 private:
  struct Totals {
    std::array<double, size_t(Op::count)> gpu_ms{};
    double host_prepare_ms = 0, host_launch_ms = 0, host_wait_ms = 0, wall_ms = 0;
    long passes = 0, tokens = 0;
  };
  using Clock = std::chrono::steady_clock;
  bool enabled_ = false;
  bool decode_ = false;
  bool paused_ = false;
  std::vector<cudaEvent_t> events_;
  std::vector<Op> marked_;
  Clock::time_point pass_start_, first_launch_, sync_start_;
  Totals decode_totals_, mixed_totals_;
};

}  // namespace hostrun::llama_cuda
