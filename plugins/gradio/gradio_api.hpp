// The subset of Gradio's HTTP API that the official clients (@gradio/client,
// gradio_client) use to call a chat function, answered without Gradio.
//
// The app it describes has one function, api_name "chat", shaped like
// gr.ChatInterface's: chat(message, history=[], system_prompt="",
// temperature, top_p, max_tokens) -> str, a generator (the reply grows as it
// streams). Routes, each also under the /gradio_api prefix that Gradio 5+
// announces in its config:
//   GET  /config                 the app: components, dependencies, protocol "sse_v3"
//   GET  /info                   the named endpoint "/chat" with its parameters
//   POST /queue/join             {data, fn_index, session_hash} -> {event_id}
//   GET  /queue/data?session_hash=...  one SSE stream per session carrying every
//        event's estimation, process_starts, process_generating (first the
//        whole value, then ["append", [], text] diffs), process_completed,
//        heartbeats every 15 s, then close_stream once the session has had
//        nothing running for a second (so a client that submits again at
//        once still finds its stream open)
//   POST /cancel, /reset         stop an event
//   POST /upload                 multipart/form-data "files" -> ["path", ...]
//        (uploads.hpp: kept in memory for 10 minutes, 20 MiB each, 256 MiB in all)
// When the model takes images, the message is a MultimodalTextbox's value,
// {"text", "files": [FileData]}: each file one uploaded here or a data: URL.
// A body nested deeper than its limits allow is a 422, one that would take
// too much memory once parsed a 413, both with {"detail"} saying why.
// Messages queued for a session before its stream connects are kept and sent
// when it does (the client opens the stream after the join answers). Nobody
// may park work here: a job whose session opens no stream within a few
// seconds of the join is cancelled, and jobs and undelivered messages are
// capped per session and over all (JobLimits); a job cut off by either ends
// with an error saying which limit.
#pragma once

#include <hostrun/engine.hpp>
#include <hostrun/json_bounds.hpp>
#include <hostrun/log.hpp>
#include <memory>

#include "chat_settings.hpp"
#include "http_server.hpp"
#include "worker_pool.hpp"

namespace hostrun::gradio {

// The caps on what clients may have running or waiting (the plugin's settings of the same names).
struct JobLimits {
  size_t max_jobs = 256;                                // jobs running at once, over every session (503 beyond)
  size_t max_jobs_per_session = 8;                      // jobs running at once in one session (429 beyond)
  size_t max_pending_bytes_per_session = size_t(1) << 20;  // messages kept for one session's stream
  size_t max_pending_bytes = size_t(64) << 20;             // messages kept over every session
};

class GradioApi {
 public:
  // `body_limits` bound every JSON body it reads (network_json_limits of the
  // server's body limit).
  GradioApi(EngineHandle& engine, ChatDefaults defaults, JobLimits limits, JsonLimits body_limits, Logger log);
  ~GradioApi();
  GradioApi(const GradioApi&) = delete;
  GradioApi& operator=(const GradioApi&) = delete;

  // The paths of POST /upload (bare and under the prefix): the server's multipart_paths.
  static std::vector<std::string> upload_paths();

  // `workers` runs the joins (parsing, submitting); it must outlive the server's threads.
  void add_routes(http::Server& server, http::WorkerPool& workers);
  // Cancels every running event and ends every stream; call before the engine goes away.
  void stop();

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace hostrun::gradio
