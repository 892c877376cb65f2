#!/usr/bin/env bash
# Images through `hostrun serve gradio` on a LLaVA folder: @gradio/client (uploads, data: URLs, refusals)
# and the page in headless Chromium (the Image button, drag and drop, thumbnails).
# Usage: images.sh HOSTRUN LLAVA_DIR NPM_DIR IMAGE_DIR ARTIFACT_DIR
set -u
hostrun=$1 model=$2 npm_dir=$3 images=$4 artifacts=$5
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
source "$here/lib.sh"
trap 'stop_servers; rm -rf "$work"' EXIT
chromium=${HOSTRUN_CHROMIUM:-/usr/bin/chromium}
if start_server "$work/gradio.log" "$hostrun" serve gradio "$model" --server-name 127.0.0.1 --server-port 0 \
     --session-len 20; then
  if timeout 150 node "$here/gradio_images.mjs" "$server_url" "$npm_dir" "$images" >"$work/client.log" 2>&1; then
    ok "@gradio/client sends images"
  else
    fail "@gradio/client with images"
  fi
  sed "s/^/  [gradio client] /" "$work/client.log"
  if [ ! -x "$chromium" ]; then
    fail "no Chromium at $chromium (scripts/install-deps.sh --test installs Debian's chromium)"
  elif timeout 170 node "$here/browser_images.mjs" "$server_url" "$npm_dir" "$images" "$artifacts" "$chromium" \
       >"$work/browser.log" 2>&1; then
    ok "the page attaches images in Chromium (screenshot in $artifacts)"
  else
    fail "the page with images in Chromium"
  fi
  sed "s/^/  [browser] /" "$work/browser.log"
else
  fail "serve gradio LLAVA_DIR started"
fi
stop_checked
finish
