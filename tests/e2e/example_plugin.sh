#!/usr/bin/env bash
# Installs the SDK, builds examples/byte_tokenizer against the installed copy
# only (its own CMake project, find_package(hostrunSDK)), then loads it.
# Usage: example_plugin.sh BUILD_DIR EXAMPLE_SRC HOSTRUN CHECK_BINARY
set -eu
build=$1 example=$2 hostrun=$3 check=$4
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$example" -B "$work/example" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/example" >/dev/null
ls "$work/example"/hostrun_byte_tokenizer.so
# The host sees it, and the installed hostrun finds nothing wrong with it.
"$hostrun" plugins --plugin-dir "$work/example" | grep -E "^byte_tokenizer +tokenizer +1.0.0"
HOSTRUN_EXAMPLE_PLUGIN_DIR="$work/example" "$check"
