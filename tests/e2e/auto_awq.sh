#!/usr/bin/env bash
# `hostrun lite auto_awq` on the trained small model (CPU), calibrated on the
# default corpus (--calib-dataset gutenberg, which the calib_corpus fixture
# installs).
#  folder (every build, sanitizers too; 128 calibration tokens): the folder it
#    writes is an AutoAWQ folder (quantization_config, packed tensors,
#    tokenizer files, f16 elsewhere); the search summary shows the scales and
#    clipping did better than rounding on the calibration inputs; an existing
#    folder is kept without --force and replaced with it; bad flags and
#    sources are refused naming the flag.
#  quality (Release only: three perplexity runs; 512 calibration tokens): the
#    host runs the folder with llama3-cpu-awq, and its perplexity on held-out
#    dictionary text stays near the 16-bit model's and is no worse than plain
#    round-to-nearest of the same weights.
#   auto_awq.sh folder|quality HOSTRUN HOSTRUN_LLAMA_CHECKPOINT SMALL_MODEL_DIR TEXT
set -euo pipefail
mode=$1 hostrun=$2 checkpoint=$3 model=$4 text_source=$5
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
head -c 6000 "$text_source" > "$out/text.txt"
lite() { "$hostrun" lite auto_awq "$@" --no-progress; }
num() { sed -n "s/^  \"$2\": \\([^,]*\\),\\?$/\\1/p" "$1"; }
expect_refusal() {  # expect_refusal PATTERN ARGS...: status 2 and PATTERN on stderr
  local pattern=$1; shift
  if lite "$@" 2> "$out/err" > /dev/null; then echo "accepted: $*"; exit 1; fi
  grep -q -- "$pattern" "$out/err" || { echo "unclear refusal of $* (wanted '$pattern'):"; cat "$out/err"; exit 1; }
}

if [ "$mode" = quality ]; then samples=4 seqlen=128; else samples=2 seqlen=64; fi
lite "$model" --work-dir "$out/awq" --calib-samples $samples --calib-seqlen $seqlen > "$out/lite.txt"
cat "$out/lite.txt"
grep -q "^wrote $out/awq: AWQ 4-bit, group 128, $samples calibration blocks of $seqlen tokens" "$out/lite.txt" ||
  { echo "no summary line"; exit 1; }
for f in config.json model.safetensors tokenizer.json tokenizer_config.json generation_config.json awq_search.json; do
  [ -s "$out/awq/$f" ] || { echo "$f missing from the folder"; ls -la "$out/awq"; exit 1; }
done
[ -z "$(find "$out" -maxdepth 1 -name '.awq.partial-*')" ] || { echo "the staging folder was left behind"; exit 1; }
tr -d ' \n' < "$out/awq/config.json" > "$out/config.flat"
grep -q '"quantization_config":{"quant_method":"awq","bits":4,"group_size":128,"zero_point":true,"version":"gemm"' \
  "$out/config.flat" || { echo "quantization_config is not AutoAWQ's"; cat "$out/awq/config.json"; exit 1; }
grep -q '"torch_dtype":"float16"' "$out/config.flat" || { echo "torch_dtype is not float16"; exit 1; }
# The safetensors header: packed linears, f16 for the rest.
header=$(dd if="$out/awq/model.safetensors" bs=1 skip=8 count=200000 2>/dev/null | tr -d '\0')
entry() { printf '"%s":{"data_offsets":\\[[0-9]*,[0-9]*\\],"dtype":"%s","shape":\\[%s\\]' "$1" "$2" "$3"; }
for pattern in "$(entry model.layers.0.self_attn.q_proj.qweight I32 256,32)" \
               "$(entry model.layers.0.self_attn.q_proj.qzeros I32 2,32)" \
               "$(entry model.layers.0.self_attn.q_proj.scales F16 2,256)" \
               "$(entry model.layers.5.mlp.down_proj.qweight I32 768,32)" \
               "$(entry model.layers.0.input_layernorm.weight F16 256)" \
               "$(entry model.embed_tokens.weight F16 128256,256)"; do
  grep -q "$pattern" <<< "$header" || { echo "header lacks $pattern"; exit 1; }
