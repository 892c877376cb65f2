// The OpenAI API of `hostrun serve api_server`, driven by the official openai
// package (and raw HTTP where a client library would refuse to send the
// mistake). The server runs the tiny random-weight model, so replies are
// gibberish; what is checked is the protocol: shapes, counts, finish reasons,
// determinism, errors.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';
import { API_KEY, URL_BASE, client, metrics, raw, served_model, tokenize } from './common.mjs';

const openai = client();
const MODEL = await served_model();
const SESSION_LEN = (await raw('/v1/models')).json.data[0].max_model_len;
const hello = [{ role: 'user', content: 'Say hello in one word.' }];

async function expectApiError(promise, status, type, extra = {}) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIError, `expected an APIError, got ${e}`);
    assert.equal(e.status, status, `status (message: ${e.message})`);
    assert.equal(e.error?.type, type, `error type (message: ${e.message})`);
    for (const [k, v] of Object.entries(extra)) assert.equal(e.error?.[k], v, `error.${k}`);
    assert.equal(typeof e.error?.message, 'string');
    return e;
  }
  assert.fail(`expected HTTP ${status} ${type}, but the request succeeded`);
}

test('GET /v1/models lists the served model', async () => {
  const list = await openai.models.list();
  assert.equal(list.data.length, 1);
  assert.equal(list.data[0].id, MODEL);
  assert.equal(list.data[0].object, 'model');
});

test('non-streaming chat: shape, finish_reason length, usage equals the tokenizer count', async () => {
  const r = await openai.chat.completions.create({
    model: MODEL, messages: hello, max_tokens: 8, temperature: 0, ignore_eos: true,
  });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.model, MODEL);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.equal(r.choices[0].finish_reason, 'length');
  const ids = tokenize(JSON.stringify(hello), { chat: true });
  assert.equal(r.usage.prompt_tokens, ids.length, 'prompt_tokens == hostrun tokenize --chat');
  assert.equal(r.usage.completion_tokens, 8);
  assert.equal(r.usage.total_tokens, ids.length + 8);
});

test('streaming chat equals non-streaming; role first, finish last, usage chunk', async () => {
  const params = { model: MODEL, messages: hello, max_tokens: 12, temperature: 0, ignore_eos: true };
  const whole = await openai.chat.completions.create(params);
  const stream = await openai.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  let text = '', first = null, finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) { usage = chunk.usage; assert.equal(chunk.choices.length, 0); continue; }
    const c = chunk.choices[0];
    if (first === null) first = c.delta;
    text += c.delta.content ?? '';
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.equal(first.role, 'assistant');
  assert.equal(finish, 'length');
  assert.equal(text, whole.choices[0].message.content);
  assert.deepEqual(usage, whole.usage);
  assert.ok(chunks >= 3);
});

test('content as a list of text parts is the same as a string', async () => {
  const params = { model: MODEL, max_tokens: 6, temperature: 0 };
  const a = await openai.chat.completions.create({ ...params, messages: [{ role: 'user', content: 'Hi there' }] });
  const b = await openai.chat.completions.create({
    ...params, messages: [{ role: 'user', content: [{ type: 'text', text: 'Hi ' }, { type: 'text', text: 'there' }] }],
  });
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  assert.equal(a.usage.prompt_tokens, b.usage.prompt_tokens);
});

