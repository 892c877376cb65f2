#!/usr/bin/env bash
# The web page in headless Chromium (playwright-core), over the local engine.
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
if start_server "$work/gradio.log" "$hostrun" serve gradio "$model" --server-name 127.0.0.1 --server-port 0; then
  if timeout 170 node "$here/browser.mjs" "$server_url" "$npm_dir" "$artifacts" "$chromium"; then
    ok "the page works in Chromium (screenshots in $artifacts)"
  else
    fail "the page in Chromium (see above; screenshots in $artifacts)"
  fi
else
  fail "serve gradio started"
fi
finish
