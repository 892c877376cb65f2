#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, fetch the
# real Llama-3 tokenizer, put the small trained model hostrun ships beside it
# (models/small) and the default calibration text of `hostrun lite`, and chat
# with the model on the CPU. Extra arguments go to
# `hostrun chat` (--device cuda or auto to use a GPU: the model is so small
# that the CPU answers at once, and the CPU needs no CUDA build).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install-deps.sh"
bash "$root/scripts/build.sh" "$root/build"
bash "$root/scripts/make-small-model.sh" "$root/build/share/hostrun/models/small"
# `hostrun lite auto_awq`'s default calibration text (--calib-dataset gutenberg).
bash "$root/scripts/make-calib-corpus.sh" "$root/build/share/hostrun/calib" >&2
device=(--device cpu)
for arg in "$@"; do case "$arg" in --device|--device=*) device=() ;; esac; done
exec "$root/build/bin/hostrun" chat "${device[@]}" "$@"
