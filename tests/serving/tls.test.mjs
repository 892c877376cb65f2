// `serve api_server --ssl-certfile --ssl-keyfile` through the official openai
// client, trusting the test's own CA through NODE_EXTRA_CA_CERTS (tls.sh
// makes it): chat streamed and not, by name and by address; plain HTTP to the
// TLS port; clients that connect and never handshake; hang-ups mid-answer
// cancelling generation; and the Gradio bridge serving HTTPS over the same
// server as a remote https:// engine.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import OpenAI from 'openai';
import { parse_metrics } from './metrics_text.mjs';

const API = process.env.HOSTRUN_TLS_URL;        // https://localhost:PORT
const GRADIO = process.env.HOSTRUN_GRADIO_URL;  // https://localhost:PORT
if (!/^https:\/\/localhost:\d+$/.test(API || '') || !/^https:\/\/localhost:\d+$/.test(GRADIO || ''))
  throw new Error(`HOSTRUN_TLS_URL and HOSTRUN_GRADIO_URL must be https://localhost:PORT, got '${API}', '${GRADIO}'`);
const port = Number(new URL(API).port);

const client = (base = API) => new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
const chat = { model: 'tiny', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 6, temperature: 0, seed: 1 };

async function metrics() {
  const text = await (await fetch(`${API}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  return parse_metrics(text);
}

async function waitFor(predicate, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  let m = await metrics();
  while (!predicate(m) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    m = await metrics();
  }
  return m;
}

test('chat over TLS, not streamed and streamed, the same text', async () => {
  const reply = await client().chat.completions.create(chat);
  assert.equal(reply.object, 'chat.completion');
  assert.equal(reply.usage.completion_tokens, 6);
  let streamed = '';
  let finish = null;
  for await (const chunk of await client().chat.completions.create({ ...chat, stream: true })) {
    streamed += chunk.choices[0]?.delta?.content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(streamed, reply.choices[0].message.content);
  assert.equal(finish, 'length');
});

test('the certificate names 127.0.0.1 too', async () => {
  const models = await client(`https://127.0.0.1:${port}`).models.list();
  assert.equal(models.data[0].id, 'tiny');
});

test('plain HTTP to the TLS port gets a 400 saying to use https, and the server goes on', async () => {
  const res = await fetch(`http://127.0.0.1:${port}/v1/models`, { signal: AbortSignal.timeout(10_000) });
  assert.equal(res.status, 400);
  const body = await res.json();
  assert.match(body.error.message, /this port speaks HTTPS: use an https:\/\/ URL/);
  assert.equal((await client().models.list()).data[0].id, 'tiny');
});

test('clients that connect and never handshake, or send junk, do not hold up others', async () => {
  const silent = [];
  for (let i = 0; i < 8; ++i) {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => {});
    silent.push(socket);
  }
  // A handshake record holding a message type TLS does not have.
  const junk = net.connect(port, '127.0.0.1', () => junk.write(Buffer.from([0x16, 3, 1, 0, 5, 0xff, 0, 0, 1, 0])));
  junk.on('error', () => {});
  junk.resume();  // read the server's alert, so that its close is seen
  const closed = new Promise((resolve) => junk.on('close', resolve));
  await Promise.all(silent.map((s) => new Promise((resolve) => s.on('connect', resolve))));
  const started = Date.now();
  const reply = await client().chat.completions.create(chat);
  assert.equal(reply.usage.completion_tokens, 6);
  assert.ok(Date.now() - started < 30_000);
  // The handshake fails at once and the connection closes.
  await Promise.race([closed, new Promise((_, reject) => setTimeout(() => reject(new Error('junk kept open')), 10_000))]);
  for (const s of silent) assert.ok(!s.destroyed, 'a silent client is closed only at the idle timeout');
  for (const s of silent) s.destroy();
});

test('a TLS client that goes away mid-answer gets its generation cancelled, streamed or not', async () => {
  const before = await metrics();
  const cancels = before.hostrun_api_disconnect_cancels_total;
  const long = { ...chat, max_tokens: 4000, ignore_eos: true };

  const controller = new AbortController();
  const stream = await client().chat.completions.create({ ...long, stream: true }, { signal: controller.signal });
  // The openai client ends an aborted stream's iteration quietly.
  let chunks = 0;
  for await (const chunk of stream) {
    if (++chunks < 3) continue;
    controller.abort();
    break;
  }
  assert.equal(chunks, 3);
  let m = await waitFor((x) => x.hostrun_api_disconnect_cancels_total >= cancels + 1);
  assert.equal(m.hostrun_api_disconnect_cancels_total, cancels + 1, 'the stream was cancelled when its client left');

  // Not streamed: nothing is written until the end, so only watching the connection can tell.
  await assert.rejects(client().chat.completions.create(long, { signal: AbortSignal.timeout(1_000) }));
  m = await waitFor((x) => x.hostrun_api_disconnect_cancels_total >= cancels + 2 &&
                           x.hostrun_api_engine_requests_in_flight === 0);
  assert.equal(m.hostrun_api_disconnect_cancels_total, cancels + 2, 'the pending answer was cancelled when its client left');
  assert.equal(m.hostrun_api_engine_requests_in_flight, 0);
});

test('the Gradio bridge serves HTTPS and reaches the server over https://', async () => {
  const config = await fetch(`${GRADIO}/config`, { signal: AbortSignal.timeout(10_000) });
  assert.equal(config.status, 200);
  const info = await (await fetch(`${GRADIO}/api/info`, { signal: AbortSignal.timeout(10_000) })).json();
  assert.equal(info.model, 'tiny');
  assert.equal(info.remote, true);
  const res = await fetch(`${GRADIO}/api/chat`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4 }),
    signal: AbortSignal.timeout(60_000),
  });
  assert.equal(res.status, 200);
  const events = await res.text();
  assert.match(events, /"finish"/);
  assert.doesNotMatch(events, /"error"/);
});