test('completions: usage equals the tokenizer count, echo, logprobs, prompt lists', async () => {
  const prompt = 'The capital of France is';
  const r = await openai.completions.create({ model: MODEL, prompt, max_tokens: 5, temperature: 0, ignore_eos: true, logprobs: 2 });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.prompt_tokens, tokenize(prompt).length, 'prompt_tokens == hostrun tokenize');
  assert.equal(r.usage.completion_tokens, 5);
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, 5);
  assert.equal(lp.token_logprobs.length, 5);
  assert.equal(lp.top_logprobs.length, 5);
  for (const top of lp.top_logprobs) assert.ok(Object.keys(top).length <= 2 && Object.keys(top).length >= 1);
  for (const x of lp.token_logprobs) assert.ok(x <= 0);
  assert.equal(lp.tokens.join(''), r.choices[0].text);

  const echoed = await openai.completions.create({ model: MODEL, prompt, max_tokens: 5, temperature: 0, ignore_eos: true, echo: true });
  assert.equal(echoed.choices[0].text, prompt + r.choices[0].text);

  const two = await openai.completions.create({ model: MODEL, prompt: [prompt, 'Once upon a time'], max_tokens: 3, temperature: 0, ignore_eos: true });
  assert.equal(two.choices.length, 2);
  assert.deepEqual(two.choices.map((c) => c.index), [0, 1]);
  assert.equal(two.usage.prompt_tokens, tokenize(prompt).length + tokenize('Once upon a time').length);
  assert.equal(two.usage.completion_tokens, 6);

  const ids = await openai.completions.create({ model: MODEL, prompt: tokenize(prompt), max_tokens: 5, temperature: 0, ignore_eos: true });
  assert.equal(ids.choices[0].text, r.choices[0].text, 'token ids and text prompts agree');
});

test('streaming completions concatenate to the non-streamed text', async () => {
  const params = { model: MODEL, prompt: 'One, two, three,', max_tokens: 10, temperature: 0, ignore_eos: true };
  const whole = await openai.completions.create(params);
  let text = '', finish = null, usage = null;
  for await (const chunk of await openai.completions.create({ ...params, stream: true, stream_options: { include_usage: true } })) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) { text += c.text; if (c.finish_reason) finish = c.finish_reason; }
  }
  assert.equal(text, whole.choices[0].text);
  assert.equal(finish, 'length');
  assert.deepEqual(usage, whole.usage);
});

test('stop strings end the reply before the stop text, finish_reason stop', async () => {
  const params = { model: MODEL, prompt: 'Tell me a story about a dragon.', max_tokens: 40, temperature: 0, ignore_eos: true };
  const full = (await openai.completions.create(params)).choices[0].text;
  // A stop string taken from the middle of the greedy reply: the reply must end right before its first occurrence.
  let stop = null;
  for (let k = 3; k + 2 <= full.length && !stop; k++) {
    const candidate = full.slice(k, k + 2);
    if (/^[\x21-\x7e]{2}$/.test(candidate) && full.indexOf(candidate) > 0) stop = candidate;
  }
  assert.ok(stop, `no usable stop string in ${JSON.stringify(full)}`);
  for (const form of [stop, [stop, 'never-appears-xyz']]) {
    const r = await openai.completions.create({ ...params, stop: form });
    assert.equal(r.choices[0].finish_reason, 'stop');
    assert.equal(r.choices[0].text, full.slice(0, full.indexOf(stop)), `stop ${JSON.stringify(form)}`);
  }
  // The same through streaming chat.
  const chatParams = { model: MODEL, messages: hello, max_tokens: 40, temperature: 0, ignore_eos: true };
  const chatFull = (await openai.chat.completions.create(chatParams)).choices[0].message.content;
  const chatStop = chatFull.slice(Math.floor(chatFull.length / 2), Math.floor(chatFull.length / 2) + 1);
  let text = '', finish = null;
  for await (const chunk of await openai.chat.completions.create({ ...chatParams, stop: chatStop, stream: true }))
    for (const c of chunk.choices) { text += c.delta.content ?? ''; if (c.finish_reason) finish = c.finish_reason; }
  assert.equal(finish, 'stop');
  assert.equal(text, chatFull.slice(0, chatFull.indexOf(chatStop)));
});

