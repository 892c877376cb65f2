#!/usr/bin/env node
// Writes the tokenizer test corpus, reproducibly (fixed seed, no input files):
//   corpus.jsonl         one JSON string per line (>= 2,000 strings)
//   decode_ids.jsonl     id lists for decode tests, made without any tokenizer
//   conversations.jsonl  one chat (a list of {role, content}) per line
// Usage: node gen_corpus.cjs OUT_DIR
//
// Characters where the JS oracle knowingly differs from HF tokenizers are left
// out here and tested on their own (test_tokenizer.cpp, docs/tokenizer.md):
// U+0085 and U+FEFF (JavaScript's \s differs from Unicode White_Space),
// U+017F, U+FB05, U+FB06 (case folding of the (?i:'s|...) contractions), and
// lone surrogates (not representable in UTF-8).
'use strict';
const fs = require('fs');
const path = require('path');

const out = process.argv[2];
if (!out) { console.error('usage: node gen_corpus.cjs OUT_DIR'); process.exit(2); }

let seed = 0x9e3779b9;
function rand() {  // mulberry32
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const int = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
const pick = (list) => list[Math.floor(rand() * list.length)];
const cp = (lo, hi) => String.fromCodePoint(int(lo, hi));
const repeat = (n, f) => Array.from({ length: n }, f).join('');

const words = ('the of and to in is that for it as was with be by on not he this are or his from at which but have ' +
  'an they you were her she there been one all we their has would when if more will can no other into some could ' +
  'them time these two may then do first any my now such like our over man me even most made after also did many ' +
  'before must through back years where much your way well down should because each just those people how too ' +
  'little state good very make world still own see men work long get here between both life being under never day ' +
  'same another know while last might us great old year off come since against go came right used take three ' +
  'tokenizer model server request latency throughput kernel memory cache quantization attention inference batch ' +
  'Hello World Python London January Monday OpenAI GPU CUDA NVIDIA Llama transformer decoder embedding').split(' ');
const contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'M", "'LL", "'D", "’s", "'x"];
const punct = ['.', ',', '!', '?', ';', ':', '...', ' -', ' --', '—', '"', '(', ')', '[', ']', '…', '!!', '?!'];

function sentence() {
  let s = '';
  const n = int(3, 18);
  for (let i = 0; i < n; ++i) {
    let w = pick(words);
    if (i === 0) w = w[0].toUpperCase() + w.slice(1);
    if (rand() < 0.07) w += pick(contractions);
    if (rand() < 0.05) w = w.toUpperCase();
    if (rand() < 0.05) w = String(int(0, 100000));
    s += (i ? ' ' : '') + w;
    if (rand() < 0.08) s += pick(punct);
  }
  return s + pick(['.', '.', '.', '!', '?', '', ':']);
}
const prose = () => repeat(int(1, 6), () => sentence() + pick([' ', ' ', '  ', '\n', '\n\n', ''])).trimEnd();

const cjk = () => repeat(int(1, 40), () => pick([
  () => cp(0x4e00, 0x9fa5), () => cp(0x3041, 0x3096), () => cp(0x30a1, 0x30fa), () => cp(0xac00, 0xd7a3),
  () => pick(['。', '、', '，', '！', '？', '「', '」', '・', 'ー', ' ', '　']), () => cp(0xff10, 0xff19),
  () => cp(0xff21, 0xff3a)])());
const arabic = () => repeat(int(1, 30), () => pick([
  () => cp(0x0621, 0x064a), () => cp(0x064b, 0x0652), () => cp(0x0660, 0x0669), () => ' ', () => '،',
  () => cp(0x05d0, 0x05ea), () => cp(0x06f0, 0x06f9), () => '؟'])());
const emoji = () => repeat(int(1, 12), () => pick([
  '👩‍👩‍👧‍👦', '🏳️‍🌈', '👍🏽', '🇯🇵', '🇺🇸', '❤️‍🔥', '1️⃣', '#️⃣', '🧑🏿‍💻', '👨‍❤️‍💋‍👨', '😀', '🤖', '☕', '✈️',
  '🫠', '🦀', '\u200d', '\ufe0f', ' ', '🏴󠁧󠁢󠁳󠁣󠁴󠁿', String.fromCodePoint(int(0x1f300, 0x1f5ff)), String.fromCodePoint(int(0x1f900, 0x1f9ff))]));
const combining = () => repeat(int(1, 20), () => pick([
  () => pick('aeiouAEIOUnNcsz') + repeat(int(1, 4), () => cp(0x0300, 0x036f)),
  () => cp(0x0915, 0x0939) + pick(['', '\u093e', '\u093f', '\u0940', '\u094d', '\u0902']),
  () => cp(0x0e01, 0x0e2e) + pick(['', '\u0e31', '\u0e34', '\u0e47', '\u0e48']),
  () => 'e\u0301', () => 'Å', () => 'A\u030a', () => ' ', () => 'ñ', () => 'n\u0303'])());
const codeSnippets = [
  () => `int ${pick(words)}_${int(0, 99)}(const std::vector<int>& v) {\n    return std::accumulate(v.begin(), v.end(), ${int(0, 9)});\n}`,
  () => `def ${pick(words)}(self, x: int = ${int(0, 999)}) -> list[str]:\n    return [str(i) for i in range(x) if i % ${int(2, 9)} == 0]\n`,
  () => `const ${pick(words)} = async (req, res) => {\n\tconst { id } = req.params;\n\tres.json({ ok: true, id });\n};`,
  () => `fn main() {\n    let v: Vec<u32> = (0..${int(1, 100)}).map(|x| x * x).collect();\n    println!("{:?}", v);\n}`,
  () => `func ${pick(words)}(w http.ResponseWriter, r *http.Request) {\n\tfmt.Fprintf(w, "%d\\n", ${int(0, 1e6)})\n}`,
  () => `SELECT a.id, COUNT(*) AS n FROM ${pick(words)} a JOIN b ON a.id = b.a_id WHERE a.x >= ${int(0, 50)} GROUP BY a.id;`,
  () => `<div class="${pick(words)}" id='x${int(0, 9)}'>\n  <a href="https://example.com/?q=${pick(words)}&amp;n=${int(0, 99)}">link</a>\n</div>`,
  () => `#!/bin/sh\nfor f in *.txt; do\n  grep -c '${pick(words)}' "$f" || echo "none: $f" >&2\ndone`,
  () => JSON.stringify({ name: pick(words), values: [int(0, 9), rand(), null, true], nested: { k: pick(words) } }, null, int(0, 4)),
  () => `    if (x != NULL && *x == '\\0') { /* ${sentence()} */ return -1; }`,
  () => `\t\t} else if (count >= 0x${int(0, 65535).toString(16)}) {\r\n\t\t\tbreak;\r\n\t\t}`,
];
const code = () => repeat(int(1, 3), () => pick(codeSnippets)() + '\n').trimEnd();
const digits = () => pick([
  () => repeat(int(1, 200), () => String(int(0, 9))),
  () => `${int(0, 1e9)}.${int(0, 1e6)}`,
  () => `${int(1, 999)},${String(int(0, 999)).padStart(3, '0')},${String(int(0, 999)).padStart(3, '0')}`,
  () => repeat(int(1, 20), () => cp(0x0660, 0x0669)),
  () => repeat(int(1, 20), () => cp(0xff10, 0xff19)),
  () => repeat(int(1, 20), () => cp(0x0966, 0x096f)),
  () => `+1 (${int(200, 999)}) ${int(200, 999)}-${int(1000, 9999)}`,
  () => `v${int(0, 9)}.${int(0, 99)}.${int(0, 999)}-rc${int(1, 9)}`,
  () => '²³¹¼½¾⅓Ⅻ①②' + String(int(0, 99)),
])();
const spaceChars = [' ', ' ', '\t', '\n', '\r\n', '\r', '\v', '\f', '\u00a0', '\u2000', '\u2003', '\u2009', '\u200a',
  '\u3000', '\u2028', '\u2029', '\u202f', '\u205f', '\u1680', '\u200b'];
const whitespace = () => repeat(int(1, 12), () => pick([
  () => repeat(int(1, 8), () => pick(spaceChars)), () => pick(words), () => pick(punct), () => String(int(0, 999))])());
const specials = ['<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>', '<|start_header_id|>', '<|end_header_id|>',
  '<|reserved_special_token_0|>', '<|reserved_special_token_250|>', '<|reserved_special_token_999|>', '<|eot_id',
  '<|EOT_ID|>', '<| eot_id |>', '<<|eot_id|>>', '|eot_id|>', '<|', '|>', '<s>', '</s>', '[INST]', '<|im_start|>',
  '<|finetune_right_pad_id|>', '<|python_tag|>', '<|eom_id|>', '<|begin_of_text|><|begin_of_text|>'];
const specialLike = () => repeat(int(1, 6), () => pick([
  () => pick(specials), () => pick(specials), () => ' ', () => '\n', () => pick(words), () => sentence()])());
const ranges = [[0x20, 0x7e], [0xa1, 0x24f], [0x370, 0x3ff], [0x400, 0x4ff], [0x530, 0x58f], [0x5d0, 0x5ea],
  [0x900, 0x97f], [0xe00, 0xe5b], [0x10a0, 0x10ff], [0x1e00, 0x1eff], [0x2000, 0x206f], [0x20a0, 0x20bf],
  [0x2100, 0x214f], [0x2190, 0x23ff], [0x2500, 0x27bf], [0x3000, 0x303f], [0x4e00, 0x9fa5], [0xac00, 0xd7a3],
  [0xff00, 0xffef], [0x1d400, 0x1d7ff], [0x1f300, 0x1faff], [0x20000, 0x2a6d6], [0x0, 0x1f]];
const excluded = new Set([0x85, 0xfeff, 0x17f, 0xfb05, 0xfb06]);
function randomChar() {
  for (;;) {
    const [lo, hi] = pick(ranges);
    const c = int(lo, hi);
    if (!excluded.has(c)) return String.fromCodePoint(c);
  }
}
const randomUnicode = () => repeat(int(1, 60), randomChar);
const contractionEdge = () => repeat(int(1, 6), () => pick([
  "don't", "I'M", "we'Re", "'s'", "''s", "it’s", "'ll've", "y'all", "rock'n'roll", "'", "''", "' s", "'S", "O'Neil",
  "'12", "'Δ", "l'été", "'ss", "'llama", "'dd"]) + pick(['', ' ', '.', '\n']));

const generators = [
  ['prose', prose, 500], ['cjk', cjk, 200], ['arabic', arabic, 120], ['emoji', emoji, 150], ['combining', combining, 120],
  ['code', code, 250], ['digits', digits, 150], ['whitespace', whitespace, 200], ['special', specialLike, 150],
  ['unicode', randomUnicode, 150], ['contractions', contractionEdge, 80],
  ['mixed', () => repeat(int(2, 6), () => pick(generators.slice(0, 11))[1]()), 200],
];
const corpus = ['', ' ', '\n', '\r\n', '\t', 'a', 'Hello', ' Hello', 'Hello world', "it's", '   leading', 'trailing   ',
  'a\r\nb', 'a\n\n\nb', '  \n  ', '\u00a0', '...', '1234567', '12345678901234567890'];
for (const [, f, n] of generators) for (let i = 0; i < n; ++i) corpus.push(f());
// Very long lines: the shapes that break naive BPE or regex engines.
corpus.push(repeat(300, sentence).replace(/\n/g, ' '));
corpus.push('a'.repeat(20000), ' '.repeat(20000), '\n'.repeat(5000), 'ab'.repeat(10000), '9'.repeat(10001));
corpus.push(' '.repeat(5000) + 'x', '\t'.repeat(3000) + '\n' + ' '.repeat(3000));
corpus.push(repeat(4000, () => pick('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/')));
corpus.push(repeat(2000, cjk).slice(0, 30000), '😀'.repeat(5000), 'é'.repeat(8000), 'e\u0301'.repeat(4000));

const ids = [];
const vocab = 128256;
for (let i = 0; i < 400; ++i) ids.push(Array.from({ length: int(1, 40) }, () => int(0, vocab - 1)));
// Single bytes of multi-byte characters: ids 0..255 of the byte alphabet and merges of partial UTF-8.
for (let i = 0; i < 300; ++i) ids.push(Array.from({ length: int(1, 12) }, () => int(0, 255)));
for (let i = 0; i < 100; ++i) ids.push(Array.from({ length: int(1, 12) }, () => pick([int(0, 255), int(128000, 128255), int(0, 127999)])));
ids.push([]);

const conversations = [];
const content = () => pick([prose, prose, cjk, code, emoji, specialLike, whitespace, () => '', () => '  padded  ',
  () => '\n\nnewlines\n\n', () => '\t' + sentence()])();
for (let i = 0; i < 40; ++i) {
  const conv = [];
  if (rand() < 0.5) conv.push({ role: 'system', content: content() });
  const turns = int(1, 4);
  for (let t = 0; t < turns; ++t) {
    conv.push({ role: 'user', content: content() });
    if (t + 1 < turns || rand() < 0.3) conv.push({ role: 'assistant', content: content() });
  }
  if (rand() < 0.1) conv.splice(int(0, conv.length), 0, { role: 'system', content: content() });
  conversations.push(conv);
}
conversations.push([], [{ role: 'user', content: '' }], [{ role: 'system', content: 'Only a system prompt.' }]);

const fix = (s) => [...s].filter((c) => !excluded.has(c.codePointAt(0))).join('');
fs.mkdirSync(out, { recursive: true });
fs.writeFileSync(path.join(out, 'corpus.jsonl'), corpus.map((s) => JSON.stringify(fix(s))).join('\n') + '\n');
fs.writeFileSync(path.join(out, 'decode_ids.jsonl'), ids.map((l) => JSON.stringify(l)).join('\n') + '\n');
fs.writeFileSync(path.join(out, 'conversations.jsonl'),
  conversations.map((c) => JSON.stringify(c.map((m) => ({ role: m.role, content: fix(m.content) })))).join('\n') + '\n');
console.error(`gen_corpus: ${corpus.length} strings, ${ids.length} id lists, ${conversations.length} conversations in ${out}`);
