// Undelivered Gradio messages are capped (issue 19 item 6): a job whose
// session keeps no stream open piles up its events until the cap, then is
// cancelled, and the stream, when it comes, says which cap.
//   node http_gradio_pending.mjs GRADIO_URL CAP_SETTING SESSIONS
// The bridge runs with CAP_SETTING (max_pending_bytes_per_session or
// max_pending_bytes) set to a few KiB; SESSIONS sessions each join one job.
import { check, request } from "./http_wire.mjs";

const [gradio, cap, sessions] = process.argv.slice(2);
const json = { "content-type": "application/json" };
const hashes = Array.from({ length: Number(sessions) }, (_, i) => `pending-${i}`);
for (const hash of hashes) {
  const r = await request(gradio, "/gradio_api/queue/join", {
    method: "POST", headers: json,
    body: JSON.stringify({ data: ["Write a very long story.", [], "", 1, 1, 4000], fn_index: 1, session_hash: hash }),
  });
  check(r.status === 200, `${hash}: the join is taken (${r.status})`);
}
// Well before the 5 s an unwatched job is allowed, a few KiB of events have piled up.
await new Promise((resolve) => setTimeout(resolve, 2500));
let capped = 0;
for (const hash of hashes) {
  const controller = new AbortController();
  const res = await fetch(`${gradio}/gradio_api/queue/data?session_hash=${hash}`, { signal: controller.signal });
  let text = "";
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  const deadline = Date.now() + 5000;
  while (!text.includes("process_completed") && Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
  }
  controller.abort();
  const error = /"msg":"process_completed".*?"error":"([^"]*)"/.exec(text)?.[1] ?? "";
  if (new RegExp(`\\(${cap}\\)`).test(error) && /the job was cancelled/.test(error)) capped++;
  check(text.length < 16384, `${hash}: what was kept stayed small (${text.length} bytes)`);
}
check(capped >= 1, `a job was cancelled with an error naming ${cap} (${capped} of ${hashes.length})`);
const after = await request(gradio, "/config");
check(after.status === 200, `the bridge still answers GET /config (${after.status})`);
process.exit(process.exitCode ?? 0);
