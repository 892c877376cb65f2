#!/usr/bin/env bash
# Builds (once) and runs the two libFuzzer targets for a bounded time.
# Usage: run_fuzzers.sh BUILD_DIR FUZZ_DIR CLANGXX   (FUZZ_SECONDS overrides 20 s each)
set -u
build=$1 fuzz=$2 clang=${3:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
seconds=${FUZZ_SECONDS:-20}
if [ -z "$clang" ] || [[ "$clang" == *NOTFOUND ]]; then
  echo "FAIL: no clang++ was found at configure time; the fuzzers need clang with libFuzzer (apt-get install clang)"
  echo "0 passed, 1 failed"; exit 1
fi
if ! cmake --build "$build" --target tokenizer_fuzzers -j 2 >"$fuzz.build.log" 2>&1; then
  echo "FAIL: building the fuzzers:"; tail -n 30 "$fuzz.build.log"; echo "0 passed, 1 failed"; exit 1
fi
if ! models=$("$root/scripts/fetch-tokenizer.sh" 2>&1); then
  echo "FAIL: the encoder fuzzer needs the real tokenizer: $models"; echo "0 passed, 1 failed"; exit 1
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/loader" "$work/encode"
node "$here/fuzz_seed.cjs" "$work/loader/seed.json"
printf '\x01Hello <|eot_id|> world' >"$work/encode/seed1"
printf '\x00  \t\r\n12345 caf\xc3\xa9 \xe2\x82' >"$work/encode/seed2"
passes=0 failures=0
run() {  # run NAME BINARY CORPUS EXTRA...
  local name=$1 binary=$2 corpus=$3; shift 3
  if HOSTRUN_TOKENIZER_DIR="$models" "$binary" "$corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
       -print_final_stats=1 -artifact_prefix="$fuzz/" "$@" >"$work/$name.log" 2>&1; then
    echo "ok: $name ($(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/$name.log" | grep -o '[0-9]*$') runs in ${seconds} s)"
    passes=$((passes+1))
  else
    echo "FAIL: $name"; grep -v '^#' "$work/$name.log" | tail -n 40; failures=$((failures+1))
    ls "$work"/crash-* "$PWD"/crash-* 2>/dev/null
  fi
}
run fuzz_loader "$fuzz/fuzz_loader" "$work/loader" -max_len=16384
run fuzz_encode "$fuzz/fuzz_encode" "$work/encode" -max_len=4096
echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
