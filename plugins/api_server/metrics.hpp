// What GET /metrics reports, in Prometheus' text format (version 0.0.4).
//
// Engine numbers (requests, tokens, queue depth, KV blocks) are read from
// EngineHandle::counters() at scrape time; latency histograms are measured here,
// in the server, because that is the latency a client sees: time to first token
// runs from the moment the whole HTTP request was read.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <hostrun/engine.hpp>

namespace hostrun::api {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double seconds);
  // Appends the _bucket/_sum/_count lines of `name`.
  void write(std::string& out, const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mutex_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; the last is +Inf
  double sum_ = 0;
  uint64_t total_ = 0;
};

// Numbers that come from outside this object at scrape time.
struct ScrapeInputs {
  EngineCounters engine;
  uint64_t connections_open = 0;
  uint64_t connections_accepted = 0;
  uint64_t aborted_exchanges = 0;
  int64_t engine_requests_in_flight = 0;
};

class Metrics {
 public:
  Metrics();
  void count_request(const std::string& endpoint);
  void count_error(int status);
  void count_disconnect_cancel(uint64_t engine_requests) { add(disconnect_cancels_, engine_requests); }
  void observe_ttft(std::chrono::duration<double> d) { ttft_.observe(d.count()); }
  void observe_inter_token(std::chrono::duration<double> d) { inter_token_.observe(d.count()); }
  void observe_e2e(std::chrono::duration<double> d) { e2e_.observe(d.count()); }
  std::string render(const ScrapeInputs& inputs) const;

 private:
  void add(uint64_t& counter, uint64_t n) {
    std::lock_guard lock(mutex_);
    counter += n;
  }
  mutable std::mutex mutex_;
  std::map<std::string, uint64_t> requests_by_endpoint_;
  std::map<int, uint64_t> errors_by_status_;
  uint64_t disconnect_cancels_ = 0;
  Histogram ttft_, inter_token_, e2e_;
};

}  // namespace hostrun::api
