// Load and disconnects on loopback, with node's own http module so that every
// stream has its own connection and nothing is pooled or retried:
//  - 1,000 concurrent streaming requests: none lost or truncated; afterwards
//    no KV block is held and no connection but the scraper's is open;
//  - 100 clients killed mid-stream (a child process, SIGKILL): the engine
//    cancels exactly those 100 requests and frees their blocks.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { URL_BASE, metrics, raw, served_model, waitForMetrics } from './common.mjs';
import { complete_by_length, stream as stream_on } from './stream_client.mjs';

const MODEL = await served_model();
const SESSION_LEN = (await raw('/v1/models')).json.data[0].max_model_len;
const { hostname, port } = new URL(URL_BASE);

const stream = (body, timeoutMs) => stream_on({ hostname, port, body, timeoutMs });

test('1,000 concurrent streaming requests: none lost or truncated, nothing held afterwards', async () => {
  const N = 1000, MAX_TOKENS = 4;
  const before = await metrics();
  const started = Date.now();
  const results = await Promise.all(Array.from({ length: N }, (_, i) => stream({
    model: MODEL, prompt: `Load test request ${i}:`, max_tokens: MAX_TOKENS, temperature: 0.8, seed: i,
    ignore_eos: true, stream: true, stream_options: { include_usage: true },
  }, 150_000)));
  const seconds = (Date.now() - started) / 1000;
  const bad = results.map((r, i) => ({ i, ...r })).filter((r) => !complete_by_length(r, MAX_TOKENS));
  assert.equal(bad.length, 0, `${bad.length} of ${N} streams lost or truncated; first: ${JSON.stringify(bad[0])}`);
  const after = await waitForMetrics((m) => m.hostrun_kv_blocks_used === 0 && m.hostrun_requests_running === 0 &&
    m.hostrun_requests_waiting === 0 && m.hostrun_http_open_connections === 1, 10_000);
  assert.equal(after.hostrun_kv_blocks_used, 0, 'KV blocks still held');
  assert.equal(after.hostrun_requests_running, 0);
  assert.equal(after.hostrun_http_open_connections, 1, 'open connections besides this scrape');
  assert.equal(after.hostrun_requests_finished_total - before.hostrun_requests_finished_total, N);
  const ttft = after.hostrun_time_to_first_token_seconds_sum - before.hostrun_time_to_first_token_seconds_sum;
  const ttftCount = after.hostrun_time_to_first_token_seconds_count - before.hostrun_time_to_first_token_seconds_count;
  console.log(`1000 concurrent streams x ${MAX_TOKENS} tokens: ${seconds.toFixed(2)} s, ` +
    `${(N * MAX_TOKENS / seconds).toFixed(0)} tokens/s, mean TTFT ${(ttft / ttftCount * 1000).toFixed(0)} ms`);
});

test('100 clients killed mid-stream: 100 cancelled requests, blocks freed', async () => {
  const N = 100;
  const before = await metrics();
  // Long replies, so that none can finish before the kill.
  const maxTokens = Math.min(4000, SESSION_LEN - 64);
  const child = spawn(process.execPath, ['--input-type=module', '-e', `
    import http from 'node:http';
    let ready = 0;
    for (let i = 0; i < ${N}; i++) {
      const req = http.request({ hostname: '${hostname}', port: ${port}, path: '/v1/completions', method: 'POST', agent: false,
        headers: { 'content-type': 'application/json' } }, (res) => {
        let counted = false;
        res.on('data', () => { if (!counted) { counted = true; if (++ready === ${N}) console.log('ready'); } });
      });
      req.on('error', () => {});
      req.end(JSON.stringify({ model: ${JSON.stringify(MODEL)}, prompt: 'Disconnect test ' + i, max_tokens: ${maxTokens},
        ignore_eos: true, stream: true }));
    }
    setTimeout(() => process.exit(3), 60000);
  `], { stdio: ['ignore', 'pipe', 'inherit'] });
  const ready = await new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), 60_000);
    child.stdout.on('data', (d) => { if (String(d).includes('ready')) { clearTimeout(timer); resolve(true); } });
    child.on('exit', () => { clearTimeout(timer); resolve(false); });
  });
  assert.ok(ready, 'the 100 clients did not all start streaming within 60 s');
  const midstream = await metrics();
  assert.ok(midstream.hostrun_requests_running + midstream.hostrun_requests_waiting >= N, 'the streams should still be running at the kill');
  const killedAt = Date.now();
  child.kill('SIGKILL');
  const after = await waitForMetrics((m) => m.hostrun_requests_cancelled_total - before.hostrun_requests_cancelled_total >= N &&
    m.hostrun_kv_blocks_used === 0 && m.hostrun_http_open_connections === 1, 10_000);
  const cancelled = after.hostrun_requests_cancelled_total - before.hostrun_requests_cancelled_total;
  console.log(`100 killed clients: ${cancelled} cancelled in ${Date.now() - killedAt} ms; KV blocks used ${after.hostrun_kv_blocks_used}`);
  assert.equal(cancelled, N);
  assert.equal(after.hostrun_api_disconnect_cancels_total - before.hostrun_api_disconnect_cancels_total, N);
  assert.equal(after.hostrun_kv_blocks_used, 0);
  assert.equal(after.hostrun_requests_running, 0);
  assert.equal(after.hostrun_http_open_connections, 1);
});
