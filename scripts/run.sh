#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install-deps.sh"
bash "$root/scripts/build.sh" "$root/build"
"$root/build/bin/hostrun" plugins
