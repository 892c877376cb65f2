// image_url parts with http URLs, fetched only from the hosts given with --image-url-hosts (here
// 127.0.0.1, with --set frontend.image_url_timeout=1): an image server this test runs on loopback
// answers with the image, redirects, loops, a body over the limit, silence, text. Everything not
// allowed is refused before or during the fetch, naming the part.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { test } from 'node:test';
import OpenAI from 'openai';
import { client, served_model } from './common.mjs';

const openai = client();
const MODEL = await served_model();
const gif = readFileSync(`${process.env.HOSTRUN_IMAGE_DIR}/rgb.gif`);
let hits = 0;
const images = createServer((req, res) => {
  hits++;
  const { port } = images.address();
  switch (req.url) {
    case '/tiger.gif': res.writeHead(200, { 'content-type': 'image/gif' }); return res.end(gif);
    case '/moved': res.writeHead(302, { location: '/tiger.gif' }); return res.end();
    case '/loop': res.writeHead(302, { location: '/loop' }); return res.end();
    case '/away': res.writeHead(301, { location: `http://localhost:${port}/tiger.gif` }); return res.end();
    case '/big': res.writeHead(200, { 'content-type': 'image/gif' }); return res.end(Buffer.alloc(21 << 20, 0x47));
    case '/text': res.writeHead(200, { 'content-type': 'text/plain' }); return res.end('not an image');
    case '/slow': return;  // never answers
    default: res.writeHead(404); return res.end();
  }
});
await new Promise((resolve) => images.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${images.address().port}`;
const sampling = { model: MODEL, max_tokens: 8, temperature: 1, top_k: 40, seed: 7, ignore_eos: true };
const ask = (url) => openai.chat.completions.create({
  ...sampling, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url } }, { type: 'text', text: 'What is in this image?' }] }],
});
async function refused(url) {
  try {
    await ask(url);
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIError, `expected an APIError, got ${e}`);
    assert.equal(e.error?.param, 'messages[0].content[0].image_url.url', e.message);
    return e;
  }
  assert.fail(`${url} was accepted`);
}

test('an image URL on a listed host is fetched, and equals the same bytes as a data: URL', async () => {
  const fetched = await ask(`${base}/tiger.gif`);
  const inline = await ask(`data:image/gif;base64,${gif.toString('base64')}`);
  assert.equal(fetched.choices[0].message.content, inline.choices[0].message.content);
  assert.equal(fetched.usage.prompt_tokens, inline.usage.prompt_tokens);
  const moved = await ask(`${base}/moved`);
  assert.equal(moved.choices[0].message.content, inline.choices[0].message.content, 'a redirect on the same host is followed');
});

test('hosts not listed are never contacted; limits end a fetch with a 4xx saying which', async () => {
  const before = hits;
  let e = await refused('http://localhost:9/tiger.gif');
  assert.equal(e.status, 400);
  assert.equal(e.error.code, 'unsupported_content');
  assert.match(e.message, /--image-url-hosts/);
  assert.equal(hits, before, 'nothing was fetched');
  e = await refused(`${base}/away`);
  assert.equal(e.status, 400);
  assert.match(e.message, /a redirect to host 'localhost'/);
  e = await refused(`${base}/loop`);
  assert.equal(e.status, 413);
  assert.match(e.message, /more than 3 redirects/);
  e = await refused(`${base}/big`);
  assert.equal(e.status, 413);
  assert.match(e.message, /larger than 20971520 bytes/);
  e = await refused(`${base}/slow`);
  assert.equal(e.status, 400);
  assert.match(e.message, /no answer within 1000 ms/);
  e = await refused(`${base}/text`);
  assert.match(e.message, /not a PNG, JPEG, WebP or GIF image/);
  e = await refused(`${base}/missing.png`);
  assert.match(e.message, /answered HTTP 404/);
  const after = await ask(`${base}/tiger.gif`);
  assert.equal(after.choices[0].finish_reason, 'length', 'the server still answers');
});

test.after(() => images.close());
