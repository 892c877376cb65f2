#!/usr/bin/env bash
# FP8 folders end to end on the CPU: `hostrun lite fp8` on the trained small
# model, and the host running what it wrote (llama3-cpu-fp8, picked from
# quantization_config).
#  folder (every build, sanitizers too): the folder holds e4m3 linears with a
#    scale per output channel, everything else as it was, and the config
#    vLLM and AutoFP8 write; the host runs it and answers in chat;
#    --model-format holds each folder to its format; an existing folder is
#    kept without --force; layouts the plugin does not read are refused
#    naming the key.
#  quality (Release only: two perplexity runs): perplexity on held-out
#    dictionary text within +1% of the 16-bit model's (issue 17's bar).
#   lite_fp8.sh folder|quality HOSTRUN SMALL_MODEL_DIR TEXT
set -euo pipefail
mode=$1 hostrun=$2 model=$3 text_source=$4
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
head -c 6000 "$text_source" > "$out/text.txt"
lite() { "$hostrun" lite fp8 "$@" --no-progress; }
num() { sed -n "s/^  \"$2\": \\([^,]*\\),\\?$/\\1/p" "$1"; }
expect_refusal() {  # expect_refusal PATTERN COMMAND...: a failure and PATTERN on stderr
  local pattern=$1; shift
  if "$@" 2> "$out/err" > /dev/null; then echo "accepted: $*"; exit 1; fi
  grep -q -- "$pattern" "$out/err" || { echo "unclear refusal of $* (wanted '$pattern'):"; cat "$out/err"; exit 1; }
}
score() {  # score FOLDER JSON [FLAGS...]
  local folder=$1 json=$2; shift 2
  "$hostrun" bench perplexity "$folder" --device cpu --no-progress --text "$out/text.txt" --context 256 --output "$json" "$@" > /dev/null
}

lite "$model" --work-dir "$out/fp8" > "$out/lite.txt"
cat "$out/lite.txt"
grep -q "^wrote $out/fp8: FP8 e4m3 weights with a scale per output channel, dynamic activation scales" "$out/lite.txt" ||
  { echo "no summary line"; exit 1; }

if [ "$mode" = quality ]; then
  score "$model" "$out/bf16.json"
  score "$out/fp8" "$out/fp8.json"
  grep -q '"manifest": "llama3-cpu-fp8"' "$out/fp8.json" || { echo "the folder did not pick llama3-cpu-fp8"; exit 1; }
  b=$(num "$out/bf16.json" perplexity) f=$(num "$out/fp8.json" perplexity)
  echo "perplexity: bf16 $b, fp8 $f"
  awk -v f="$f" -v b="$b" 'BEGIN { exit !(f <= 1.01 * b) }' || { echo "FP8 costs more than 1% perplexity"; exit 1; }
  echo "lite fp8 quality: ok"
  exit 0
fi

for f in config.json model.safetensors tokenizer.json tokenizer_config.json generation_config.json; do
  [ -s "$out/fp8/$f" ] || { echo "$f missing from the folder"; ls -la "$out/fp8"; exit 1; }
done
[ -z "$(find "$out" -maxdepth 1 -name '.fp8.partial-*')" ] || { echo "the staging folder was left behind"; exit 1; }
tr -d ' \n' < "$out/fp8/config.json" > "$out/config.flat"
grep -q '"quantization_config":{"quant_method":"fp8","activation_scheme":"dynamic","fmt":"e4m3","ignored_layers":\["lm_head"\]}' \
  "$out/config.flat" || { echo "unexpected quantization_config"; cat "$out/fp8/config.json"; exit 1; }
# The safetensors header: e4m3 linears with [out, 1] f32 scales; the rest in the source's dtype.
header=$(dd if="$out/fp8/model.safetensors" bs=1 skip=8 count=200000 2>/dev/null | tr -d '\0')
entry() { printf '"%s":{"data_offsets":\\[[0-9]*,[0-9]*\\],"dtype":"%s","shape":\\[%s\\]' "$1" "$2" "$3"; }
for pattern in "$(entry model.layers.0.self_attn.q_proj.weight F8_E4M3 256,256)" \
               "$(entry model.layers.0.self_attn.q_proj.weight_scale F32 256,1)" \
               "$(entry model.layers.0.self_attn.k_proj.weight F8_E4M3 128,256)" \
               "$(entry model.layers.5.mlp.down_proj.weight F8_E4M3 256,768)" \
               "$(entry model.layers.5.mlp.down_proj.weight_scale F32 256,1)" \
               "$(entry model.layers.0.input_layernorm.weight BF16 256)" \
               "$(entry model.embed_tokens.weight BF16 128256,256)"; do
  grep -q "$pattern" <<< "$header" || { echo "header lacks $pattern"; exit 1; }
done

# The host runs it: a reply in chat, and perplexity through llama3-cpu-fp8.
reply=$(printf 'a word that means happy\n\n' | "$hostrun" chat "$out/fp8" --device cpu --temperature 0 --max-new-tokens 8 2>/dev/null |
        grep -v '^hostrun chat:' || true)
[ -n "$(tr -d ' \n' <<< "$reply")" ] || { echo "no reply from the FP8 folder"; exit 1; }
head -c 600 "$out/text.txt" > "$out/short.txt" && mv "$out/short.txt" "$out/text.txt"
score "$out/fp8" "$out/fp8.json" --model-format fp8
grep -q '"manifest": "llama3-cpu-fp8"' "$out/fp8.json" || { echo "the folder did not pick llama3-cpu-fp8"; exit 1; }
expect_refusal '--model-format hf: .* is a quantized folder (quantization_config.quant_method "fp8")' \
  score "$out/fp8" "$out/x.json" --model-format hf
expect_refusal '--model-format fp8: .* has no quantization_config' score "$model" "$out/x.json" --model-format fp8
expect_refusal '--model-format awq: .* is a fp8 folder' score "$out/fp8" "$out/x.json" --model-format awq

# An existing folder: kept without --force, replaced with it; a quantized source and overlaps refused.
expect_refusal "exists and is not empty; --force replaces it" lite "$model" --work-dir "$out/fp8"
lite "$model" --work-dir "$out/fp8/" --force > /dev/null  # "OUT/" is OUT
expect_refusal "--model-format hf: .* is a quantized folder" lite "$out/fp8" --work-dir "$out/x"
expect_refusal "overlap" lite "$model" --work-dir "$model/sub"
[ ! -e "$out/x" ] || { echo "a refused run left $out/x"; exit 1; }

# Layouts this plugin does not read: refused when the host loads them, naming the key.
variant() {  # variant NAME SED-EXPRESSION: a copy of the folder with config.json edited
  mkdir "$out/$1" && cp "$out/fp8"/* "$out/$1/" && sed -i "$2" "$out/$1/config.json"
}
variant block 's/"fmt": "e4m3",/"fmt": "e4m3", "weight_block_size": [128, 128],/'
expect_refusal 'weight_block_size is \[128,128\] (block-wise scales are another layout)' score "$out/block" "$out/x.json"
variant scheme 's/"activation_scheme": "dynamic"/"activation_scheme": "per_group"/'
expect_refusal 'activation_scheme is "per_group"' score "$out/scheme" "$out/x.json"
variant static 's/"activation_scheme": "dynamic"/"activation_scheme": "static"/'
expect_refusal 'activation_scheme "static" needs .*input_scale' score "$out/static" "$out/x.json"
echo "lite fp8 folder: ok"