test('n > 1: n choices, summed usage, prompt counted once; streamed too', async () => {
  const r = await openai.chat.completions.create({ model: MODEL, messages: hello, n: 3, max_tokens: 6, temperature: 1, seed: 11, ignore_eos: true });
  assert.equal(r.choices.length, 3);
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
  assert.equal(r.usage.completion_tokens, 18);
  assert.equal(r.usage.prompt_tokens, tokenize(JSON.stringify(hello), { chat: true }).length);
  assert.ok(new Set(r.choices.map((c) => c.message.content)).size > 1, 'the choices should differ');
  const texts = ['', ''];
  const finishes = [null, null];
  for await (const chunk of await openai.chat.completions.create({ model: MODEL, messages: hello, n: 2, max_tokens: 5, temperature: 1, seed: 5, ignore_eos: true, stream: true }))
    for (const c of chunk.choices) { texts[c.index] += c.delta.content ?? ''; if (c.finish_reason) finishes[c.index] = c.finish_reason; }
  assert.deepEqual(finishes, ['length', 'length']);
});

test('a seed makes sampling reproducible', async () => {
  const params = { model: MODEL, messages: hello, max_tokens: 16, temperature: 1, top_p: 1, ignore_eos: true };
  const a = await openai.chat.completions.create({ ...params, seed: 1234 });
  const b = await openai.chat.completions.create({ ...params, seed: 1234 });
  const c = await openai.chat.completions.create({ ...params, seed: 4321 });
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  assert.notEqual(a.choices[0].message.content, c.choices[0].message.content);
});

test('chat logprobs: one entry per completion token, top_logprobs as asked', async () => {
  const r = await openai.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 5, temperature: 0, ignore_eos: true, logprobs: true, top_logprobs: 3 });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, r.usage.completion_tokens);
  for (const t of content) {
    assert.equal(typeof t.token, 'string');
    assert.ok(t.logprob <= 0);
    assert.equal(t.top_logprobs.length, 3);
    assert.ok(Array.isArray(t.bytes));
  }
});

test('sampling parameters in range are accepted', async () => {
  const r = await openai.chat.completions.create({
    model: MODEL, messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }, { role: 'user', content: 'Again' }],
    max_completion_tokens: 4, temperature: 0.7, top_p: 0.9, top_k: 20, min_p: 0.05, repetition_penalty: 1.1,
    presence_penalty: 0.5, frequency_penalty: 0.5, user: 'test-user', skip_special_tokens: false,
  });
  assert.ok(r.usage.completion_tokens <= 4);
});

