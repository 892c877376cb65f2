#!/usr/bin/env bash
# Admission control on the real api_server (tiny CPU model): with one sequence
# in the batch and room for one waiting request, a third concurrent request is
# refused with 429, Retry-After and OpenAI's error shape; a request over the
# time limit ends with an error in its stream; /metrics counts both; the
# server then answers an ordinary request and its queue and KV gauges are back
# to zero.
#   admission.sh HOSTRUN MODEL_DIR
set -u
hostrun=$1 model=$2
work=$(mktemp -d)
failures=0 passes=0
ok() { echo "ok: $1"; passes=$((passes+1)); }
fail() { echo "FAIL: $1"; failures=$((failures+1)); }
"$hostrun" serve api_server "$model" --server-name 127.0.0.1 --server-port 0 --max-batch-size 1 \
  --max-queued-requests 1 --request-timeout 2 >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
url=""
for _ in $(seq 600); do
  url=$(sed -n 's/.* on \(http:\/\/127\.0\.0\.1:[0-9]*\) .*/\1/p' "$work/server.log" | head -n 1)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "FAIL: the server did not start"; cat "$work/server.log"; exit 1; }
long='{"prompt": "tell me everything", "max_tokens": 8000, "ignore_eos": true, "stream": true}'
post() { curl -s -N -o "$1" -D "$1.headers" -w '%{http_code}' -H 'Content-Type: application/json' -d "$2" "$url/v1/completions"; }
post "$work/a" "$long" >"$work/a.code" &
a=$!
for _ in $(seq 100); do grep -q 'data:' "$work/a" 2>/dev/null && break; sleep 0.05; done
post "$work/b" "$long" >"$work/b.code" &
b=$!
sleep 0.5  # b is now waiting for the one place in the batch
code=$(post "$work/c" "$long")
[ "$code" = 429 ] && ok "a request beyond the queue gets 429" || fail "the third request got $code: $(cat "$work/c")"
grep -qi '^retry-after: 1' "$work/c.headers" && ok "with Retry-After" || fail "no Retry-After: $(cat "$work/c.headers")"
grep -q '"error"' "$work/c" && grep -q 'max_queued_requests' "$work/c" && ok "in OpenAI's error shape, naming the setting" \
  || fail "body: $(cat "$work/c")"
wait $a $b
grep -q 'time limit' "$work/a" && ok "a request past its time limit ends with an error in its stream" \
  || fail "stream a did not end by the time limit: $(tail -c 300 "$work/a")"
metrics=$(curl -s "$url/metrics")
echo "$metrics" | grep -q '^hostrun_requests_rejected_total 1' && ok "/metrics counts the refusal" || fail "metrics: rejected"
echo "$metrics" | grep -q '^hostrun_requests_timed_out_total 2' && ok "/metrics counts both timeouts" || fail "metrics: timed out: $(echo "$metrics" | grep timed_out)"
code=$(curl -s -o "$work/d" -w '%{http_code}' -H 'Content-Type: application/json' \
  -d '{"prompt": "hello", "max_tokens": 4}' "$url/v1/completions")
[ "$code" = 200 ] && ok "the next ordinary request is answered" || fail "then got $code: $(cat "$work/d")"
metrics=$(curl -s "$url/metrics")
echo "$metrics" | grep -q '^hostrun_requests_waiting 0' && echo "$metrics" | grep -q '^hostrun_kv_blocks_used 0' \
  && ok "queue and KV gauges are back to 0" || fail "gauges: $(echo "$metrics" | grep -E 'waiting|blocks_used')"
echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
