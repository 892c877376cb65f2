// Load under attack (issue 19): an api_server carries STREAMS concurrent
// streaming completions, each on its own connection; a third of the clients
// are killed mid-stream (a child process holding their connections is
// SIGKILLed), and while all that runs, hostile requests arrive on other
// connections: JSON nested 75,000 deep in several fields, a 16 MiB body of
// empty arrays, and request-smuggling framings on raw sockets (the payloads of
// tests/adversarial/payloads.mjs). It checks and reports:
//   - the server stayed up: its pid alive and /health answering 200 all along;
//   - every surviving stream got 200, its tokens, finish_reason "length",
//     usage.completion_tokens and [DONE];
//   - every attack got its 4xx (the framings a 400 and a closed connection,
//     the request hidden in their bodies never answered) and reached no engine;
//   - afterwards /metrics: no KV block used, nothing running or waiting, one
//     open connection (the scrape), requests_cancelled_total and the
//     disconnect cancels up by exactly the number killed;
//   - the server's peak and current RSS before and after.
// scripts/bench-serving-under-attack.sh starts the server and runs this.
//   node bench-serving-under-attack.mjs URL SERVER_PID [--streams N] [--max-tokens N] [--json FILE] [--no-attacks]
// Exit status 0 when every check passed. No npm packages.
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exchange } from '../tests/adversarial/http_wire.mjs';
import { deep, empty_arrays, framing_cases, smuggled_path } from '../tests/adversarial/payloads.mjs';
import { complete_by_length, stream } from '../tests/serving/stream_client.mjs';
import { parse_metrics } from '../tests/serving/metrics_text.mjs';

function option(args, name, fallback) {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : fallback;
}

// Peak (VmHWM) and current (VmRSS) resident set of a process, in MiB.
function memory(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key) => Number(status.match(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm'))[1]);
  return { peak_mib: kb('VmHWM') / 1024, rss_mib: kb('VmRSS') / 1024 };
}

function commit() {
  try {
    return execFileSync('git', ['-C', dirname(fileURLToPath(import.meta.url)), 'rev-parse', '--short', 'HEAD']).toString().trim();
  } catch {
    return null;
  }
}

function alive(pid) {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

// One request on a connection of its own, closed after the answer (fetch would
// keep it open in a pool, and the check that no connection is left open
// afterwards would count it). Resolves with { status, text }; rejects on a
// network error or after `timeoutMs`.
function http_request(url, { method = 'GET', body, timeoutMs = 10_000 } = {}) {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'content-type': 'application/json' };
    const req = http.request(url, { method, agent: false, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, text }));
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}
const get = (url, timeoutMs) => http_request(url, { timeoutMs });

// /metrics as { 'name{labels}': value }.
async function metrics(url) {
  const { status, text } = await get(`${url}/metrics`);
  if (status !== 200) throw new Error(`/metrics answered ${status}`);
  return parse_metrics(text);
}

async function wait_for_metrics(url, predicate, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let m = await metrics(url);
  while (!predicate(m) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    m = await metrics(url);
  }
  return m;
}

async function post(url, path, body) {
  try {
    const { status, text } = await http_request(url + path, { method: 'POST', body, timeoutMs: 120_000 });
    let json = null;
    try { json = JSON.parse(text); } catch { /* not JSON */ }
    return { status, text, json };
  } catch (e) {
    return { status: 0, text: String(e), json: null };
  }
}

// The doomed clients: `node THIS --doomed URL COUNT BODY_JSON` opens COUNT
// streams, prints "ready" once every one has received data, and waits to be
// killed. Run as a child so that SIGKILL drops its connections the way a
// crashed client's kernel does.
function run_doomed([url, count, body_json]) {
  const { hostname, port } = new URL(url);
  const body = JSON.parse(body_json);
  let streaming = 0;
  for (let i = 0; i < Number(count); i++) {
    stream({ hostname, port, body: { ...body, prompt: `${body.prompt} ${i}` }, timeoutMs: 3_600_000,
             onFirstData: () => { if (++streaming === Number(count)) console.log('ready'); } })
      .then((r) => console.log(`ended ${JSON.stringify(r).slice(0, 300)}`));  // none should end before the kill
  }
  setInterval(() => {}, 1 << 30);  // stay until killed
}

