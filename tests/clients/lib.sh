# Shared by the client tests: start servers on free loopback ports, always
# stop them, count checks. Source it; set `work` first (a scratch folder).
failures=0 passes=0
server_pids=()
ok() { echo "ok: $1"; passes=$((passes+1)); }
fail() { echo "FAIL: $1"; failures=$((failures+1)); }

# start_server LOG COMMAND...: runs COMMAND (which must print "... on http(s)://HOST:PORT")
# in the background and sets server_url; fails when no address shows within 60 s.
start_server() {
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  local pid=$!
  server_pids+=("$pid")
  server_url=
  for _ in $(seq 1 300); do
    server_url=$(grep -o 'on https\?://[0-9.]*:[0-9]*' "$log" | head -1 | sed 's/^on //')
    [ -n "$server_url" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  echo "FAIL: the server did not start: $*"; cat "$log"
  return 1
}

# SIGTERM, then SIGKILL for any server that has not ended within 5 s.
stop_servers() {
  local pid
  for pid in "${server_pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${server_pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  server_pids=()
}

finish() {
  echo "$passes passed, $failures failed"
  [ "$failures" -eq 0 ]
}
