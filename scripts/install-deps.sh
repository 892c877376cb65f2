#!/usr/bin/env bash
# Installs what hostrun needs on a fresh Debian 12 machine (as root), and
# nothing when it is all there already. Called by run.sh and test.sh.
#   install-deps.sh          build dependencies
#   install-deps.sh --test   plus what the test suite needs
set -euo pipefail

packages=(cmake ninja-build g++ pkg-config ccache
  libboost-dev libfmt-dev libtomlplusplus-dev libcli11-dev nlohmann-json3-dev libpcre2-dev doctest-dev libssl-dev
  libpng-dev libjpeg62-turbo-dev libwebp-dev libgif-dev  # the image codecs: plugins/image_common
  libonnx-dev libprotobuf-dev)                          # ONNX graphs: plugins/onnx_vision
if [ "${1:-}" = "--test" ]; then
  # clang + its runtime for the libFuzzer targets.
  packages+=(clang libclang-rt-14-dev tmux)
  # Headless Chromium for the web page's browser test (playwright-core drives it), with a font for screenshots.
  packages+=(chromium fonts-dejavu-core curl)
  # The TLS tests make their certificate authority with the openssl command.
  packages+=(openssl)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The CUDA toolkit is optional; it is used when present at /usr/local/cuda.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "install-deps: Node.js and npm are needed (they come with the machine, see DEVELOPERS.md)" >&2
  exit 1
fi
