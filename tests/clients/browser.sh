#!/usr/bin/env bash
# The web page in headless Chromium (playwright-core), over the local engine;
# then the page of a second server that wants an API key.
# Usage: browser.sh HOSTRUN MODEL_DIR NPM_DIR ARTIFACT_DIR
set -u
hostrun=$1 model=$2 npm_dir=$3 artifacts=$4
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
source "$here/lib.sh"
trap 'stop_servers; rm -rf "$work"' EXIT
chromium=${HOSTRUN_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  fail "no Chromium at $chromium (scripts/install-deps.sh --test installs Debian's chromium)"
  finish; exit
fi
if start_server "$work/gradio.log" "$hostrun" serve gradio "$model" --server-name 127.0.0.1 --server-port 0 &&
   url=$server_url &&
   start_server "$work/keyed.log" "$hostrun" serve gradio "$model" --server-name 127.0.0.1 --server-port 0 \
     --api-keys browser-key; then
  if timeout 170 node "$here/browser.mjs" "$url" "$npm_dir" "$artifacts" "$chromium" "$server_url" browser-key; then
    ok "the page works in Chromium (screenshots in $artifacts)"
  else
    fail "the page in Chromium (see above; screenshots in $artifacts)"
  fi
else
  fail "serve gradio started (without and with --api-keys)"
fi
stop_checked
finish
