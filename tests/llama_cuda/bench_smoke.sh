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
echo "bench smoke: ok"
