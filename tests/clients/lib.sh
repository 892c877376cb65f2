# Shared by the client tests: start servers on free loopback ports, always
# stop them, count checks. Source it; set `work` first (a scratch folder).
failures=0 passes=0
server_pids=() server_logs=()
ok() { echo "ok: $1"; passes=$((passes+1)); }
fail() { echo "FAIL: $1"; failures=$((failures+1)); }

# start_server LOG COMMAND...: runs COMMAND (which must print "... on http(s)://HOST:PORT")
# in the background and sets server_url; fails when no address shows within 60 s.
start_server() {
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  local pid=$!
  server_pids+=("$pid") server_logs+=("$log")
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
  server_pids=() server_logs=()
}

# stop_checked: SIGTERM every server started; each must still be running and
# exit 0 within STOP_WAIT_SECONDS (default 10: a Release server takes well
# under 1 s, the ASan build a few on a busy machine, freeing its KV cache and
# checking for leaks). A crash, a hang, or a sanitizer report (the ASan build
# aborts on a leak or an error at exit) fails, with the end of that server's
# output.
stop_checked() {
  local i pid rc log alive=()
  for i in "${!server_pids[@]}"; do
    if kill -TERM "${server_pids[$i]}" 2>/dev/null; then alive[$i]=yes; else alive[$i]=no; fi
  done
  for i in "${!server_pids[@]}"; do
    pid=${server_pids[$i]} log=${server_logs[$i]}
    for _ in $(seq 1 $((${STOP_WAIT_SECONDS:-10} * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
      fail "server $pid did not stop within ${STOP_WAIT_SECONDS:-10} s of SIGTERM"
    else
      wait "$pid"; rc=$?
      if [ "${alive[$i]}" = no ]; then
        fail "server $pid had died before it was stopped (status $rc)"
      elif [ "$rc" -eq 0 ]; then
        ok "server $pid exited 0 on SIGTERM"; continue
      else
        fail "server $pid exited $rc on SIGTERM"
      fi
    fi
    # A sanitizer's report is read from its start (the access, then where the memory came from).
    local report
    report=$(grep -n -m 1 -E '^==[0-9]+==(ERROR|WARNING)|^Tracer caught' "$log" | cut -d: -f1)
    if [ -n "$report" ]; then
      echo "--- output of server $pid ($log from line $report) ---"; tail -n "+$report" "$log" | head -n 150
    else
      echo "--- output of server $pid (last 40 lines of $log) ---"; tail -n 40 "$log"
    fi
  done
  server_pids=() server_logs=()
}

finish() {
  echo "$passes passed, $failures failed"
  [ "$failures" -eq 0 ]
}
