#!/usr/bin/env bash
# Installs the pinned client packages (package.json + package-lock.json here)
# into NPM_DIR with `npm ci`, which checks every package's integrity hash.
# Quick when done: nothing is fetched while NPM_DIR's copy of the lock file
# matches the committed one.
#   setup_npm.sh NPM_DIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
npm_dir=$(cd "$1" && pwd)
installed() {
  [ -f "$npm_dir/node_modules/openai/package.json" ] && cmp -s "$here/package-lock.json" "$npm_dir/package-lock.json"
}
if installed; then echo "setup_npm: $npm_dir is up to date"; exit 0; fi
if ! command -v npm >/dev/null 2>&1; then
  echo "setup_npm: npm is not installed; the serving tests need Node 20 and npm" >&2
  exit 1
fi
mkdir -p "$npm_dir"
cp "$here/package.json" "$here/package-lock.json" "$npm_dir/"
# A half-finished install must not look finished next time: npm ci starts clean.
if ! (cd "$npm_dir" && timeout 240 npm ci --no-audit --no-fund --loglevel=error); then
  rm -f "$npm_dir/package-lock.json"
  echo "setup_npm: 'npm ci' in $npm_dir failed (is the npm registry reachable?)" >&2
  exit 1
fi
installed || { echo "setup_npm: npm ci finished but openai is missing from $npm_dir/node_modules" >&2; exit 1; }
echo "setup_npm: installed $(node -p "require('$npm_dir/node_modules/openai/package.json').version" 2>/dev/null) into $npm_dir"
