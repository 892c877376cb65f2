#!/usr/bin/env node
// Compares two JSONL files line by line and says where they differ.
// Usage: node compare.cjs NAME EXPECTED ACTUAL [INPUTS]
// Prints "ok: NAME (N lines)" or the first differences with their input line.
'use strict';
const fs = require('fs');
const [name, expectedFile, actualFile, inputsFile] = process.argv.slice(2);
const read = (f) => fs.readFileSync(f, 'utf8').split('\n').filter((l) => l.length);
const expected = read(expectedFile), actual = read(actualFile);
const inputs = inputsFile ? read(inputsFile) : [];
const canon = (l) => JSON.stringify(JSON.parse(l));
let bad = 0;
if (expected.length !== actual.length) {
  console.log(`FAIL: ${name}: ${expected.length} expected lines, ${actual.length} actual lines`);
  process.exit(1);
}
for (let i = 0; i < expected.length; ++i) {
  if (canon(expected[i]) === canon(actual[i])) continue;
  if (++bad <= 5) {
    const show = (s) => (s.length > 400 ? s.slice(0, 400) + '...' : s);
    console.log(`FAIL: ${name}: line ${i + 1} differs`);
    if (inputs[i] !== undefined) console.log(`  input:    ${show(inputs[i])}`);
    console.log(`  expected: ${show(expected[i])}\n  actual:   ${show(actual[i])}`);
  }
}
if (bad) { console.log(`FAIL: ${name}: ${bad} of ${expected.length} lines differ`); process.exit(1); }
console.log(`ok: ${name} (${expected.length} lines equal)`);
