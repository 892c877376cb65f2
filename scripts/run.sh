#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, fetch the
# real Llama-3 tokenizer, make the small model hostrun ships, and chat with it
# (on the CPU when there is no GPU). Extra arguments go to `hostrun chat`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install-deps.sh"
bash "$root/scripts/build.sh" "$root/build"
bash "$root/scripts/make-tiny-model.sh" "$root/build/bin/hostrun-llama-checkpoint" "$root/build/share/hostrun/models/tiny"
exec "$root/build/bin/hostrun" chat "$@"
