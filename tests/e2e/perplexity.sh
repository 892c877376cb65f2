#!/usr/bin/env bash
# `hostrun bench perplexity` on the random tiny model (CPU): a random model
# is about as unsure as a uniform guess over its 128256 ids, so its perplexity
# is near 128256; the JSON holds the figures; the same text scored with other
# windows, batch sizes and KV blocks gives nearly the same figure; bad
# arguments end with a message and status 2, before any model is loaded when
# they can.
#   perplexity.sh HOSTRUN TINY_MODEL_DIR TEXT
set -euo pipefail
hostrun=$1 model=$2 text_source=$3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
head -c 1500 "$text_source" > "$out/text.txt"
run() { "$hostrun" bench perplexity "$model" --device cpu --no-progress "$@"; }
field() { sed -n "s/^  \"$2\": \\([^,]*\\),\\?$/\\1/p" "$1"; }

run --text "$out/text.txt" --context 64 --output "$out/a.json" > "$out/a.txt"
cat "$out/a.txt"
ppl=$(field "$out/a.json" perplexity)
awk -v p="$ppl" 'BEGIN { exit !(p > 0.7 * 128256 && p < 1.3 * 128256) }' ||
  { echo "random model perplexity $ppl is not near 128256"; exit 1; }
for key in perplexity_stderr mean_nll mean_nll_stderr scored_tokens text_tokens windows elapsed_s tokens_per_s; do
  v=$(field "$out/a.json" "$key")
  awk -v v="$v" 'BEGIN { exit !(v > 0) }' || { echo "$key is '$v' in a.json"; cat "$out/a.json"; exit 1; }
done
[ "$(field "$out/a.json" scored_tokens)" = "$(field "$out/a.json" text_tokens)" ] || { echo "not every token scored"; exit 1; }
[ "$(field "$out/a.json" stride)" = 32 ] || { echo "default stride of context 64 is not 32"; exit 1; }
[ "$(field "$out/a.json" bos)" = 128000 ] || { echo "windows do not start with Llama-3's BOS"; exit 1; }
grep -q '^perplexity  *[0-9.]* +/- [0-9.]*$' "$out/a.txt" || { echo "no perplexity line"; exit 1; }

# The same windows one at a time, in small KV blocks and prefill chunks: the same figure up to float rounding.
run --text "$out/text.txt" --context 64 --max-in-flight 1 --cache-block-seq-len 16 --max-prefill-token-num 20 \
  --output "$out/b.json" > /dev/null
awk -v a="$ppl" -v b="$(field "$out/b.json" perplexity)" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-4 * a) }' ||
  { echo "batched and one-at-a-time runs disagree"; exit 1; }

# An int8 KV cache (--quant-policy 8): recorded in the JSON, and within 1% of the f32 pages' figure.
run --text "$out/text.txt" --context 64 --quant-policy 8 --output "$out/int8.json" > /dev/null
grep -q '"kv_format": "int8"' "$out/int8.json" || { echo "no int8 KV format in the JSON"; cat "$out/int8.json"; exit 1; }
awk -v a="$ppl" -v b="$(field "$out/int8.json" perplexity)" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-2 * a) }' ||
  { echo "int8 KV perplexity $(field "$out/int8.json" perplexity) is not within 1% of $ppl"; exit 1; }

expect_refusal() {  # WHAT-THE-MESSAGE-SAYS ARGS...
  local want=$1; shift
  set +e
  "$hostrun" bench perplexity "$@" > "$out/refused.txt" 2>&1
  local rc=$?
  set -e
  if [ "$rc" -eq 0 ] || ! grep -q -- "$want" "$out/refused.txt"; then
    echo "expected a refusal saying '$want' (status $rc):"; cat "$out/refused.txt"; exit 1
  fi
}
: > "$out/empty.txt"
mkfifo "$out/fifo"
expect_refusal "--text is required" "$model" --device cpu
expect_refusal "no such file" "$model" --device cpu --text "$out/missing.txt"
expect_refusal "empty" "$model" --device cpu --text "$out/empty.txt"
expect_refusal "not a regular file" "$model" --device cpu --text "$out/fifo"
expect_refusal "not a regular file" "$model" --device cpu --text "$out"
expect_refusal "--context 1: a window needs at least 2 tokens" "$model" --device cpu --text "$out/text.txt" --context 1
expect_refusal "--stride 64: expected 1 to 63" "$model" --device cpu --text "$out/text.txt" --context 64 --stride 64
expect_refusal "over the session length of 32" "$model" --device cpu --text "$out/text.txt" --context 64 --session-len 32
expect_refusal "quant_policy.*found 3" "$model" --device cpu --text "$out/text.txt" --quant-policy 3
expect_refusal "--model-format awq: .* has no quantization_config in its config.json" "$model" \
  --device cpu --text "$out/text.txt" --model-format awq
expect_refusal "not a model folder" "$out/text.txt" --device cpu --text "$out/text.txt"
echo "perplexity: ok"