async function main() {
  const args = process.argv.slice(2);
  const [url, pid_text] = args;
  const pid = Number(pid_text);
  const N = Number(option(args, '--streams', 1000));
  const KILLED = Math.floor(N / 3);
  const SURVIVORS = N - KILLED;
  const MAX_TOKENS = Number(option(args, '--max-tokens', 4));
  const json_out = option(args, '--json', null);
  // The same load without the attacks: what the load alone costs (peak RSS, times), to compare.
  const with_attacks = !args.includes('--no-attacks');
  const { hostname, port, host } = new URL(url);
  const checks = [];
  const check = (condition, what) => {
    checks.push({ ok: Boolean(condition), what });
    console.log(`${condition ? 'ok' : 'FAIL'}: ${what}`);
    return condition;
  };
  const started = Date.now();
  const at = () => (Date.now() - started) / 1000;

  const models = JSON.parse((await get(`${url}/v1/models`)).text);
  const model = models.data[0].id, session_len = models.data[0].max_model_len;
  const before = await metrics(url);
  const memory_before = memory(pid);

  // --- the server is watched all along: its pid, and /health every 250 ms ---
  const health = { probes: 0, failures: [], max_ms: 0, pid_gone_at: null };
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      if (!alive(pid) && health.pid_gone_at === null) health.pid_gone_at = at();
      const t0 = Date.now();
      try {
        const r = await get(`${url}/health`, 30_000);
        if (r.status !== 200) health.failures.push(`${at().toFixed(1)} s: ${r.status}`);
      } catch (e) {
        health.failures.push(`${at().toFixed(1)} s: ${e}`);
      }
      health.probes++;
      health.max_ms = Math.max(health.max_ms, Date.now() - t0);
      await new Promise((r) => setTimeout(r, 250));
    }
  })();

  // --- a third of the clients, mid-stream on long replies, in a child ------
  const doomed_body = { model, prompt: 'Killed mid-stream', max_tokens: Math.min(4000, session_len - 64),
                        ignore_eos: true, stream: true };
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--doomed', url, String(KILLED),
                                         JSON.stringify(doomed_body)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let child_output = '';
  const doomed_ready = new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), 300_000);
    child.stdout.on('data', (d) => {
      child_output += d;
      if (child_output.includes('ready')) { clearTimeout(timer); resolve(true); }
    });
    child.on('exit', () => { clearTimeout(timer); resolve(false); });
  });
  const ready = await doomed_ready;
  const doomed_ready_s = at();
  check(ready, `the ${KILLED} clients to be killed all streaming (${doomed_ready_s.toFixed(1)} s)`);

  // --- the survivors: one connection each, short replies --------------------
  let survivors_streaming = 0;
  let all_streaming;
  const all_streaming_promise = new Promise((resolve) => { all_streaming = resolve; });
  const survivor_results = Promise.all(Array.from({ length: SURVIVORS }, (_, i) => stream({
    hostname, port, timeoutMs: 600_000,
    body: { model, prompt: `Survivor ${i}:`, max_tokens: MAX_TOKENS, temperature: 0.8, seed: i, ignore_eos: true,
            stream: true, stream_options: { include_usage: true } },
    onFirstData: () => { if (++survivors_streaming === SURVIVORS) all_streaming(); },
  })));

  // --- the attacks, round after round while the streams run ----------------
  const bomb = deep(75_000);
  const hello = '"messages":[{"role":"user","content":"Hello"}]';
  const json_attacks = [
    ['chat: messages 75,000 deep', '/v1/chat/completions', `{"messages":${bomb}}`, 400, /75,001 deep/],
    ['chat: max_tokens 75,000 deep', '/v1/chat/completions', `{${hello},"max_tokens":${bomb}}`, 400, /75,001 deep/],
    ['chat: stop 75,000 deep', '/v1/chat/completions', `{${hello},"stop":${bomb}}`, 400, /75,001 deep/],
    ['completion: prompt 75,000 deep', '/v1/completions', `{"prompt":${bomb}}`, 400, /75,001 deep/],
    ['completion: logprobs 75,000 deep', '/v1/completions', `{"prompt":"Hi","logprobs":${bomb}}`, 400, /75,001 deep/],
    ['chat: 16 MiB of empty arrays', '/v1/chat/completions', empty_arrays(`{${hello},`), 413, /once parsed/],
  ];
  const framings = framing_cases({ host, post_path: '/v1/completions', ok_path: '/health' });
  const attacks = { rounds: 0, sent: 0, failures: [], by_status: {} };
  const count = (status) => { attacks.by_status[status] = (attacks.by_status[status] ?? 0) + 1; };
  let attacking = with_attacks;
  const attacker = (async () => {
    while (attacking) {
      // Each round sends everything at once, each on its own connection.
      await Promise.all([
        ...json_attacks.map(async ([what, path, body, status, message]) => {
          const r = await post(url, path, body);
          attacks.sent++; count(r.status);
          if (!(r.status === status && message.test(r.json?.error?.message ?? '')))
            attacks.failures.push(`${what}: expected ${status}, got ${r.status}: ${r.text.slice(0, 160)}`);
        }),
        ...framings.map(async ([what, bytes, names]) => {
          const { text, closed, statuses } = await exchange(url, bytes, { wait_ms: 60_000 });
          attacks.sent++; count(statuses[0] ?? 0);
          const body = text.slice(text.indexOf('\r\n\r\n') + 4);
          if (!(statuses.length === 1 && statuses[0] === 400 && closed && names.test(body)))
            attacks.failures.push(`${what}: expected one 400 and a close, got [${statuses}], ${closed ? 'closed' : 'open'}`);
          if (text.includes(smuggled_path)) attacks.failures.push(`${what}: the hidden request was answered`);
        }),
      ]);
      attacks.rounds++;
    }
  })();

  // --- the kill: once all N stream (the attacks have begun meanwhile) -------
  await Promise.race([all_streaming_promise, new Promise((r) => setTimeout(r, 600_000))]);
  const all_streaming_s = at();
  const midstream = await metrics(url);
  check(survivors_streaming === SURVIVORS && midstream.hostrun_requests_running === N,
        `all ${N} streams running at once before the kill (${survivors_streaming} survivors streaming, ` +
        `${midstream.hostrun_requests_running} running, ${midstream.hostrun_requests_waiting} waiting, ` +
        `${all_streaming_s.toFixed(1)} s)`);
  child.kill('SIGKILL');
  const killed_at = Date.now();
  // Two times: until the server has seen every disconnect and asked the
  // engine to cancel, and until the engine has cancelled them all (at its next
  // step boundary, after the step under way).
  const noticed_all = wait_for_metrics(url, (m) =>
    m.hostrun_api_disconnect_cancels_total - before.hostrun_api_disconnect_cancels_total >= KILLED, 60_000)
    .then((m) => ({ ms: Date.now() - killed_at,
                    all: m.hostrun_api_disconnect_cancels_total - before.hostrun_api_disconnect_cancels_total >= KILLED }));
  const cancelled_all = wait_for_metrics(url, (m) =>
    m.hostrun_requests_cancelled_total - before.hostrun_requests_cancelled_total >= KILLED, 60_000)
    .then((m) => ({ ms: Date.now() - killed_at,
                    all: m.hostrun_requests_cancelled_total - before.hostrun_requests_cancelled_total >= KILLED }));

  const results = await survivor_results;
  const survivors_done_s = at();
  const rounds_during_load = attacks.rounds;
  attacking = false;  // the round under way finishes
  await attacker;
  const cancel = await cancelled_all;
  const noticed = await noticed_all;

  // --- afterwards -----------------------------------------------------------
  const after = await wait_for_metrics(url, (m) => m.hostrun_kv_blocks_used === 0 && m.hostrun_requests_running === 0 &&
    m.hostrun_requests_waiting === 0 && m.hostrun_http_open_connections === 1, 30_000);
  watching = false;
  await watcher;
  const memory_after = memory(pid);
  const delta = (name) => (after[name] ?? 0) - (before[name] ?? 0);

  const bad = results.map((r, i) => ({ i, ...r })).filter((r) => !complete_by_length(r, MAX_TOKENS));
  check(bad.length === 0, `every one of the ${SURVIVORS} surviving streams got 200, ${MAX_TOKENS} tokens, ` +
        `finish_reason length, its usage and [DONE] (${bad.length} did not` +
        `${bad.length ? `; first: ${JSON.stringify(bad[0]).slice(0, 300)}` : ''})`);
  check(!child_output.includes('ended'), `no killed client's stream ended before the kill`);
  if (with_attacks) {
    check(rounds_during_load >= 1 && attacks.failures.length === 0,
          `${attacks.sent} attacks in ${attacks.rounds} rounds (${rounds_during_load} done before the survivors were) each got its 4xx ` +
          `(${JSON.stringify(attacks.by_status)}), no hidden request answered` +
          `${attacks.failures.length ? `; ${attacks.failures.length} wrong, first: ${attacks.failures[0]}` : ''}`);
    const deep_sent = attacks.rounds * (json_attacks.length - 1);
    check(delta('hostrun_http_errors_total{status="400"}') === deep_sent &&
          delta('hostrun_http_errors_total{status="413"}') === attacks.rounds,
          `the server counted ${delta('hostrun_http_errors_total{status="400"}')} deep-JSON 400s (sent ${deep_sent}) and ` +
          `${delta('hostrun_http_errors_total{status="413"}')} 413s (sent ${attacks.rounds})`);
  } else {
    console.log('no attacks sent (--no-attacks)');
  }
  check(health.pid_gone_at === null && alive(pid), `the server process ${pid} was alive throughout`);
  check(health.failures.length === 0, `/health answered 200 to all ${health.probes} probes ` +
        `(slowest ${health.max_ms} ms${health.failures.length ? `; failures: ${health.failures.slice(0, 3)}` : ''})`);
  check(delta('hostrun_requests_cancelled_total') === KILLED,
        `requests_cancelled_total rose by exactly ${KILLED} (${delta('hostrun_requests_cancelled_total')}; ` +
        `${cancel.all ? `all within ${cancel.ms} ms` : `not all within ${cancel.ms} ms`} of the kill)`);
  check(delta('hostrun_api_disconnect_cancels_total') === KILLED,
        `api_disconnect_cancels_total rose by ${delta('hostrun_api_disconnect_cancels_total')} ` +
        `(${noticed.all ? `all within ${noticed.ms} ms` : `not all within ${noticed.ms} ms`} of the kill)`);
  check(delta('hostrun_requests_submitted_total') === N && delta('hostrun_requests_finished_total') === N,
        `the engine saw exactly the ${N} streams (submitted +${delta('hostrun_requests_submitted_total')}, ` +
        `finished +${delta('hostrun_requests_finished_total')})${with_attacks ? ': no attack reached it' : ''}`);
  check(after.hostrun_kv_blocks_used === 0 && after.hostrun_requests_running === 0 && after.hostrun_requests_waiting === 0,
        `afterwards: KV blocks used ${after.hostrun_kv_blocks_used}, running ${after.hostrun_requests_running}, ` +
        `waiting ${after.hostrun_requests_waiting}`);
  check(after.hostrun_http_open_connections === 1,
        `afterwards: ${after.hostrun_http_open_connections} open connection(s) (the scrape itself)`);
  console.log(`server RSS: peak ${memory_before.peak_mib.toFixed(1)} -> ${memory_after.peak_mib.toFixed(1)} MiB, ` +
              `current ${memory_before.rss_mib.toFixed(1)} -> ${memory_after.rss_mib.toFixed(1)} MiB`);

  const failed = checks.filter((c) => !c.ok).length;
  const summary = {
    passed: failed === 0,
    checks_failed: failed,
    commit: commit(),
    machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version },
    streams: N, killed: KILLED, survivors: SURVIVORS, max_tokens: MAX_TOKENS, killed_max_tokens: doomed_body.max_tokens,
    seconds: { killed_all_streaming: doomed_ready_s, all_streaming: all_streaming_s, survivors_done: survivors_done_s,
               total: at() },
    survivors_complete: SURVIVORS - bad.length,
    survivors_lost: bad.length,
    disconnects_seen_ms_after_kill: noticed.all ? noticed.ms : null,
    cancel_ms_after_kill: cancel.all ? cancel.ms : null,
    attacks: with_attacks && { rounds: attacks.rounds, rounds_done_during_load: rounds_during_load, sent: attacks.sent, by_status: attacks.by_status, wrong: attacks.failures.length,
               kinds: { deep_json: json_attacks.length - 1, empty_arrays_16mib: 1, framings: framings.length } },
    health: { probes: health.probes, failures: health.failures.length, slowest_ms: health.max_ms,
              server_alive: health.pid_gone_at === null && alive(pid) },
    metrics_delta: Object.fromEntries(['hostrun_requests_submitted_total', 'hostrun_requests_finished_total',
      'hostrun_requests_cancelled_total', 'hostrun_api_disconnect_cancels_total', 'hostrun_generation_tokens_total',
      'hostrun_http_errors_total{status="400"}', 'hostrun_http_errors_total{status="413"}']
      .map((name) => [name, delta(name)])),
    metrics_after: { kv_blocks_used: after.hostrun_kv_blocks_used, requests_running: after.hostrun_requests_running,
                     requests_waiting: after.hostrun_requests_waiting, open_connections: after.hostrun_http_open_connections },
    server_rss_mib: { peak_before: memory_before.peak_mib, peak_after: memory_after.peak_mib,
                      rss_before: memory_before.rss_mib, rss_after: memory_after.rss_mib },
    checks,
  };
  console.log(JSON.stringify(summary, (k, v) => (k === 'checks' ? undefined : v), 2));
  if (json_out) {
    mkdirSync(dirname(json_out), { recursive: true });
    writeFileSync(json_out, JSON.stringify(summary, null, 2) + '\n');
  }
  console.log(failed === 0 ? 'all checks passed' : `${failed} checks failed`);
  process.exit(failed === 0 ? 0 : 1);
}

if (process.argv[2] === '--doomed') run_doomed(process.argv.slice(3));
else await main();
