#!/usr/bin/env bash
# `hostrun serve api_client URL` through a pipe against `hostrun serve
# api_server` on a free loopback port: the streamed reply equals `hostrun chat`'s
# on the same model and seed (so every sampling control reaches the server),
# `end` resets, `exit` quits, the API key is sent, Ctrl-C cancels the request
# on the server, and an unreachable server is a clear error.
# Usage: api_client.sh HOSTRUN MODEL_DIR
set -u
hostrun=$1 model=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
source "$here/lib.sh"
trap 'stop_servers; rm -rf "$work"' EXIT
controls=(--temperature 1 --top-p 0.9 --top-k 50 --repetition-penalty 1.1 --seed 7 --max-new-tokens 12)
# reply FILE N: the reply to the Nth prompt as printed (prompts are echoed from a pipe).
reply() {
  python3 - "$@" <<'PY'
import sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
record = text.split(">>> ")[int(sys.argv[2])]
body = record.split("\n", 1)[-1]
print(repr(body.removesuffix("\n\ndouble enter to end input ")))
PY
}
metric() { curl -s "$api/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

start_server "$work/api.log" "$hostrun" serve api_server "$model" --server-name 127.0.0.1 --server-port 0 \
  --api-keys test-key || { fail "serve api_server started"; finish; exit; }
api=$server_url
client() { timeout 60 "$hostrun" serve api_client "$api" --api-key test-key "$@"; }

printf 'Tell me about the sea.\n\n' | "$hostrun" chat "$model" "${controls[@]}" >"$work/local" 2>&1
printf 'Tell me about the sea.\n\n' | client "${controls[@]}" >"$work/remote" 2>"$work/remote.err"
[ $? -eq 0 ] && ok "end of input ends api_client with status 0" || { fail "api_client exited non-zero"; cat "$work/remote.err"; }
grep -q "hostrun chat: tiny" "$work/remote" && ok "the banner names the server's model" || fail "banner: $(head -1 "$work/remote")"
local_reply=$(reply "$work/local" 1) remote_reply=$(reply "$work/remote" 1)
[ "$remote_reply" != "''" ] && [ "$remote_reply" = "$local_reply" ] \
  && ok "the streamed reply equals hostrun chat's with the same controls: $remote_reply" \
  || fail "api_client replied $remote_reply, hostrun chat $local_reply"
printf 'Tell me about the sea.\n\n' | timeout 60 "$hostrun" serve api_client "$model" "${controls[@]}" >"$work/folder" 2>&1
[ "$(reply "$work/folder" 1)" = "$local_reply" ] && ok "api_client on a local model folder replies as hostrun chat does" \
  || fail "api_client on $model replied $(reply "$work/folder" 1), hostrun chat $local_reply"

printf 'First question,\non two lines.\n\nend\n\nTell me about the sea.\n\nexit\n\nnot sent\n\n' \
  | client "${controls[@]}" >"$work/reset" 2>&1
[ $? -eq 0 ] && ok "exit quits with status 0" || fail "exit status"
grep -q "(conversation reset)" "$work/reset" && ok "end resets" || fail "no reset message"
[ "$(reply "$work/reset" 3)" = "$remote_reply" ] && ok "after 'end' the reply equals a fresh conversation's" \
  || fail "reply after reset $(reply "$work/reset" 3) differs from $remote_reply"
grep -q "not sent" "$work/reset" && fail "input after exit was sent" || ok "nothing after exit is sent"

# A request that cannot fit the server's context is refused before it is
# sent (the client knows max_model_len from /v1/models; a server's own 400 is
# tests/clients/test_remote_engine.cpp's case), with the numbers; the chat goes on.
printf 'Hello\n\nHello again\n\n' | client --max-new-tokens 100000 >"$work/toolong" 2>&1
status=$?
[ $status -eq 0 ] && [ "$(grep -c "max_tokens is 100000, but http://127.0.0.1:[0-9]* holds at most 8192 tokens" "$work/toolong")" -eq 2 ] \
  && ok "a refused request shows the server's message and the chat goes on" || { fail "over-long request: status $status"; cat "$work/toolong"; }

printf 'Hello\n\n' | timeout 30 "$hostrun" serve api_client "$api" >"$work/nokey" 2>&1
status=$?
[ $status -ne 0 ] && grep -q "401" "$work/nokey" && grep -q -- "--api-key" "$work/nokey" \
  && ok "without the key: status $status and the server's refusal: $(tail -1 "$work/nokey")" \
  || fail "without the key: status $status, $(cat "$work/nokey")"

# Stopped mid-reply (SIGTERM: a background job of a script ignores SIGINT, and
# hostrun treats both alike): the client closes its connection, the server cancels.
before=$(metric hostrun_requests_cancelled_total)
mkfifo "$work/input"
"$hostrun" serve api_client "$api" --api-key test-key --temperature 1 --max-new-tokens 4000 <"$work/input" >"$work/long" 2>&1 &
client_pid=$!
exec 3>"$work/input"
printf 'Write a very long story.\n\n' >&3
for _ in $(seq 1 100); do [ "$(wc -c <"$work/long")" -gt 400 ] && break; sleep 0.1; done
kill -TERM "$client_pid"
ended=no
for _ in $(seq 1 50); do kill -0 "$client_pid" 2>/dev/null || { ended=yes; break; }; sleep 0.1; done
exec 3>&-
[ $ended = yes ] && ok "a stop signal ends api_client mid-reply within 5 s" || { fail "api_client still runs after SIGTERM"; kill -KILL "$client_pid"; }
wait "$client_pid" 2>/dev/null
after=$before
for _ in $(seq 1 50); do after=$(metric hostrun_requests_cancelled_total); [ "${after:-0}" != "${before:-0}" ] && break; sleep 0.1; done
[ -n "$after" ] && awk -v a="$after" -v b="${before:-0}" 'BEGIN{exit !(a > b)}' \
  && ok "the server cancelled the request (hostrun_requests_cancelled_total $before -> $after)" \
  || fail "the server did not count a cancel (hostrun_requests_cancelled_total $before -> $after)"

stop_checked  # the server exits 0; then it is unreachable
printf 'Hello\n\n' | timeout 30 "$hostrun" serve api_client "$api" >"$work/down" 2>&1
status=$?
[ $status -ne 0 ] && grep -q "Connecting to $api" "$work/down" \
  && ok "an unreachable server: status $status, $(tail -1 "$work/down")" || fail "unreachable server: status $status, $(cat "$work/down")"
timeout 10 "$hostrun" serve api_client "ftp://example" >"$work/bad" 2>&1
[ $? -eq 2 ] && grep -q "expected http://" "$work/bad" && ok "a URL that is not http(s) is refused: $(cat "$work/bad")" \
  || fail "bad URL: $(cat "$work/bad")"
finish
