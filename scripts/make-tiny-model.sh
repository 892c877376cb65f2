#!/usr/bin/env bash
# Makes the small random-weight Llama model hostrun ships (what `hostrun chat`
# runs with no MODEL_DIR): Llama-3's real tokenizer and vocabulary, a tiny
# body, deterministic weights. Quick when it is already there.
#   make-tiny-model.sh HOSTRUN_LLAMA_CHECKPOINT OUT_DIR   (the tool tools/llama_checkpoint builds)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
writer=$1 out=$2
tokenizer=$(bash "$root/scripts/fetch-tokenizer.sh")
args=(--shape tiny --vocab-size 128256 --hidden-size 64 --intermediate-size 192 --layers 2 --heads 4 --kv-heads 2
      --max-position-embeddings 8192 --rope-theta 500000 --tie-word-embeddings true --dtype bf16 --seed 2024)
stamp="$out/.hostrun-args"
if [ -f "$out/model.safetensors" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${args[*]}" ]; then
  exit 0
fi
"$writer" random "$out" "${args[@]}" --tokenizer "$tokenizer" >/dev/null
echo "${args[*]}" > "$stamp"
