#!/usr/bin/env bash
# `hostrun bench throughput` and `bench latency` on the tiny model (CPU), and
# the JSON each writes: the numbers must be there and make sense.
#   bench_smoke.sh HOSTRUN MODEL_DIR DATASET_CSV
set -euo pipefail
hostrun=$1 model=$2 dataset=$3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$hostrun" bench throughput "$model" --device cpu --dataset "$dataset" --num-prompts 5 --concurrency 2 \
  --no-progress --output "$out/throughput.json"
"$hostrun" bench latency "$model" --device cpu --input-len 8 --output-len 6 --runs 2 --no-progress \
  --output "$out/latency.json"
check() {  # FILE KEY: the key is there with a positive number
  grep -Eq "\"$2\": [0-9.e+-]+" "$1" || { echo "missing $2 in $1:"; cat "$1"; exit 1; }
  grep -Eq "\"$2\": 0(\.0+)?(,|$)" "$1" && { echo "$2 is zero in $1:"; cat "$1"; exit 1; } || true
}
for key in completion_token_throughput total_token_throughput rps rpm prompt_tokens p50 p99 avg; do
  check "$out/throughput.json" "$key"
done
grep -q '"completion_tokens": 25' "$out/throughput.json" || { echo "expected 25 completion tokens"; cat "$out/throughput.json"; exit 1; }
grep -q '"failed": 0' "$out/throughput.json" || { echo "failed requests"; exit 1; }
check "$out/latency.json" mean
check "$out/latency.json" weight_bytes
check "$out/throughput.json" weight_bytes
grep -q '"kv_format": "f32"' "$out/throughput.json" || { echo "expected kv_format f32"; cat "$out/throughput.json"; exit 1; }
# --quant-policy 8 and 4: the same report with the quantized KV format, and more blocks from the same memory.
blocks() { grep -Eo '"kv_blocks": [0-9]+' "$1" | grep -Eo '[0-9]+'; }
for policy in 8 4; do
  "$hostrun" bench throughput "$model" --device cpu --dataset "$dataset" --num-prompts 5 --concurrency 2 \
    --quant-policy "$policy" --no-progress --output "$out/q$policy.json" >"$out/q$policy.txt"
  grep -q "\"kv_format\": \"int$policy\"" "$out/q$policy.json" || { echo "expected kv_format int$policy"; cat "$out/q$policy.json"; exit 1; }
  grep -q "\"quant_policy\": $policy" "$out/q$policy.json" || { echo "expected quant_policy $policy"; exit 1; }
  grep -q "^KV cache *int$policy, " "$out/q$policy.txt" || { echo "the report names no int$policy KV cache"; cat "$out/q$policy.txt"; exit 1; }
  grep -q '"completion_tokens": 25' "$out/q$policy.json" || { echo "int$policy: expected 25 completion tokens"; exit 1; }
  [ "$(blocks "$out/q$policy.json")" -gt "$(blocks "$out/throughput.json")" ] ||
    { echo "int$policy: no more blocks than f32 pages"; exit 1; }
done
if "$hostrun" bench throughput "$model" --device cpu --num-prompts 1 --quant-policy 3 --no-progress 2>"$out/bad.txt"; then
  echo "--quant-policy 3 was accepted"; exit 1
fi
grep -q "quant_policy.*expected 0.*8 (int8) or 4 (int4), found 3" "$out/bad.txt" || { echo "unclear refusal:"; cat "$out/bad.txt"; exit 1; }
echo "bench smoke: ok"
