#!/usr/bin/env bash
# onnxruntime's outputs for tests/fixtures/onnx (the pinned onnxruntime-node,
# CPU only: its CUDA download is skipped), then hostrun's CPU executor
# against them.
#   run_ort_parity.sh TEST_BINARY SOURCE_DIR
set -euo pipefail
test_binary=${1:?} root=${2:?}
deps="$root/.deps/onnxruntime-npm"
ONNXRUNTIME_NODE_INSTALL=skip bash "$root/scripts/npm-pinned.sh" onnx_ort_parity "$root/scripts/onnxruntime-npm" "$deps" \
  onnxruntime-node/package.json >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
node "$root/tests/onnx_vision/ort_outputs.mjs" "$deps/node_modules" "$root/tests/fixtures/onnx" "$out"
HOSTRUN_ORT_OUTPUTS="$out" "$test_binary" --test-suite=ort_parity
