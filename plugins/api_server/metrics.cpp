#include "metrics.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace hostrun::api {

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double seconds) {
  size_t bucket = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), seconds) - bounds_.begin());
  std::lock_guard lock(mutex_);
  ++counts_[bucket];
  sum_ += seconds;
  ++total_;
}

void Histogram::write(std::string& out, const std::string& name, const std::string& help) const {
  std::lock_guard lock(mutex_);
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  cumulative += counts_.back();
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, cumulative, name, sum_, name,
                     total_);
}

Metrics::Metrics()
    : ttft_({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}),
      inter_token_({0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5}),
      e2e_({0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320}) {}

void Metrics::count_request(const std::string& endpoint) {
  std::lock_guard lock(mutex_);
  ++requests_by_endpoint_[endpoint];
}

void Metrics::count_error(int status) {
  std::lock_guard lock(mutex_);
  ++errors_by_status_[status];
}

namespace {

void metric(std::string& out, std::string_view name, std::string_view type, std::string_view help, double value) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
}

}  // namespace

std::string Metrics::render(const ScrapeInputs& in) const {
  std::string out;
  out.reserve(8192);
  {
    std::lock_guard lock(mutex_);
    out += "# HELP hostrun_http_requests_total HTTP requests received, by endpoint\n"
           "# TYPE hostrun_http_requests_total counter\n";
    for (const auto& [endpoint, n] : requests_by_endpoint_)
      out += fmt::format("hostrun_http_requests_total{{endpoint=\"{}\"}} {}\n", endpoint, n);
    out += "# HELP hostrun_http_errors_total Error responses sent, by HTTP status\n"
           "# TYPE hostrun_http_errors_total counter\n";
    for (const auto& [status, n] : errors_by_status_)
      out += fmt::format("hostrun_http_errors_total{{status=\"{}\"}} {}\n", status, n);
    metric(out, "hostrun_api_disconnect_cancels_total", "counter",
           "Engine requests this server cancelled because their client went away", double(disconnect_cancels_));
  }
  metric(out, "hostrun_api_engine_requests_in_flight", "gauge",
         "Engine requests this server has submitted and not yet seen finish", double(in.engine_requests_in_flight));
  metric(out, "hostrun_http_open_connections", "gauge", "Open client connections", double(in.connections_open));
  metric(out, "hostrun_http_connections_total", "counter", "Client connections accepted",
         double(in.connections_accepted));
  metric(out, "hostrun_http_aborted_total", "counter",
         "Requests whose client went away before the response was complete", double(in.aborted_exchanges));
  const EngineCounters& e = in.engine;
  metric(out, "hostrun_requests_submitted_total", "counter", "Requests the engine accepted",
         double(e.requests_submitted));
  metric(out, "hostrun_requests_finished_total", "counter", "Requests the engine finished (any reason)",
         double(e.requests_finished));
  metric(out, "hostrun_requests_cancelled_total", "counter", "Requests the engine cancelled",
         double(e.requests_cancelled));
  metric(out, "hostrun_requests_rejected_total", "counter",
         "Requests refused because the queue was full (engine.max_queued_requests)", double(e.requests_rejected));
  metric(out, "hostrun_requests_timed_out_total", "counter",
         "Requests ended by the time limit (engine.request_timeout_s)", double(e.requests_timed_out));
  metric(out, "hostrun_prompt_tokens_total", "counter", "Prompt tokens of accepted requests", double(e.prompt_tokens));
  metric(out, "hostrun_generation_tokens_total", "counter", "Tokens generated", double(e.completion_tokens));
  metric(out, "hostrun_requests_running", "gauge", "Sequences in the running batch", double(e.running));
  metric(out, "hostrun_requests_waiting", "gauge", "Requests queued for admission", double(e.waiting));
  metric(out, "hostrun_kv_blocks_total", "gauge", "KV-cache blocks", double(e.kv_blocks_total));
  metric(out, "hostrun_kv_blocks_used", "gauge", "KV-cache blocks held by requests", double(e.kv_blocks_used));
  metric(out, "hostrun_kv_cache_usage_ratio", "gauge", "Share of KV-cache blocks in use",
         e.kv_blocks_total ? double(e.kv_blocks_used) / double(e.kv_blocks_total) : 0.0);
  ttft_.write(out, "hostrun_time_to_first_token_seconds", "From request read to first token sent");
  inter_token_.write(out, "hostrun_inter_token_latency_seconds", "Between consecutive tokens of a stream");
  e2e_.write(out, "hostrun_request_latency_seconds", "From request read to the last token");
  return out;
}

}  // namespace hostrun::api
