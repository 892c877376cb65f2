#!/usr/bin/env bash
# Installs the client tests' pinned npm packages (@gradio/client, playwright-core)
# into a git-ignored folder and prints it; quick when the installed lock file
# equals the committed one. `npm ci` checks every package's integrity hash.
#   install.sh [DIR]    default: .deps/clients-npm in the source tree
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
deps="${1:-$root/.deps/clients-npm}"

"$root/scripts/npm-pinned.sh" clients/install.sh "$here" "$deps" @gradio/client/package.json playwright-core/package.json >&2
echo "$deps"
