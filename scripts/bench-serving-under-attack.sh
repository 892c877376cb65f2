#!/usr/bin/env bash
# Load under attack (issue 19): `serve api_server` on the tiny CPU model with
# 1,000 concurrent streams, a third of their clients killed mid-stream, and
# deep-JSON and request-smuggling attacks sent during the load
# (bench-serving-under-attack.mjs says what is checked). Then the server must
# exit 0 on SIGTERM. Prints the checks and a JSON summary; exit status 0 when
# all passed.
#   bench-serving-under-attack.sh [BUILD_DIR] [--streams N] [--max-tokens N] [--json FILE] [--no-attacks]
# (--no-attacks: the same load alone, to compare.)
# BUILD_DIR (default build) holds bin/hostrun; the tiny model is made there
# when missing (scripts/make-tiny-model.sh, as the tiny_model test does).
set -u
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$root/build
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then build=$(cd "$1" && pwd); shift; fi
hostrun=$build/bin/hostrun
model=$build/share/hostrun/models/tiny
[ -x "$hostrun" ] || { echo "no $hostrun: build first (scripts/build.sh)" >&2; exit 2; }
streams=1000
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[$i]}" = --streams ] && streams=${args[$((i + 1))]}; done
bash "$root/scripts/make-tiny-model.sh" "$build/bin/hostrun-llama-checkpoint" "$model" || exit 2

# Every stream is a socket on both sides; the server raises its own limit, the clients need theirs.
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
source "$root/tests/clients/lib.sh"
trap 'stop_servers; rm -rf "$work"' EXIT

# All streams in one batch (--max-batch-size), so that every client is
# mid-stream when a third of them are killed; session 4096 as serving_load.
if ! start_server "$work/server.log" "$hostrun" serve api_server "$model" --server-name 127.0.0.1 --server-port 0 \
     --session-len 4096 --max-batch-size "$streams"; then
  exit 1
fi
pid=${server_pids[-1]}
echo "server: $(head -n 1 "$work/server.log") (pid $pid, commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null))"
if node "$root/scripts/bench-serving-under-attack.mjs" "$server_url" "$pid" "$@"; then
  ok "bench-serving-under-attack.mjs: every check"
else
  fail "bench-serving-under-attack.mjs (see above)"
fi
stop_checked  # alive to the end and exits 0 on SIGTERM: no crash
finish