test('errors: status, type and param for each kind of bad request', async () => {
  const bad = [
    [{ messages: 'hi' }, 400, 'messages'],
    [{ messages: [] }, 400, 'messages'],
    [{}, 400, 'messages'],
    [{ messages: [{ role: 'wizard', content: 'x' }] }, 400, 'messages[0].role'],
    [{ messages: [{ role: 'user' }] }, 400, 'messages[0].content'],
    [{ messages: [{ role: 'user', content: 42 }] }, 400, 'messages[0].content'],
    [{ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:,' } }] }] }, 400, 'messages[0].content[0].image_url.url'],
    [{ messages: [{ role: 'user', content: [{ type: 'input_audio', input_audio: {} }] }] }, 400, 'messages[0].content[0].type'],
    [{ messages: hello, temperature: 'hot' }, 400, 'temperature'],
    [{ messages: hello, temperature: 3 }, 400, 'temperature'],
    [{ messages: hello, top_p: 0 }, 400, 'top_p'],
    [{ messages: hello, top_k: -2 }, 400, 'top_k'],
    [{ messages: hello, min_p: 1.5 }, 400, 'min_p'],
    [{ messages: hello, max_tokens: 0 }, 400, 'max_tokens'],
    [{ messages: hello, max_tokens: 2.5 }, 400, 'max_tokens'],
    [{ messages: hello, max_tokens: '10' }, 400, 'max_tokens'],
    [{ messages: hello, n: 0 }, 400, 'n'],
    [{ messages: hello, n: 1000 }, 400, 'n'],
    [{ messages: hello, stop: 5 }, 400, 'stop'],
    [{ messages: hello, stop: [''] }, 400, 'stop[0]'],
    [{ messages: hello, presence_penalty: 9 }, 400, 'presence_penalty'],
    [{ messages: hello, repetition_penalty: 0 }, 400, 'repetition_penalty'],
    [{ messages: hello, seed: 'abc' }, 400, 'seed'],
    [{ messages: hello, stream: 'yes' }, 400, 'stream'],
    [{ messages: hello, stream_options: { include_usage: true } }, 400, 'stream_options'],
    [{ messages: hello, top_logprobs: 2 }, 400, 'top_logprobs'],
    [{ messages: hello, logprobs: true, top_logprobs: 50 }, 400, 'top_logprobs'],
    [{ messages: hello, tools: [{ type: 'function', function: { name: 'f' } }] }, 400, 'tools'],
    [{ messages: hello, max_tokens: SESSION_LEN + 1 }, 400, 'messages'],
  ];
  for (const [body, status, param] of bad) {
    const e = await expectApiError(openai.chat.completions.create({ model: MODEL, ...body }), status, 'invalid_request_error');
    assert.equal(e.error.param, param, `param for ${JSON.stringify(body)} (message: ${e.message})`);
  }
  const badCompletions = [
    [{}, 'prompt'],
    [{ prompt: 17 }, 'prompt'],
    [{ prompt: [] }, 'prompt'],
    [{ prompt: [1, 'x'] }, 'prompt[1]'],
    [{ prompt: 'hi', logprobs: 99 }, 'logprobs'],
    [{ prompt: 'hi', echo: 1 }, 'echo'],
  ];
  for (const [body, param] of badCompletions) {
    const e = await expectApiError(openai.completions.create({ model: MODEL, ...body }), 400, 'invalid_request_error');
    assert.equal(e.error.param, param, `param for ${JSON.stringify(body)}`);
  }
  // Prompt + max_tokens over the session length: counted exactly for completions.
  const long = 'word '.repeat(SESSION_LEN + 10);
  let e = await expectApiError(openai.completions.create({ model: MODEL, prompt: 'hello', max_tokens: SESSION_LEN }), 400, 'invalid_request_error', { code: 'context_length_exceeded' });
  e = await expectApiError(openai.completions.create({ model: MODEL, prompt: long, max_tokens: 1 }), 400, 'invalid_request_error', { code: 'context_length_exceeded' });
  // A chat prompt alone over the session length: the engine refuses it.
  e = await expectApiError(openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: long }] }), 400, 'invalid_request_error');
  assert.match(e.message, /session length|context length/);
  // Unknown model.
  await expectApiError(openai.chat.completions.create({ model: 'no-such-model', messages: hello }), 404, 'invalid_request_error', { code: 'model_not_found' });
});

