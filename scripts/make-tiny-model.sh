#!/usr/bin/env bash
# Makes the small random-weight Llama model hostrun ships (what `hostrun chat`
# runs with no MODEL_DIR): Llama-3's real tokenizer and vocabulary, a tiny
# body, deterministic weights. Quick when it is already there.
#   make-tiny-model.sh HOSTRUN_LLAMA_CHECKPOINT OUT_DIR [llava|llava-t5]
# (the tool tools/llama_checkpoint builds). With llava / llava-t5: the same
# language model (the same values) inside a LLaVA folder as transformers 4 / 5
# save it, with a small CLIP tower and "<image>" added to the tokenizer.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
writer=$1 out=$2 kind=${3:-llama}
tokenizer=$(bash "$root/scripts/fetch-tokenizer.sh")
args=(--shape tiny --vocab-size 128256 --hidden-size 64 --intermediate-size 192 --layers 2 --heads 4 --kv-heads 2
      --max-position-embeddings 8192 --rope-theta 500000 --tie-word-embeddings true --dtype bf16 --seed 2024)
case "$kind" in
  llama) command=random ;;
  llava) command=random-llava ;;
  llava-t5) command=random-llava; args+=(--transformers5) ;;
  *) echo "make-tiny-model.sh: kind '$kind': expected llama, llava or llava-t5" >&2; exit 2 ;;
esac
stamp="$out/.hostrun-args"
if [ -f "$out/model.safetensors" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$command ${args[*]}" ]; then
  exit 0
fi
"$writer" "$command" "$out" "${args[@]}" --tokenizer "$tokenizer" >/dev/null
echo "$command ${args[*]}" > "$stamp"
