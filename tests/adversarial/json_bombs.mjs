// Sends hostile JSON (payloads.mjs) to a running api_server and gradio bridge (json_bombs.sh
// starts them) and checks each answer, that each server still serves an
// ordinary request afterwards, and how far its peak RSS (VmHWM) grew.
//   node json_bombs.mjs API_URL API_PID GRADIO_URL GRADIO_PID
// No npm packages: node's own fetch.
import { readFileSync } from 'node:fs';
import { deep, empty_arrays } from './payloads.mjs';

const [apiUrl, apiPid, gradioUrl, gradioPid] = process.argv.slice(2);
const maxGrowthMb = Number(process.env.JSON_BOMBS_MAX_GROWTH_MB ?? 100);
let failures = 0;
function check(condition, what) {
  console.log(`${condition ? 'ok' : 'FAIL'}: ${what}`);
  if (!condition) failures++;
}

// VmHWM (peak resident set) and VmRSS of a process, in MB.
function memory(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key) => Number(status.match(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm'))[1]);
  return { peak: kb('VmHWM') / 1024, rss: kb('VmRSS') / 1024 };
}

// A POST with a JSON body given as text; a server that died answers status 0.
async function post(url, body) {
  try {
    const res = await fetch(url, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body, signal: AbortSignal.timeout(60_000),
    });
    const text = await res.text();
    let json = null;
    try { json = JSON.parse(text); } catch { /* not JSON */ }
    return { status: res.status, text, json };
  } catch (e) {
    return { status: 0, text: String(e), json: null };
  }
}

const bomb = deep(75_000);  // 150,000 bytes
const hello = '"messages":[{"role":"user","content":"Hello"}]';

// ---- api_server ----
async function ordinaryChat(what) {
  const r = await post(`${apiUrl}/v1/chat/completions`, `{${hello},"max_tokens":4,"temperature":0}`);
  check(r.status === 200 && typeof r.json?.choices?.[0]?.message?.content === 'string',
        `api_server: ${what}: an ordinary chat request gets 200 (got ${r.status}: ${r.text.slice(0, 200)})`);
}

await ordinaryChat('before the bombs');
const apiBaseline = memory(apiPid);

const chatFields = ['model', 'messages', 'temperature', 'top_p', 'top_k', 'min_p', 'max_tokens', 'max_completion_tokens',
  'min_tokens', 'stop', 'n', 'seed', 'ignore_eos', 'skip_special_tokens', 'user', 'stream', 'stream_options', 'tools',
  'response_format', 'logprobs', 'top_logprobs', 'repetition_penalty', 'presence_penalty', 'frequency_penalty'];
for (const field of chatFields) {
  const body = field === 'messages' ? `{"messages":${bomb}}` : `{${hello},"${field}":${bomb}}`;
  const r = await post(`${apiUrl}/v1/chat/completions`, body);
  check(r.status === 400 && /nests arrays and objects 75,001 deep/.test(r.json?.error?.message ?? ''),
        `api_server: chat '${field}' nested 75,000 deep: 400 naming the depth (got ${r.status}: ${r.text.slice(0, 160)})`);
}
for (const field of ['prompt', 'echo', 'logprobs', 'suffix', 'best_of', 'stop']) {
  const body = field === 'prompt' ? `{"prompt":${bomb}}` : `{"prompt":"Hi","${field}":${bomb}}`;
  const r = await post(`${apiUrl}/v1/completions`, body);
  check(r.status === 400 && /75,001 deep/.test(r.json?.error?.message ?? ''),
        `api_server: completion '${field}' nested 75,000 deep: 400 (got ${r.status}: ${r.text.slice(0, 160)})`);
}
{
  const objects = '{"text":'.repeat(75_000) + '"x"' + '}'.repeat(75_000);
  const r = await post(`${apiUrl}/v1/chat/completions`, `{"messages":[{"role":"user","content":${objects}}]}`);
  check(r.status === 400 && /75,003 deep/.test(r.json?.error?.message ?? ''),
        `api_server: message content as objects nested 75,000 deep: 400 (got ${r.status}: ${r.text.slice(0, 160)})`);
}
await ordinaryChat('after the deep bombs');

{
  const body = empty_arrays(`{${hello},`);
  const before = memory(apiPid);
  const r = await post(`${apiUrl}/v1/chat/completions`, body);
  const after = memory(apiPid);
  check(r.status === 413 && /once parsed/.test(r.json?.error?.message ?? ''),
        `api_server: ${body.length.toLocaleString('en')} bytes of empty arrays: 413 (got ${r.status}: ${r.text.slice(0, 240)})`);
  console.log(`  api_server peak RSS ${before.peak.toFixed(1)} -> ${after.peak.toFixed(1)} MB for that body`);
}
{
  // About the most a 16 MiB-limited server accepts: 800,000 token-id-like numbers,
  // 5.6 MB estimated at 61 MiB at their peak (the limit is 64 MiB).
  const body = `{${hello},"max_tokens":2,"x":[${'128000,'.repeat(799_999)}128000]}`;
  const before = memory(apiPid);
  const r = await post(`${apiUrl}/v1/chat/completions`, body);
  const after = memory(apiPid);
  check(r.status === 200, `api_server: ${body.length.toLocaleString('en')} bytes of numbers, within the budget, is parsed and served (got ${r.status}: ${r.text.slice(0, 200)})`);
  console.log(`  api_server peak RSS ${before.peak.toFixed(1)} -> ${after.peak.toFixed(1)} MB for that body`);
}
await ordinaryChat('after the large bodies');
{
  const end = memory(apiPid);
  const growth = end.peak - apiBaseline.peak;
  check(growth < maxGrowthMb, `api_server: peak RSS grew ${growth.toFixed(1)} MB over all bombs (${apiBaseline.peak.toFixed(1)} -> ${end.peak.toFixed(1)} MB; limit ${maxGrowthMb}); RSS now ${end.rss.toFixed(1)} MB`);
}

