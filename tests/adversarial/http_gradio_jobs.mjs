// Gradio jobs that nobody claims (issue 19 item 6): `queue/join` without
// ever opening `queue/data` must not leave the engine generating. The bridge
// runs over an api_server here, so that server's /metrics shows the engine:
// its running requests return to 0 within a few seconds of the joins. The
// caps on jobs per session and over all answer with the limit's name.
//   node http_gradio_jobs.mjs GRADIO_URL API_URL KEY
// The bridge must run with max_jobs = 3 and max_jobs_per_session = 2.
import { check, request } from "./http_wire.mjs";

const [gradio, api, key] = process.argv.slice(2);
const auth = { authorization: `Bearer ${key}`, "content-type": "application/json" };

async function engine() {
  const { text } = await request(api, "/metrics");
  const value = (name) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);
  return { running: value("hostrun_requests_running"), waiting: value("hostrun_requests_waiting"),
           submitted: value("hostrun_requests_submitted_total"), finished: value("hostrun_requests_finished_total"),
           cancelled: value("hostrun_requests_cancelled_total") };
}
// Polls the engine until `done(counters)` or `seconds` pass; returns the last counters.
async function engine_until(done, seconds) {
  const deadline = Date.now() + seconds * 1000;
  let now = await engine();
  while (!done(now) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    now = await engine();
  }
  return now;
}
// Greedy (temperature 0): a sampled reply of the random-weight model may draw
// its end-of-turn token within seconds (a few percent of runs), finishing a
// job these checks need cancelled; the greedy one runs its 4,000 tokens.
const join = (session) => request(gradio, "/gradio_api/queue/join", {
  method: "POST", headers: auth,
  body: JSON.stringify({ data: ["Write a very long story.", [], "", 0, 1, 4000], fn_index: 1, session_hash: session }),
});

// Earlier tests' requests have ended (or are ending) first, so the counts below are these jobs' alone.
const before = await engine_until((e) => e.running === 0 && e.waiting === 0 && e.finished === e.submitted, 10);
const first = await join("unclaimed-a");
const second = await join("unclaimed-a");
const third = await join("unclaimed-a");
check(first.status === 200 && second.status === 200, `two joins in one session are taken (${first.status}, ${second.status})`);
check(third.status === 429 && /max_jobs_per_session/.test(third.json?.detail),
      `a third join in that session is 429 naming max_jobs_per_session (${third.status}: ${third.text})`);
const other = await join("unclaimed-b");
const over = await join("unclaimed-c");
check(other.status === 200, `a join in another session is taken (${other.status})`);
check(over.status === 503 && /max_jobs\b/.test(over.json?.detail),
      `a fourth job over all is 503 naming max_jobs (${over.status}: ${over.text})`);

// The three jobs reach the engine, then are cancelled for want of a stream.
const started = Date.now();
const busy = await engine_until((e) => e.running === 3, 5);
check(busy.running === 3, `the engine runs the three joined jobs (${JSON.stringify(busy)})`);
const idle = await engine_until((e) => e.running + e.waiting === 0 && e.finished === e.submitted, 15);
const seconds = (Date.now() - started) / 1000;
check(idle.running + idle.waiting === 0 && seconds < 12,
      `nothing runs ${seconds.toFixed(1)} s after the joins, 4000 tokens would take minutes (${JSON.stringify(idle)})`);
check(idle.cancelled - before.cancelled === 3 && idle.submitted - before.submitted === 3,
      `the engine took 3 requests and cancelled all 3 (before ${JSON.stringify(before)}, after ${JSON.stringify(idle)})`);

// A client that opens its stream late learns what happened to each job.
{
  const controller = new AbortController();
  const res = await fetch(`${gradio}/gradio_api/queue/data?session_hash=unclaimed-a`,
                          { headers: auth, signal: controller.signal });
  let text = "";
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  const deadline = Date.now() + 5000;
  while (!text.includes("close_stream") && Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
  }
  controller.abort();
  const endings = [...text.matchAll(/"msg":"process_completed".*?"error":"([^"]*)"/g)].map((m) => m[1]);
  check(endings.length === 2 && endings.every((e) => /no stream was open to \/queue\/data/.test(e)),
        `the late stream gets both jobs' endings, saying why (${JSON.stringify(endings)})`);
}

// The caps were about running jobs: with those gone, a job is taken again.
const again = await join("unclaimed-d");
check(again.status === 200, `after the cancellations a join is taken again (${again.status})`);
process.exit(process.exitCode ?? 0);
