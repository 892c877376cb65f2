#!/usr/bin/env bash
# @gradio/client against `hostrun serve gradio`, twice: over the local engine
# (MODEL_DIR) and over a remote one (an api_server's URL).
# Usage: gradio_client.sh HOSTRUN MODEL_DIR NPM_DIR
set -u
hostrun=$1 model=$2 npm_dir=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
source "$here/lib.sh"
trap 'stop_servers; rm -rf "$work"' EXIT

run_client() {
  if timeout 150 node "$here/gradio_client.mjs" "$1" "$npm_dir" >"$work/client.log" 2>&1; then
    ok "$2: @gradio/client streams a reply from /chat"
  else
    fail "$2: @gradio/client"
  fi
  sed "s/^/  [$2] /" "$work/client.log"
}

if start_server "$work/local.log" "$hostrun" serve gradio "$model" --server-name 127.0.0.1 --server-port 0; then
  run_client "$server_url" "local engine"
else
  fail "serve gradio MODEL_DIR started"
fi
# Each server must exit 0 on SIGTERM: in the ASan build a leak found at exit fails here.
stop_checked

if start_server "$work/api.log" "$hostrun" serve api_server "$model" --server-name 127.0.0.1 --server-port 0; then
  api_url=$server_url
  if start_server "$work/remote.log" "$hostrun" serve gradio "$api_url" --server-name 127.0.0.1 --server-port 0; then
    grep -q "remote" "$work/remote.log" && ok "the bridge says its engine is remote" || fail "no 'remote' in: $(cat "$work/remote.log")"
    run_client "$server_url" "remote engine"
  else
    fail "serve gradio URL started"
  fi
else
  fail "serve api_server started"
fi
stop_checked
finish
