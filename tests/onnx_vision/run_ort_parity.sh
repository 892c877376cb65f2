#!/usr/bin/env bash
# onnxruntime's outputs for tests/fixtures/onnx (the pinned onnxruntime-node,
# CPU only: its CUDA download is skipped), then hostrun's CPU executor
# against them; then hostrun-onnx-run (the GPU machine's parity tool) on
# CLIP's block, its output files against onnxruntime's.
#   run_ort_parity.sh TEST_BINARY SOURCE_DIR ONNX_RUN_TOOL
set -euo pipefail
test_binary=${1:?} root=${2:?} run_tool=${3:?}
deps="$root/.deps/onnxruntime-npm"
ONNXRUNTIME_NODE_INSTALL=skip bash "$root/scripts/npm-pinned.sh" onnx_ort_parity "$root/scripts/onnxruntime-npm" "$deps" \
  onnxruntime-node/package.json >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
node "$root/tests/onnx_vision/ort_outputs.mjs" "$deps/node_modules" "$root/tests/fixtures/onnx" "$out"
HOSTRUN_ORT_OUTPUTS="$out" "$test_binary" --test-suite=ort_parity
fixtures="$root/tests/fixtures/onnx"
"$run_tool" "$fixtures/vit_block.onnx" --input pixels="$fixtures/vit_block.pixels.bin" --out "$out/tool" >"$out/tool.json"
python3 - "$out" <<'PY'
import array, json, os, sys
out = sys.argv[1]
summary = json.load(open(os.path.join(out, "tool.json")))
names = [o["name"] for o in summary["outputs"]]
assert names == ["hidden", "features"], names
for o in summary["outputs"]:
    ours, ort = array.array("f"), array.array("f")
    ours.frombytes(open(o["file"], "rb").read())
    ort.frombytes(open(os.path.join(out, "vit_block." + o["name"] + ".bin"), "rb").read())
    assert len(ours) == len(ort) > 0, (o["name"], len(ours), len(ort))
    worst = max(abs(a - b) / (2e-5 + 2e-4 * abs(b)) for a, b in zip(ours, ort))
    assert worst <= 1.0, (o["name"], worst)
print("hostrun-onnx-run: vit_block's outputs match onnxruntime's")
PY
