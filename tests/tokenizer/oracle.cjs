#!/usr/bin/env node
// The JS oracle (@lenml/tokenizers, a fork of transformers.js' tokenizers) on
// the corpus gen_corpus.cjs wrote. Usage:
//   node oracle.cjs NPM_DIR TOKENIZER_DIR WORK_DIR
// NPM_DIR holds node_modules (scripts/fetch-tokenizer.sh --npm-dir);
// TOKENIZER_DIR holds tokenizer.json + tokenizer_config.json. Writes into WORK_DIR:
//   oracle_special.jsonl  ids with special-token text parsed (tokenizer.encode, no BOS added)
//   oracle_plain.jsonl    ids with special-token text as plain text (pre-tokenizer + BPE
//                         on the whole string, which is what HF's split_special_tokens does)
//   oracle_decode.jsonl   decode() of each id list in decode_ids.jsonl
//   oracle_chat_text.jsonl, oracle_chat_ids.jsonl  apply_chat_template of each conversation
'use strict';
const fs = require('fs');
const path = require('path');

const [npmDir, tokenizerDir, work] = process.argv.slice(2);
if (!work) { console.error('usage: node oracle.cjs NPM_DIR TOKENIZER_DIR WORK_DIR'); process.exit(2); }
let tokenizers;
try {
  tokenizers = require(path.resolve(npmDir, 'node_modules', '@lenml', 'tokenizers'));
} catch (e) {
  console.error(`oracle: cannot load @lenml/tokenizers from ${npmDir}/node_modules: run scripts/fetch-tokenizer.sh (${e.message})`);
  process.exit(1);
}
const readJson = (f) => JSON.parse(fs.readFileSync(path.join(tokenizerDir, f), 'utf8'));
const tokenizer = tokenizers.TokenizerLoader.fromPreTrained({
  tokenizerJSON: readJson('tokenizer.json'), tokenizerConfig: readJson('tokenizer_config.json'),
});
const lines = (f) => fs.readFileSync(path.join(work, f), 'utf8').split('\n').filter((l) => l.length).map((l) => JSON.parse(l));
const write = (f, rows) => fs.writeFileSync(path.join(work, f), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');

const corpus = lines('corpus.jsonl');
write('oracle_special.jsonl', corpus.map((s) => tokenizer.encode(s, { add_special_tokens: false })));
write('oracle_plain.jsonl', corpus.map((s) => (s.length ? tokenizer.model.convert_tokens_to_ids(tokenizer.model(tokenizer.pre_tokenizer(s))) : [])));
write('oracle_decode.jsonl', lines('decode_ids.jsonl').map((ids) => (ids.length ? tokenizer.decode(ids, { clean_up_tokenization_spaces: false }) : '')));
const chats = lines('conversations.jsonl');
write('oracle_chat_text.jsonl', chats.map((c) => tokenizer.apply_chat_template(c, { tokenize: false, add_generation_prompt: true })));
write('oracle_chat_ids.jsonl', chats.map((c) => Array.from(tokenizer.apply_chat_template(c, { tokenize: true, add_generation_prompt: true }))));
