#!/usr/bin/env bash
# Long prompts on the real api_server (tiny CPU model), issue 19 item 8:
#  - with its default session, 15 MiB prompts (completion and chat) are
#    refused by their byte count before anything is tokenized;
#  - with a session long enough that they must be tokenized, three 6 MiB
#    prompts at once are tokenized off the HTTP threads: /health answers
#    while they are, the prompts then get their 400, and the server goes on.
#   long_prompts.sh HOSTRUN MODEL_DIR
set -u
hostrun=$1 model=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
source "$here/../clients/lib.sh"
trap 'stop_servers; rm -rf "$work"' EXIT

if start_server "$work/default.log" "$hostrun" serve api_server "$model" --server-name 127.0.0.1 --server-port 0; then
  node "$here/long_prompts.mjs" refuse "$server_url" && ok "long prompts refused by their bytes" ||
    fail "long prompts refused by their bytes"
fi
stop_servers
# One HTTP thread: if tokenizing ran there, /health would wait for it.
if start_server "$work/long.log" "$hostrun" serve api_server "$model" --server-name 127.0.0.1 --server-port 0 \
     --session-len 100000000 --cache-max-entry-count 0.01 --io-threads 1; then
  node "$here/long_prompts.mjs" offload "$server_url" && ok "long prompts tokenized off the HTTP thread" ||
    fail "long prompts tokenized off the HTTP thread"
  code=$(curl -s -o "$work/after" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d '{"prompt": "hello", "max_tokens": 4}' "$server_url/v1/completions")
  [ "$code" = 200 ] && ok "the next ordinary request is answered" || fail "then got $code: $(cat "$work/after")"
fi
[ "$failures" -gt 0 ] && tail -n 20 "$work"/*.log
stop_servers
finish
