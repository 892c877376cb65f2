#!/usr/bin/env bash
# Hostile JSON against the real servers on the tiny model (issue 19 items 1, 2
# and 9): `serve api_server` and `serve gradio MODEL_DIR` each get values
# nested 75,000 deep in every field they check and a 16 MiB body of empty
# arrays (json_bombs.mjs sends them and measures). Each server must answer
# 4xx, keep serving, grow its peak RSS by less than JSON_BOMBS_MAX_GROWTH_MB
# (100), and exit 0 on SIGTERM at the end (a crashed server does not).
#   json_bombs.sh HOSTRUN MODEL_DIR
set -u
hostrun=$1 model=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
source "$here/../clients/lib.sh"
trap 'stop_servers; rm -rf "$work"' EXIT

if ! start_server "$work/api.log" "$hostrun" serve api_server "$model" --server-name 127.0.0.1 --server-port 0; then
  fail "serve api_server started"; finish; exit
fi
api_url=$server_url api_pid=${server_pids[-1]}
if ! start_server "$work/gradio.log" "$hostrun" serve gradio "$model" --server-name 127.0.0.1 --server-port 0; then
  fail "serve gradio started"; finish; exit
fi
gradio_url=$server_url gradio_pid=${server_pids[-1]}

if timeout 240 node "$here/json_bombs.mjs" "$api_url" "$api_pid" "$gradio_url" "$gradio_pid" >"$work/bombs.log" 2>&1; then
  ok "json_bombs.mjs"
else
  fail "json_bombs.mjs"
fi
cat "$work/bombs.log"
if [ "$failures" -gt 0 ]; then
  echo "--- api_server output (last 20 lines) ---"; tail -n 20 "$work/api.log"
  echo "--- gradio output (last 20 lines) ---"; tail -n 20 "$work/gradio.log"
fi
# Both must still be running, and exit 0 on SIGTERM (lib.sh; a crashed server does not).
stop_checked
finish
