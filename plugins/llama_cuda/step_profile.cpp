#include "step_profile.hpp"

#include <fmt/format.h>

namespace hostrun::llama_cuda {

namespace {

const char* op_name(Op op) {
  static constexpr const char* names[] = {"upload", "embedding", "rmsnorm", "qkv gemm", "rope", "kv write",
                                          "attention", "o gemm", "gate/up gemm", "silu*mul", "down gemm",
                                          "lm head", "sampling", "read back", "graph replay"};
  return names[int(op)];
}

double ms_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

StepProfile::~StepProfile() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

void StepProfile::enable() { enabled_ = true; }

void StepProfile::begin_pass(bool decode) {
  if (!enabled_) return;
  decode_ = decode;
  marked_.clear();
  pass_start_ = Clock::now();
}

void StepProfile::mark(Op op, cudaStream_t stream) {
  if (!enabled_ || paused_) return;
  if (marked_.empty()) first_launch_ = Clock::now();
  if (marked_.size() == events_.size()) {
    cudaEvent_t e = nullptr;
    if (cudaEventCreate(&e) != cudaSuccess) {  // profiling is best effort: stop rather than fail the step
      enabled_ = false;
      return;
    }
    events_.push_back(e);
  }
  cudaEventRecord(events_[marked_.size()], stream);
  marked_.push_back(op);
}

void StepProfile::before_sync(cudaStream_t stream) {
  if (!enabled_) return;
  mark(Op::count, stream);  // the end of the last op
  sync_start_ = Clock::now();
}

void StepProfile::after_sync(int tokens) {
  if (!enabled_ || marked_.empty()) return;
  const auto now = Clock::now();
  Totals& t = decode_ ? decode_totals_ : mixed_totals_;
  for (size_t i = 0; i + 1 < marked_.size(); ++i) {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, events_[i], events_[i + 1]) == cudaSuccess) t.gpu_ms[size_t(marked_[i])] += ms;
  }
  t.host_prepare_ms += ms_between(pass_start_, first_launch_);
  t.host_launch_ms += ms_between(first_launch_, sync_start_);
  t.host_wait_ms += ms_between(sync_start_, now);
  t.wall_ms += ms_between(pass_start_, now);
  t.passes += 1;
  t.tokens += tokens;
}

std::string StepProfile::report() const {
  std::string out;
  for (int kind = 0; kind < 2; ++kind) {
    const Totals& t = kind == 0 ? decode_totals_ : mixed_totals_;
    if (t.passes == 0) continue;
    double gpu = 0;
    for (double ms : t.gpu_ms) gpu += ms;
    out += fmt::format("{} passes: {}, tokens {}, wall {:.1f} ms ({:.3f} ms/pass), GPU first launch to end {:.1f} ms ({:.1f}%)\n",
                       kind == 0 ? "decode" : "mixed", t.passes, t.tokens, t.wall_ms, t.wall_ms / double(t.passes), gpu,
                       t.wall_ms > 0 ? 100.0 * gpu / t.wall_ms : 0.0);
    out += fmt::format("  host: prepare {:.1f} ms, launch {:.1f} ms, wait {:.1f} ms\n", t.host_prepare_ms,
                       t.host_launch_ms, t.host_wait_ms);
    for (int op = 0; op < int(Op::count); ++op)
      if (t.gpu_ms[size_t(op)] > 0)
        out += fmt::format("  {:<13} {:10.1f} ms {:5.1f}%  {:8.3f} ms/pass\n", op_name(Op(op)), t.gpu_ms[size_t(op)],
                           gpu > 0 ? 100.0 * t.gpu_ms[size_t(op)] / gpu : 0.0, t.gpu_ms[size_t(op)] / double(t.passes));
  }
  return out;
}

}  // namespace hostrun::llama_cuda