// ---- gradio bridge ----
// One whole /chat call through the queue: join, then read the session's stream to process_completed.
async function ordinaryGradioCall(what) {
  const session = `ok${Date.now()}`;
  const joined = await post(`${gradioUrl}/gradio_api/queue/join`,
    JSON.stringify({ data: ['Hello', [], '', 0, 1, 4], fn_index: 1, session_hash: session }));
  if (joined.status !== 200 || typeof joined.json?.event_id !== 'string') {
    check(false, `gradio: ${what}: join answers 200 with an event_id (got ${joined.status}: ${joined.text.slice(0, 200)})`);
    return;
  }
  let completed = null;
  try {
    const res = await fetch(`${gradioUrl}/gradio_api/queue/data?session_hash=${session}`, { signal: AbortSignal.timeout(60_000) });
    const decoder = new TextDecoder();
    let buffered = '';
    for await (const chunk of res.body) {
      buffered += decoder.decode(chunk, { stream: true });
      let end;
      while (!completed && (end = buffered.indexOf('\n\n')) >= 0) {
        const event = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        const data = event.startsWith('data: ') ? JSON.parse(event.slice(6)) : null;
        if (data?.msg === 'process_completed') completed = data;
      }
      if (completed) break;
    }
  } catch (e) {
    completed = { error: String(e) };
  }
  check(completed?.success === true && typeof completed?.output?.data?.[0] === 'string',
        `gradio: ${what}: an ordinary /chat call completes (got ${JSON.stringify(completed)?.slice(0, 200)})`);
}

async function join(body) { return post(`${gradioUrl}/gradio_api/queue/join`, body); }

await ordinaryGradioCall('before the bombs');
const gradioBaseline = memory(gradioPid);
const gradioBombs = [
  ['data[0] (the message)', `{"data":[${bomb}],"fn_index":1,"session_hash":"b1"}`, '75,002'],
  ['history[0].content', `{"data":["Hi",[{"role":"user","content":${bomb}}]],"fn_index":1,"session_hash":"b1"}`, '75,004'],
  ['a history pair', `{"data":["Hi",[[${bomb},"x"]]],"fn_index":1,"session_hash":"b1"}`, '75,004'],
  ['fn_index', `{"data":["Hi"],"fn_index":${bomb},"session_hash":"b1"}`, '75,001'],
  ['data itself', `{"data":${bomb},"fn_index":1,"session_hash":"b1"}`, '75,001'],
  ['session_hash', `{"data":["Hi"],"fn_index":1,"session_hash":${bomb}}`, '75,001'],
];
for (const [what, body, depth] of gradioBombs) {
  const r = await join(body);
  check(r.status === 422 && (r.json?.detail ?? '').includes(`nests arrays and objects ${depth} deep`),
        `gradio: queue/join with ${what} nested 75,000 deep: 422 naming the depth (got ${r.status}: ${r.text.slice(0, 160)})`);
}
{
  // Nested lists within the depth limit are not a content shape; the walk does not descend into them.
  const r = await join('{"data":[[["Hi"]]],"fn_index":1,"session_hash":"b1"}');
  check(r.status === 422 && /data\[0\] \(message\)/.test(r.json?.detail ?? ''),
        `gradio: a message as a list inside a list: 422 (got ${r.status}: ${r.text.slice(0, 160)})`);
}
{
  const r = await post(`${gradioUrl}/api/chat`, `{"messages":[{"role":"user","content":${bomb}}]}`);
  check(r.status === 400 && /75,003 deep/.test(r.json?.error?.message ?? ''),
        `gradio: /api/chat with content nested 75,000 deep: 400 (got ${r.status}: ${r.text.slice(0, 160)})`);
  const cancel = await post(`${gradioUrl}/gradio_api/cancel`, `{"event_id":${bomb}}`);
  check(cancel.status === 200, `gradio: /cancel with a 75,000-deep event_id cancels nothing and answers 200 (got ${cancel.status})`);
}
{
  const body = empty_arrays('{"data":["Hi"],"fn_index":1,"session_hash":"b2",');
  const before = memory(gradioPid);
  const r = await join(body);
  const after = memory(gradioPid);
  check(r.status === 413 && /once parsed/.test(r.json?.detail ?? ''),
        `gradio: ${body.length.toLocaleString('en')} bytes of empty arrays to queue/join: 413 (got ${r.status}: ${r.text.slice(0, 240)})`);
  console.log(`  gradio peak RSS ${before.peak.toFixed(1)} -> ${after.peak.toFixed(1)} MB for that body`);
}
await ordinaryGradioCall('after the bombs');
{
  const end = memory(gradioPid);
  const growth = end.peak - gradioBaseline.peak;
  check(growth < maxGrowthMb, `gradio: peak RSS grew ${growth.toFixed(1)} MB over all bombs (${gradioBaseline.peak.toFixed(1)} -> ${end.peak.toFixed(1)} MB; limit ${maxGrowthMb}); RSS now ${end.rss.toFixed(1)} MB`);
}

console.log(failures === 0 ? 'all checks passed' : `${failures} checks failed`);
process.exit(failures === 0 ? 0 : 1);
