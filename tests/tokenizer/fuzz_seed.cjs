#!/usr/bin/env node
// Writes a small byte-level BPE tokenizer.json (Llama-3's shape: the Split
// regex, 256 byte tokens, a few merges and added tokens) as the loader
// fuzzer's seed. Usage: node fuzz_seed.cjs OUT_FILE
'use strict';
const fs = require('fs');
const byteToChar = [];
let extra = 256;
for (let b = 0; b < 256; ++b) {
  const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  byteToChar[b] = String.fromCodePoint(printable ? b : extra++);
}
const text = (s) => [...Buffer.from(s, 'utf8')].map((b) => byteToChar[b]).join('');
const vocab = {};
byteToChar.forEach((c, b) => { vocab[c] = b; });
const merges = [];
for (const [l, r] of [['H', 'e'], ['l', 'l'], ['He', 'll'], ['Hell', 'o'], [' ', 'w'], ['o', 'r'], [' w', 'or'], ['l', 'd'], [' wor', 'ld'], ['1', '2']]) {
  vocab[text(l + r)] = Object.keys(vocab).length;
  merges.push(`${text(l)} ${text(r)}`);
}
const next = Object.keys(vocab).length;
const pattern = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
fs.writeFileSync(process.argv[2], JSON.stringify({
  version: '1.0',
  added_tokens: [
    { id: next, content: '<|bos|>', special: true, lstrip: false, rstrip: false, single_word: false, normalized: false },
    { id: next + 1, content: '<|eot|>', special: true, lstrip: true, rstrip: false, single_word: false, normalized: false },
  ],
  normalizer: null,
  pre_tokenizer: { type: 'Sequence', pretokenizers: [
    { type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false },
    { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] },
  post_processor: { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<|bos|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    special_tokens: { '<|bos|>': { id: '<|bos|>', ids: [next], tokens: ['<|bos|>'] } } },
  decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: { type: 'BPE', dropout: null, unk_token: null, ignore_merges: true, byte_fallback: false, vocab, merges },
}));
