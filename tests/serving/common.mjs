// Shared by the serving tests: the server's address, an openai client, raw
// HTTP, /metrics parsing and the tokenizer oracle (`hostrun tokenize`).
import { execFileSync } from 'node:child_process';
import OpenAI from 'openai';
import { parse_metrics } from './metrics_text.mjs';

export const URL_BASE = process.env.HOSTRUN_URL;
if (!URL_BASE || !/^http:\/\/127\.0\.0\.1:\d+$/.test(URL_BASE))
  throw new Error(`HOSTRUN_URL must be a loopback URL, got '${URL_BASE}'`);
export const API_KEY = process.env.HOSTRUN_API_KEY || 'unused';

export function client(options = {}) {
  return new OpenAI({ baseURL: `${URL_BASE}/v1`, apiKey: API_KEY, maxRetries: 0, timeout: 60_000, ...options });
}

// fetch with a deadline; returns { status, headers, json, text }.
export async function raw(path, { method = 'GET', body, headers = {}, auth = true, timeoutMs = 30_000 } = {}) {
  const h = { ...headers };
  if (auth && API_KEY !== 'unused') h.authorization = `Bearer ${API_KEY}`;
  if (body !== undefined && !h['content-type']) h['content-type'] = 'application/json';
  const res = await fetch(`${URL_BASE}${path}`, {
    method, headers: h, body: typeof body === 'string' || body === undefined ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, json, text };
}

// The samples of /metrics as { 'name{labels}': value }.
export async function metrics() {
  const { status, text } = await raw('/metrics', { auth: false });
  if (status !== 200) throw new Error(`/metrics answered ${status}`);
  return parse_metrics(text);
}

// Polls /metrics until `predicate(m)` holds; returns the last sample set.
export async function waitForMetrics(predicate, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  let m = await metrics();
  while (!predicate(m) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    m = await metrics();
  }
  return m;
}

// Token ids as the server's tokenizer makes them: `hostrun tokenize`.
export function tokenize(text, { chat = false } = {}) {
  const args = ['tokenize', process.env.HOSTRUN_MODEL_DIR];
  if (chat) args.push('--chat');
  const out = execFileSync(process.env.HOSTRUN_BIN, args, { input: text, timeout: 30_000 }).toString();
  return JSON.parse(out);
}

export async function served_model() {
  const { json } = await raw('/v1/models');
  return json.data[0].id;
}
