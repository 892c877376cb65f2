// Images through the OpenAI API with the official openai package: image_url parts (data: URLs) to a
// LLaVA folder (the tiny random-weight one, scripts/make-tiny-model.sh llava). Replies are gibberish;
// what is checked is that each image reaches the model, deterministically, and every way to send one
// wrong gets a 400 naming the part.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import OpenAI from 'openai';
import { client, raw, served_model } from './common.mjs';

const openai = client();
const MODEL = await served_model();
const IMAGES = process.env.HOSTRUN_IMAGE_DIR;
const dataUrl = (file, type) => `data:${type};base64,${readFileSync(`${IMAGES}/${file}`).toString('base64')}`;
const gif = dataUrl('rgb.gif', 'image/gif');
const jpeg = dataUrl('grey.jpg', 'image/jpeg');
// Seeded sampling within the top 40: a random-weight model's argmax repeats one token whatever it reads.
const sampling = { model: MODEL, max_tokens: 12, temperature: 1, top_k: 40, seed: 7, ignore_eos: true };
const ask = (image, text = 'What is in this image?') => [{
  role: 'user',
  content: image ? [{ type: 'image_url', image_url: { url: image } }, { type: 'text', text }] : text,
}];

test('an image reaches the model: its reply is reproducible and differs from no image and another image', async () => {
  const withGif = await openai.chat.completions.create({ ...sampling, messages: ask(gif) });
  const again = await openai.chat.completions.create({ ...sampling, messages: ask(gif) });
  const withJpeg = await openai.chat.completions.create({ ...sampling, messages: ask(jpeg) });
  const without = await openai.chat.completions.create({ ...sampling, messages: ask(null) });
  assert.equal(withGif.choices[0].message.content, again.choices[0].message.content);
  assert.notEqual(withGif.choices[0].message.content, without.choices[0].message.content);
  assert.notEqual(withGif.choices[0].message.content, withJpeg.choices[0].message.content);
  // "<image>\n" + text: the placeholder becomes the encoder's 4 embeddings (28 px images of 14 px
  // patches, CLS dropped) and the newline one token.
  assert.equal(withGif.usage.prompt_tokens - without.usage.prompt_tokens, 4 + 1);
});

test('the part order does not matter (the template puts images first), and streaming agrees', async () => {
  const first = await openai.chat.completions.create({ ...sampling, messages: ask(gif) });
  const textFirst = await openai.chat.completions.create({
    ...sampling,
    messages: [{ role: 'user', content: [{ type: 'text', text: 'What is in this image?' }, { type: 'image_url', image_url: { url: gif } }] }],
  });
  assert.equal(textFirst.choices[0].message.content, first.choices[0].message.content);
  const stream = await openai.chat.completions.create({ ...sampling, messages: ask(gif), stream: true });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  assert.equal(text, first.choices[0].message.content);
});

test('two images in one message, and images in earlier turns of a conversation', async () => {
  const two = await openai.chat.completions.create({
    ...sampling,
    messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: gif } }, { type: 'image_url', image_url: { url: jpeg } }, { type: 'text', text: 'Compare them.' }] }],
  });
  assert.equal(two.choices[0].finish_reason, 'length');
  const turns = await openai.chat.completions.create({
    ...sampling,
    messages: [...ask(gif), { role: 'assistant', content: 'A picture.' }, ...ask(jpeg, 'And this one?')],
  });
  assert.equal(turns.usage.completion_tokens, 12);
});

test('bad images: 400 naming the part, the server unharmed', async () => {
  const bad = async (content, param, code) => {
    try {
      await openai.chat.completions.create({ ...sampling, messages: [{ role: 'user', content }] });
    } catch (e) {
      assert.ok(e instanceof OpenAI.APIError, `expected an APIError, got ${e}`);
      assert.equal(e.status, 400, e.message);
      assert.equal(e.error?.param, param, e.message);
      if (code) assert.equal(e.error?.code, code, e.message);
      return e.message;
    }
    assert.fail(`accepted ${JSON.stringify(content).slice(0, 80)}`);
  };
  const url = 'messages[0].content[0].image_url.url';
  assert.match(await bad([{ type: 'image_url', image_url: { url: 'https://example.com/cat.png' } }], url, 'unsupported_content'),
    /does not fetch from this one/);
  assert.match(await bad([{ type: 'image_url', image_url: { url: 'data:image/png;base64,aGVsbG8=' } }], url),
    /not a PNG, JPEG, WebP or GIF image/);
  assert.match(await bad([{ type: 'image_url', image_url: { url: 'data:image/png;base64,%%%' } }], url), /base64/);
  // Bytes that pass the signature but not the decoder: the engine's encoder refuses them.
  const broken = `data:image/png;base64,${Buffer.from('\x89PNG\r\n\x1a\nnot really').toString('base64')}`;
  try {
    await openai.chat.completions.create({ ...sampling, messages: ask(broken) });
    assert.fail('a broken PNG was accepted');
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIError, `expected an APIError, got ${e}`);
    assert.equal(e.status, 400, e.message);
    assert.match(e.message, /PNG/);
  }
  const after = await openai.chat.completions.create({ ...sampling, messages: ask(gif) });
  assert.equal(after.choices[0].finish_reason, 'length');
});

test('the string form of image_url (some clients send it) is taken too', async () => {
  const r = await raw('/v1/chat/completions', {
    method: 'POST',
    body: { ...sampling, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: gif }, { type: 'text', text: 'What is in this image?' }] }] },
  });
  assert.equal(r.status, 200, r.text);
  const objectForm = await openai.chat.completions.create({ ...sampling, messages: ask(gif) });
  assert.equal(r.json.choices[0].message.content, objectForm.choices[0].message.content);
});
