#!/usr/bin/env node
// The JS side of `hostrun bench tokenizer`: times the oracle's encode on each
// input file, single thread, best of REPEAT runs, and prints a JSON list of
// {seconds, ids, hash} (hash: FNV-1a over the ids as 32-bit values, the same
// as the C++ side computes) so the bench can say whether both gave the same ids.
// Usage: node oracle_bench.cjs NPM_DIR TOKENIZER_DIR REPEAT INPUT...
'use strict';
const fs = require('fs');
const path = require('path');

const [npmDir, tokenizerDir, repeatText, ...inputs] = process.argv.slice(2);
const tokenizers = require(path.resolve(npmDir, 'node_modules', '@lenml', 'tokenizers'));
const readJson = (f) => JSON.parse(fs.readFileSync(path.join(tokenizerDir, f), 'utf8'));
const tokenizer = tokenizers.TokenizerLoader.fromPreTrained({
  tokenizerJSON: readJson('tokenizer.json'), tokenizerConfig: readJson('tokenizer_config.json'),
});
const repeat = Math.max(1, parseInt(repeatText, 10) || 1);
const report = [];
for (const file of inputs) {
  const text = fs.readFileSync(file, 'utf8');
  try {
    let best = Infinity, ids = [];
    for (let r = 0; r < repeat; ++r) {
      const start = process.hrtime.bigint();
      ids = tokenizer.encode(text, { add_special_tokens: false });
      best = Math.min(best, Number(process.hrtime.bigint() - start) / 1e9);
    }
    let hash = 2166136261;
    for (const id of ids) hash = Math.imul(hash ^ id, 16777619) >>> 0;
    report.push({ seconds: best, ids: ids.length, hash });
  } catch (e) {
    report.push({ error: String(e.message || e).slice(0, 200) });
  }
}
console.log(JSON.stringify(report));
