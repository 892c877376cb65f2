#!/usr/bin/env bash
# `hostrun bench serving URL` against a local api_server with a handful of
# prompts: it finishes, every reply has its output_len (ignore_eos reaches the
# server), the numbers are there and the JSON report is valid. A second run
# with --tokenizer and the chat endpoint checks the exact prompt lengths.
# Usage: bench_serving.sh HOSTRUN MODEL_DIR
set -u
hostrun=$1 model=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
source "$here/lib.sh"
trap 'stop_servers; rm -rf "$work"' EXIT

start_server "$work/api.log" "$hostrun" serve api_server "$model" --server-name 127.0.0.1 --server-port 0 \
  || { fail "serve api_server started"; finish; exit; }
printf 'input_len,output_len\n16,8\n40,12\n24,6\n8,10\n' >"$work/workload.csv"

# check_report FILE EXPECTED_REQUESTS MODE: validates the JSON report.
check_report() {
  python3 - "$@" <<'PY'
import json, sys
path, expected, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
report = json.load(open(path))
problems = []
def need(cond, what):
    if not cond: problems.append(what)
need(report["completed"] == expected and report["failed"] == 0, f"completed {report['completed']}, failed {report['failed']}; expected {expected}, 0")
rows = report["requests"]
need(len(rows) == expected, f"{len(rows)} request rows; expected {expected}")
need(all(r["completion_tokens"] == r["output_len"] for r in rows), "a reply's completion_tokens differs from its output_len")
need(report["completion_tokens"] == sum(r["output_len"] for r in rows), "completion_tokens is not the sum of output_len")
need(report["token_counts"] == "server usage", f"token counts: {report['token_counts']}")
for key in ("ttft_ms", "itl_ms", "tpot_ms", "latency_ms"):
    d = report[key]
    need(all(k in d for k in ("mean", "p50", "p75", "p95", "p99")), f"{key} lacks a percentile")
    need(0 < d["p50"] <= d["p99"], f"{key}: p50 {d['p50']} p99 {d['p99']}")
need(report["request_throughput"] > 0 and report["output_token_throughput"] > 0, "throughput is zero")
if mode == "exact":
    # BOS (+ the chat template's tokens) on top of the exact input_len ids.
    extra = {r["prompt_tokens"] - r["input_len"] for r in rows}
    need(len(extra) == 1 and 0 <= min(extra) < 64, f"prompt_tokens - input_len is not one small constant: {sorted(extra)}")
else:
    need(all(abs(r["prompt_tokens"] - r["input_len"]) <= 2 + r["input_len"] // 10 for r in rows),
         "word prompts are off their input_len by more than 10%: " + str([(r["input_len"], r["prompt_tokens"]) for r in rows]))
print("; ".join(problems) if problems else f"{expected} requests, {report['completion_tokens']} completion tokens, "
      f"TTFT p50 {report['ttft_ms']['p50']:.1f} ms, ITL p50 {report['itl_ms']['p50']:.1f} ms")
sys.exit(1 if problems else 0)
PY
}

timeout 120 "$hostrun" bench serving "$server_url" --dataset "$work/workload.csv" --num-prompts 6 --concurrency 3 \
  --output "$work/words.json" >"$work/words.out" 2>"$work/words.err"
status=$?
[ $status -eq 0 ] && ok "bench serving (word prompts, /v1/completions) exits 0" || { fail "bench serving exited $status"; cat "$work/words.err"; }
grep -q "Time to first token" "$work/words.out" && grep -q "Request throughput" "$work/words.out" \
  && ok "the report table is printed" || { fail "no report table"; cat "$work/words.out"; }
grep -q "6/6 requests" "$work/words.err" && ok "progress goes to stderr" || { fail "no progress on stderr"; cat "$work/words.err"; }
result=$(check_report "$work/words.json" 6 words) && ok "the JSON report: $result" || fail "the JSON report: $result"

timeout 120 "$hostrun" bench serving "$server_url" --dataset "$work/workload.csv" --num-prompts 4 --concurrency 4 \
  --endpoint chat --tokenizer "$model" --output "$work/exact.json" >"$work/exact.out" 2>&1
status=$?
[ $status -eq 0 ] && ok "bench serving (--tokenizer, chat endpoint) exits 0" || { fail "exited $status"; cat "$work/exact.out"; }
result=$(check_report "$work/exact.json" 4 exact) && ok "exact prompt lengths: $result" || fail "exact prompt lengths: $result"

timeout 30 "$hostrun" bench serving "$server_url" --dataset /nonexistent.csv >"$work/bad.out" 2>&1
[ $? -eq 2 ] && grep -q "cannot open the dataset" "$work/bad.out" && ok "a missing dataset is a usage error" \
  || fail "missing dataset: $(cat "$work/bad.out")"
stop_checked
finish
