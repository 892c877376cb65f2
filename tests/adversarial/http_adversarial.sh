#!/usr/bin/env bash
# Hostile HTTP against the real servers on the tiny model (issue 19 items 3,
# 6, 7, 10, 11): request smuggling, cross-site requests and DNS rebinding,
# unclaimed Gradio jobs and their caps, the Gradio bridge's keys. Every case
# asserts the clear 4xx (or the cancellation), then that the server still
# answers an ordinary request; every server must exit 0 on SIGTERM.
# Usage: http_adversarial.sh HOSTRUN MODEL_DIR NPM_DIR   (NPM_DIR: tests/clients' packages)
set -u
hostrun=$1 model=$2 npm_dir=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
source "$here/../clients/lib.sh"
trap 'stop_servers; rm -rf "$work"' EXIT

# run_node NAME SCRIPT ARGS...: one .mjs file, its checks shown, counted as one check.
run_node() {
  local name=$1 script=$2; shift 2
  if timeout 120 node "$here/$script" "$@" >"$work/node.log" 2>&1; then ok "$name"; else fail "$name"; fi
  sed "s/^/  [$name] /" "$work/node.log"
}
# --- api_server, and the Gradio bridge over it (keys from a manifest) ------
completion='{"prompt":"Hi","max_tokens":1}'
if start_server "$work/api.log" "$hostrun" serve api_server "$model" --server-name 127.0.0.1 --server-port 0 \
     --allowed-hosts chat.example.test; then
  api_url=$server_url
  run_node "api_server: request framing" http_framing.mjs "$api_url" /v1/completions "$completion" /health
  run_node "api_server: cross-site requests" http_cross_site.mjs "$api_url" api_server
  cat >"$work/bridge.toml" <<'TOML'
[frontend]
plugin = "gradio"
api_keys = ["bridge-key"]
max_jobs = 3
max_jobs_per_session = 2
TOML
  if start_server "$work/bridge.log" "$hostrun" serve gradio "$api_url" --server-name 127.0.0.1 --server-port 0 \
       --manifest "$work/bridge.toml"; then
    bridge=$server_url
    join='{"data":["Hi",[],"",0,1,1],"fn_index":1,"session_hash":"framing"}'
    run_node "gradio: request framing" http_framing.mjs "$bridge" /gradio_api/queue/join "$join" /config bridge-key
    run_node "gradio: cross-site requests" http_cross_site.mjs "$bridge" gradio bridge-key
    run_node "gradio: keys" http_gradio_keys.mjs "$bridge" "$npm_dir" bridge-key
    run_node "gradio: unclaimed jobs are cancelled, jobs capped" http_gradio_jobs.mjs "$bridge" "$api_url" bridge-key
  else
    fail "serve gradio URL --manifest (keys) started"
  fi
else
  fail "serve api_server started"
fi
stop_checked

# --- caps on undelivered messages (local engine) ---------------------------
for cap in max_pending_bytes_per_session:1 max_pending_bytes:2; do
  setting=${cap%:*} sessions=${cap#*:}
  if start_server "$work/pending.log" "$hostrun" serve gradio "$model" --server-name 127.0.0.1 --server-port 0 \
       --set "frontend.$setting=4096"; then
    run_node "gradio: $setting" http_gradio_pending.mjs "$server_url" "$setting" "$sessions"
  else
    fail "serve gradio --set frontend.$setting=4096 started"
  fi
  stop_checked
done

# --- the manifest key: api_server with [frontend] api_keys, nothing on the command line
{ cat "$here/../../manifests/llama3-cpu.toml"; printf '\n[frontend]\napi_keys = ["manifest-key"]\n'; } >"$work/keys.toml"
if start_server "$work/keyed.log" "$hostrun" serve api_server "$model" --server-name 127.0.0.1 --server-port 0 \
     --manifest "$work/keys.toml"; then
  statuses=$(node --input-type=module -e '
    const url = process.argv[1] + "/v1/models";
    const none = await fetch(url), keyed = await fetch(url, { headers: { authorization: "Bearer manifest-key" } });
    console.log(none.status, keyed.status);' "$server_url")
  [ "$statuses" = "401 200" ] && ok "api_server takes its key from the manifest (401 without, 200 with)" ||
    fail "api_server with the manifest key: $statuses"
else
  fail "serve api_server --manifest (keys) started"
fi
stop_checked

# --- what the command line says ---------------------------------------------
if start_server "$work/cors.log" "$hostrun" serve api_server "$model" --server-name 127.0.0.1 --server-port 0 \
     --allow-origins '*' --allow-credentials; then
  grep -q "allow_origins '\*' with allow_credentials" "$work/cors.log" &&
    ok "--allow-origins '*' --allow-credentials is warned about" || fail "no warning in: $(cat "$work/cors.log")"
fi
stop_checked
# Nothing listens at port 9, so these end before any server starts.
"$hostrun" serve gradio http://127.0.0.1:9 --server-name 0.0.0.0 --server-port 0 --api-key k >"$work/cli.log" 2>&1
grep -q "anyone who reaches 0.0.0.0:0 uses http://127.0.0.1:9 with your --api-key" "$work/cli.log" &&
  ok "a bridge that lends its --api-key to every interface without keys of its own is warned about" ||
  fail "no warning in: $(cat "$work/cli.log")"
"$hostrun" serve gradio http://127.0.0.1:9 --set engine.session_len=64 >"$work/cli.log" 2>&1
[ $? -eq 2 ] && grep -q "only frontend settings apply" "$work/cli.log" &&
  ok "--set engine.* with a URL is refused" || fail "--set engine.* with a URL: $(cat "$work/cli.log")"
printf '[engine]\nsession_len = 64\n[frontend]\nplugin = "gradio"\n' >"$work/engine.toml"
"$hostrun" serve gradio http://127.0.0.1:9 --manifest "$work/engine.toml" >"$work/cli.log" 2>&1
[ $? -eq 2 ] && grep -q "\[engine\] configures a local engine" "$work/cli.log" &&
  ok "a manifest with [engine] and a URL is refused" || fail "[engine] with a URL: $(cat "$work/cli.log")"
printf '[frontend]\nplugin = "gradio"\napi_keys = ["a", ""]\n' >"$work/empty.toml"
"$hostrun" serve gradio http://127.0.0.1:9 --manifest "$work/empty.toml" >"$work/cli.log" 2>&1
[ $? -eq 1 ] && grep -q "key 2 of 2 is empty" "$work/cli.log" &&
  ok "an empty key is refused at start" || fail "an empty key: $(cat "$work/cli.log")"
# `--api-keys ""` would otherwise be no keys at all: no authentication.
for command in "serve api_server $model" "serve gradio http://127.0.0.1:9"; do
  "$hostrun" $command --api-keys "" >"$work/cli.log" 2>&1
  [ $? -eq 2 ] && grep -q "api-keys was given an empty key" "$work/cli.log" &&
    ok "$command --api-keys '' is refused" || fail "$command --api-keys '': $(cat "$work/cli.log")"
done
finish