done
if grep -q 'q_proj.weight"' <<< "$header"; then echo "a dense linear weight was written"; exit 1; fi

# The search summary: better than rounding on the calibration inputs, every group scaled and clipped.
python3 - "$out/awq/awq_search.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
groups, clipped = s["scaled_groups"], s["clipped_linears"]
assert len(groups) == 18, f"{len(groups)} scaled groups (6 layers x q/k/v, gate/up, down; o_proj has GQA)"
assert len(clipped) == 6 * 5, f"{len(clipped)} clipped linears (all but q and k)"
assert all(g["loss"] <= g["rtn_loss"] for g in groups)
assert sum(g["loss"] for g in groups) < 0.99 * sum(g["rtn_loss"] for g in groups), "scales did not help"
assert sum(c["loss"] for c in clipped) < 0.95 * sum(c["rtn_loss"] for c in clipped), "clipping did not help"
print(f"scale search: {sum(g['loss'] for g in groups) / sum(g['rtn_loss'] for g in groups):.3f} of rounding's error; "
      f"clipping: {sum(c['loss'] for c in clipped) / sum(c['rtn_loss'] for c in clipped):.3f}")
PY

# Plain rounding of the same weights: the quality baseline, and a quantized source to refuse.
"$checkpoint" rtn-awq "$model" "$out/rtn" --group-size 128 > /dev/null

if [ "$mode" = quality ]; then
# Quality on held-out text: near the 16-bit model, no worse than plain rounding.
score() { "$hostrun" bench perplexity "$1" --device cpu --no-progress --text "$out/text.txt" --context 256 --output "$2" > /dev/null; }
score "$model" "$out/bf16.json"
score "$out/rtn" "$out/rtn.json"
score "$out/awq" "$out/awq.json"
grep -q '"manifest": "llama3-cpu-awq"' "$out/awq.json" || { echo "the folder did not pick llama3-cpu-awq"; exit 1; }
b=$(num "$out/bf16.json" perplexity) r=$(num "$out/rtn.json" perplexity) a=$(num "$out/awq.json" perplexity)
echo "perplexity: bf16 $b, round-to-nearest $r, auto_awq $a"
awk -v a="$a" -v b="$b" 'BEGIN { exit !(a < 1.25 * b) }' || { echo "auto_awq is far from the 16-bit model"; exit 1; }
awk -v a="$a" -v r="$r" 'BEGIN { exit !(a < 1.01 * r) }' || { echo "auto_awq is worse than plain rounding"; exit 1; }
echo "auto_awq quality: ok"
exit 0
fi

# An existing folder: kept without --force, replaced with it.
expect_refusal "exists and is not empty; --force replaces it" "$model" --work-dir "$out/awq" --calib-samples 1 --calib-seqlen 64
lite "$model" --work-dir "$out/awq/" --calib-samples 1 --calib-seqlen 64 --force > /dev/null  # "OUT/" is OUT
grep -q '"calibration_sequences": 1' "$out/awq/awq_search.json" || { echo "--force did not replace the folder"; exit 1; }

# Refusals.
expect_refusal "--w-bits 8: AWQ here writes 4-bit weights" "$model" --work-dir "$out/x" --w-bits 8
expect_refusal "--w-group-size 96: expected 32, 64 or 128" "$model" --work-dir "$out/x" --w-group-size 96
expect_refusal "overlap" "$model" --work-dir "$model"
expect_refusal "--calib-dataset $out/none.txt: no such file" "$model" --work-dir "$out/x" --calib-dataset "$out/none.txt"
printf '{"text": "fine"}\n[1, 2]\n' > "$out/bad.jsonl"
expect_refusal 'line 2 is not a JSON object with a "text" string' "$model" --work-dir "$out/x" --calib-dataset "$out/bad.jsonl"
expect_refusal "--model-format hf: .* is a quantized folder" "$out/rtn" --work-dir "$out/x"
expect_refusal "--calib-seqlen 4096: .* holds at most 2048 positions" "$model" --work-dir "$out/x" --calib-seqlen 4096
[ ! -e "$out/x" ] || { echo "a refused run left $out/x"; exit 1; }
echo "auto_awq folder: ok"
