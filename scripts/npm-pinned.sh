#!/usr/bin/env bash
# Installs the npm packages pinned by PINNED_DIR/package.json and
# package-lock.json into DEPS_DIR (git-ignored) with `npm ci`, which checks
# every package's integrity hash. Quick when DEPS_DIR's copy of the lock file
# equals the pinned one and every FILE (a path under DEPS_DIR/node_modules) is
# there. NAME starts the error messages. Used by fetch-tokenizer.sh,
# make-calib-corpus.sh and tests/clients/install.sh.
#   npm-pinned.sh NAME PINNED_DIR DEPS_DIR FILE...
set -euo pipefail
name=${1:?usage: npm-pinned.sh NAME PINNED_DIR DEPS_DIR FILE...}
pinned=${2:?} deps=${3:?}
shift 3
[ $# -gt 0 ] || { echo "npm-pinned.sh: name at least one FILE that a finished install holds" >&2; exit 2; }

installed() {
  cmp -s "$pinned/package-lock.json" "$deps/package-lock.json" || return 1
  local file
  for file in "$@"; do [ -s "$deps/node_modules/$file" ] || return 1; done
}

installed "$@" && exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "$name: npm is not installed; it is needed to fetch the packages pinned in $pinned (apt-get install npm)" >&2
  exit 1
fi
mkdir -p "$deps"
cp "$pinned/package.json" "$pinned/package-lock.json" "$deps/"
# A half-finished install must not look finished next time: npm ci starts clean.
if ! (cd "$deps" && npm ci --no-audit --no-fund --loglevel=error >&2); then
  rm -f "$deps/package-lock.json"
  echo "$name: 'npm ci' in $deps failed (is the npm registry reachable?)" >&2
  exit 1
fi
installed "$@" || { echo "$name: npm ci finished but $deps/node_modules lacks one of: $*" >&2; exit 1; }
