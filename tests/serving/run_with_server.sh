#!/usr/bin/env bash
# Starts `hostrun serve api_server` on a free loopback port, runs one node test
# file against it, and always stops the server (SIGTERM, then SIGKILL).
#   run_with_server.sh HOSTRUN MODEL_DIR NPM_DIR TEST_FILE [SERVER FLAGS...]
# The test gets HOSTRUN_URL, HOSTRUN_BIN, HOSTRUN_MODEL_DIR and HOSTRUN_SERVER_LOG.
# The server's clean exit on SIGTERM is part of the test.
set -u
hostrun=$1 model=$2 npm_dir=$3 test_file=$4
shift 4
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
log="$work/server.log"
server_pid=""
stop_server() {
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$server_pid" 2>/dev/null; then
    echo "FAIL: the server did not stop within 5 s of SIGTERM; killing it"
    kill -KILL "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
    server_pid=""
    return 1
  fi
  wait "$server_pid"
  local rc=$?
  server_pid=""
  if [ $rc -ne 0 ]; then echo "FAIL: the server exited with status $rc after SIGTERM"; return 1; fi
  return 0
}
cleanup() {
  stop_server >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

"$hostrun" serve api_server "$model" --server-name 127.0.0.1 --server-port 0 "$@" >"$log" 2>&1 &
server_pid=$!
url=""
for _ in $(seq 600); do  # 60 s to load the model and listen
  url=$(sed -n 's/.* on \(http:\/\/127\.0\.0\.1:[0-9]*\) .*/\1/p' "$log" | head -n 1)
  [ -n "$url" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "FAIL: the server did not start listening within 60 s; its output:"
  cat "$log"
  exit 1
fi
echo "server: $(head -n 1 "$log")"

# The test files import 'openai', which node resolves from the file's folder up.
cp "$here"/*.mjs "$npm_dir/"
HOSTRUN_URL=$url HOSTRUN_BIN=$hostrun HOSTRUN_MODEL_DIR=$model HOSTRUN_SERVER_LOG=$log \
  timeout 300 node --test --test-reporter=spec "$npm_dir/$(basename "$test_file")"
rc=$?
if ! stop_server; then rc=1; fi
if [ $rc -ne 0 ]; then
  echo "--- server output (last 40 lines) ---"
  tail -n 40 "$log"
fi
exit $rc
