#!/usr/bin/env bash
# AutoAWQ folders end to end on the CPU: the trained small model's linear
# layers rounded to 4-bit in AutoAWQ's GEMM format (hostrun-llama-checkpoint
# rtn-awq) and its dequantized twin (the same W as dense f32). The host picks
# llama3-cpu-awq from quantization_config by itself; the AWQ folder scores
# the text as its twin does (same weights, f32 sums in another order); greedy
# replies are the same; a folder in a layout the plugin does not read is
# refused naming the key.
#   awq_cpu.sh HOSTRUN HOSTRUN_LLAMA_CHECKPOINT SMALL_MODEL_DIR TEXT
set -euo pipefail
hostrun=$1 checkpoint=$2 model=$3 text_source=$4
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
head -c 2000 "$text_source" > "$out/text.txt"
field() { sed -n "s/^ *\"$2\": \"\\{0,1\\}\\([^,\"]*\\)\"\\{0,1\\},\\{0,1\\}$/\\1/p" "$1" | head -1; }

"$checkpoint" rtn-awq "$model" "$out/awq" --group-size 128 --dequantized-twin "$out/twin"
grep -q '"quant_method": "awq"' "$out/awq/config.json" || { echo "no quantization_config"; exit 1; }

score() { "$hostrun" bench perplexity "$1" --device cpu --no-progress --text "$out/text.txt" --context 64 --output "$2" > /dev/null; }
score "$out/awq" "$out/awq.json"
score "$out/twin" "$out/twin.json"
[ "$(field "$out/awq.json" manifest)" = llama3-cpu-awq ] || { echo "the AWQ folder did not pick llama3-cpu-awq"; cat "$out/awq.json"; exit 1; }
[ "$(field "$out/twin.json" manifest)" = llama3-cpu ] || { echo "the twin did not pick llama3-cpu"; exit 1; }
a=$(field "$out/awq.json" perplexity) b=$(field "$out/twin.json" perplexity)
echo "perplexity: AWQ folder $a, dequantized twin $b"
awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-4 * b) }' ||
  { echo "the AWQ folder and its dequantized twin disagree"; exit 1; }

# Greedy replies: the same words.
# (The banner names the folder: left out.)
ask() {
  printf 'a word that means happy\n\n' | "$hostrun" chat "$1" --device cpu --temperature 0 --max-new-tokens 24 2>/dev/null |
    grep -v '^hostrun chat:'
}
ask "$out/awq" > "$out/awq.reply"
ask "$out/twin" > "$out/twin.reply"
[ -s "$out/awq.reply" ] || { echo "no reply from the AWQ folder"; exit 1; }
cmp -s "$out/awq.reply" "$out/twin.reply" || { echo "greedy replies differ:"; diff "$out/awq.reply" "$out/twin.reply"; exit 1; }

# --model-format says what the folder must be: awq passes for the AWQ folder; hf is refused for it, awq for the twin.
score_as() { "$hostrun" bench perplexity "$1" --device cpu --no-progress --text "$out/text.txt" --context 64 --model-format "$2"; }
score_as "$out/awq" awq > /dev/null
if score_as "$out/awq" hf 2> "$out/hf.err" > /dev/null; then echo "--model-format hf took an AWQ folder"; exit 1; fi
grep -q -- '--model-format hf: .* is a quantized folder (quantization_config.quant_method "awq")' "$out/hf.err" ||
  { echo "unclear refusal:"; cat "$out/hf.err"; exit 1; }
if score_as "$out/twin" awq 2> "$out/twin.err" > /dev/null; then echo "--model-format awq took a dense folder"; exit 1; fi
grep -q -- '--model-format awq: .* has no quantization_config' "$out/twin.err" || { echo "unclear refusal:"; cat "$out/twin.err"; exit 1; }

# Layouts this plugin does not read: refused, naming the key.
mkdir "$out/gemv"
cp "$out/awq"/* "$out/gemv/"
sed -i 's/"version": "gemm"/"version": "gemv"/' "$out/gemv/config.json"
if "$hostrun" bench perplexity "$out/gemv" --device cpu --no-progress --text "$out/text.txt" --context 64 2> "$out/gemv.err" > /dev/null; then
  echo "a GEMV-layout folder was accepted"; exit 1
fi
grep -q 'version is "gemv"' "$out/gemv.err" || { echo "unclear refusal:"; cat "$out/gemv.err"; exit 1; }
echo "awq_cpu: ok"
