#!/usr/bin/env bash
# Installs the client tests' pinned npm packages (@gradio/client, playwright-core)
# into a git-ignored folder and prints it; quick when the installed lock file
# equals the committed one. `npm ci` checks every package's integrity hash.
#   install.sh [DIR]    default: .deps/clients-npm in the source tree
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
deps="${1:-$root/.deps/clients-npm}"

installed() {
  [ -f "$deps/node_modules/@gradio/client/package.json" ] &&
    [ -f "$deps/node_modules/playwright-core/package.json" ] &&
    cmp -s "$here/package-lock.json" "$deps/package-lock.json"
}

if ! installed; then
  command -v npm >/dev/null || { echo "clients/install.sh: npm is not installed (scripts/install-deps.sh)" >&2; exit 1; }
  mkdir -p "$deps"
  cp "$here/package.json" "$here/package-lock.json" "$deps/"
  # A half-finished install must not look finished next time.
  if ! (cd "$deps" && npm ci --no-audit --no-fund --loglevel=error >&2); then
    rm -f "$deps/package-lock.json"
    echo "clients/install.sh: 'npm ci' in $deps failed (is the npm registry reachable?)" >&2
    exit 1
  fi
  installed || { echo "clients/install.sh: npm ci finished but the packages are missing in $deps" >&2; exit 1; }
fi
echo "$deps"
