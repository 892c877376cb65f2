// Long prompts against a running api_server (long_prompts.sh starts two).
//   node long_prompts.mjs refuse URL     default session: megabyte prompts are refused before tokenizing
//   node long_prompts.mjs offload URL    a session too long to refuse them: they are tokenized, and /health
//                                        answers while they are
// No npm packages: node's own fetch.
const [mode, url] = process.argv.slice(2);
let failures = 0;
function check(condition, what) {
  console.log(`${condition ? 'ok' : 'FAIL'}: ${what}`);
  if (!condition) failures++;
}

// Words of random letters: a tokenizer's word cache cannot make them cheap.
function prose(bytes) {
  let state = 12345;
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  const parts = [];
  let size = 0;
  while (size < bytes) {
    let word = ' ';
    const length = 3 + (state % 7);
    for (let i = 0; i < length; i++) {
      state = (state * 1103515245 + 12345) % 2147483648;
      word += letters[state % 26];
    }
    parts.push(word);
    size += word.length;
  }
  return parts.join('').slice(0, bytes);
}

async function post(path, body) {
  const started = performance.now();
  const res = await fetch(url + path, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  const json = await res.json().catch(() => null);
  return { status: res.status, json, ms: performance.now() - started, at: performance.now() };
}

if (mode === 'refuse') {
  const text = prose(15 * 1024 * 1024);
  const completion = await post('/v1/completions', { prompt: text, max_tokens: 4 });
  check(completion.status === 400 && completion.json?.error?.code === 'context_length_exceeded' &&
        /bytes is at least \d+ tokens/.test(completion.json.error.message),
        `a 15 MiB completion prompt is refused by its bytes (${completion.status}: ${completion.json?.error?.message})`);
  const chat = await post('/v1/chat/completions', { messages: [{ role: 'user', content: text }], max_tokens: 4 });
  check(chat.status === 400 && chat.json?.error?.code === 'context_length_exceeded' &&
        /at least \d+ tokens/.test(chat.json.error.message),
        `a 15 MiB chat message is refused by its bytes (${chat.status}: ${chat.json?.error?.message})`);
  // Both in less time than tokenizing one would take (seconds); printed, not asserted.
  console.log(`refusals took ${completion.ms.toFixed(0)} ms and ${chat.ms.toFixed(0)} ms`);
} else {
  // Three 6 MiB prompts at once: tokenizing each takes seconds. The KV cache
  // cannot hold them, so each ends with 400 once tokenized.
  const big = [0, 1, 2].map((i) => post(i === 1 ? '/v1/chat/completions' : '/v1/completions',
    i === 1 ? { messages: [{ role: 'user', content: prose(6 * 1024 * 1024) }], max_tokens: 1 }
            : { prompt: prose(6 * 1024 * 1024), max_tokens: 1 }));
  let firstBigAt = Infinity;
  for (const p of big) p.then((r) => { firstBigAt = Math.min(firstBigAt, r.at); });
  await new Promise((resolve) => setTimeout(resolve, 200));  // the three bodies are sent and being tokenized
  const health = [];
  for (let i = 0; i < 5; i++) {
    const started = performance.now();
    const res = await fetch(url + '/health');
    health.push({ status: res.status, ms: performance.now() - started, at: performance.now() });
  }
  const results = await Promise.all(big);
  check(results.every((r) => r.status === 400 && r.json?.error?.code === 'context_length_exceeded'),
        `the three long prompts were tokenized and refused for the KV cache (${results.map((r) => r.status)})`);
  check(health.every((h) => h.status === 200), '/health answered 200 five times');
  check(health.every((h) => h.at < firstBigAt),
        `/health answered while the long prompts were still being tokenized (health ${health.map((h) => h.ms.toFixed(0))} ms; ` +
        `first long prompt done after ${results.map((r) => r.ms.toFixed(0)).sort((a, b) => a - b)[0]} ms)`);
}
process.exit(failures ? 1 : 0);