test('errors the client library cannot make: malformed JSON, wrong body type, routes, methods', async () => {
  const cases = [
    ['/v1/chat/completions', 'POST', '{"messages": [', 400],
    ['/v1/chat/completions', 'POST', '[1, 2]', 400],
    ['/v1/chat/completions', 'POST', '', 400],
    ['/v1/completions', 'POST', 'null', 400],
    ['/v1/completions', 'POST', '{"prompt": "x", "max_tokens": 1e309}', 400],
    ['/v1/chat/completions', 'GET', undefined, 405],
    ['/v1/nothing-here', 'GET', undefined, 404],
  ];
  for (const [path, method, body, status] of cases) {
    const r = await raw(path, { method, body });
    assert.equal(r.status, status, `${method} ${path} ${body}`);
    assert.equal(typeof r.json?.error?.message, 'string', `${method} ${path}: error shape`);
    assert.equal(r.json.error.type, 'invalid_request_error');
    assert.ok('param' in r.json.error && 'code' in r.json.error);
  }
  // Invalid UTF-8 inside a JSON string.
  const r = await fetch(`${URL_BASE}/v1/completions`, {
    method: 'POST', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: Buffer.concat([Buffer.from('{"prompt": "'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]),
  });
  assert.equal(r.status, 400);
});

test('API keys: missing or wrong key is 401; /health and /metrics stay open', async () => {
  if (API_KEY === 'unused') return;
  const none = await raw('/v1/models', { auth: false });
  assert.equal(none.status, 401);
  assert.equal(none.json.error.code, 'invalid_api_key');
  await expectApiError(client({ apiKey: 'wrong-key' }).models.list(), 401, 'invalid_request_error', { code: 'invalid_api_key' });
  await expectApiError(client({ apiKey: 'wrong-key' }).chat.completions.create({ model: MODEL, messages: hello }), 401, 'invalid_request_error');
  assert.equal((await raw('/health', { auth: false })).status, 200);
  assert.equal((await raw('/metrics', { auth: false })).status, 200);
});

test('CORS: preflight and simple requests from an allowed origin', async () => {
  const pre = await fetch(`${URL_BASE}/v1/chat/completions`, {
    method: 'OPTIONS',
    headers: { origin: 'http://allowed.test', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' },
  });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get('access-control-allow-origin'), 'http://allowed.test');
  assert.match(pre.headers.get('access-control-allow-headers') ?? '', /authorization/);
  const simple = await raw('/v1/models', { headers: { origin: 'http://allowed.test' } });
  assert.equal(simple.headers.get('access-control-allow-origin'), 'http://allowed.test');
  // Another site's page is refused outright (tests/adversarial has the other cross-site cases).
  const other = await raw('/v1/models', { headers: { origin: 'http://evil.test' } });
  assert.equal(other.status, 403);
  assert.equal(other.headers.get('access-control-allow-origin'), null);
});

test('64 concurrent streams all finish complete', async () => {
  const started = Date.now();
  const results = await Promise.all(Array.from({ length: 64 }, async (_, i) => {
    const stream = await openai.chat.completions.create({
      model: MODEL, messages: [{ role: 'user', content: `Request number ${i}` }], max_tokens: 16,
      temperature: 0.8, seed: i, ignore_eos: true, stream: true, stream_options: { include_usage: true },
    });
    let text = '', finish = null, usage = null;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) { text += c.delta.content ?? ''; if (c.finish_reason) finish = c.finish_reason; }
    }
    return { finish, usage, text };
  }));
  for (const r of results) {
    assert.equal(r.finish, 'length');
    assert.equal(r.usage.completion_tokens, 16);
  }
  console.log(`64 concurrent streams of 16 tokens: ${Date.now() - started} ms`);
});

test('/metrics: Prometheus text with the expected families', async () => {
  const m = await metrics();
  for (const name of ['hostrun_requests_submitted_total', 'hostrun_requests_finished_total', 'hostrun_requests_cancelled_total',
    'hostrun_prompt_tokens_total', 'hostrun_generation_tokens_total', 'hostrun_requests_running', 'hostrun_requests_waiting',
    'hostrun_kv_blocks_total', 'hostrun_kv_blocks_used', 'hostrun_kv_cache_usage_ratio', 'hostrun_http_open_connections',
    'hostrun_time_to_first_token_seconds_count', 'hostrun_inter_token_latency_seconds_count', 'hostrun_request_latency_seconds_sum'])
    assert.ok(name in m, `${name} is missing`);
  assert.ok(m.hostrun_time_to_first_token_seconds_count > 0);
  assert.ok(m['hostrun_time_to_first_token_seconds_bucket{le="+Inf"}'] === m.hostrun_time_to_first_token_seconds_count);
  assert.ok(m['hostrun_http_errors_total{status="400"}'] > 0);
  const text = (await raw('/metrics', { auth: false })).text;
  assert.match(text, /# TYPE hostrun_time_to_first_token_seconds histogram/);
});
