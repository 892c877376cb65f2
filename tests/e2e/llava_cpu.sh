#!/usr/bin/env bash
# LLaVA folders on the CPU (the llava-llama3-cpu manifest: llama_cpu + onnx_vision), end to end through
# `hostrun chat`. The folders (scripts/make-tiny-model.sh llava / llava-t5) hold the tiny Llama model's
# values under LLaVA's names, so without images a LLaVA folder must answer exactly as the Llama folder,
# in both layouts; with an image, both layouts alike, and differently from no image or another image.
# Then the graph as a file (hostrun-vision-onnx) run through the same plugin (--set vision.graph=FILE).
# Usage: llava_cpu.sh HOSTRUN LLAMA_DIR LLAVA_DIR IMAGE_DIR VISION_ONNX ONNX_FIXTURES
#   (LLAVA_DIR-t5: the transformers 5 layout)
set -u
hostrun=$1 llama=$2 llava=$3 images=$4 vision_onnx=$5 onnx_fixtures=$6
llava5="$llava-t5"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
failures=0 passes=0
ok() { echo "ok: $1"; passes=$((passes+1)); }
fail() { echo "FAIL: $1"; failures=$((failures+1)); }
expect() {  # expect NAME PATTERN FILE
  if grep -qF -- "$2" "$3"; then ok "$1"; else fail "$1: '$2' not in:"; cat "$3"; fi
}
# Seeded sampling within the top 40 (a random-weight model's argmax repeats one token whatever the
# context): the LLaVA folders' rows past the Llama vocabulary are zeros, never in a top 40, so the
# draws agree with the Llama folder's.
chat() { local model=$1; shift; "$hostrun" chat "$model" --temperature 1 --top-k 40 --top-p 1 --seed 7 --max-new-tokens 16 "$@"; }
# The replies of a transcript, without the banner (which names the folder).
replies() { grep -v '^hostrun chat:' "$1"; }
same() {  # same NAME FILE_A FILE_B
  if [ "$(replies "$2")" = "$(replies "$3")" ]; then ok "$1"; else fail "$1"; diff <(replies "$2") <(replies "$3"); fi
}
differ() {  # differ NAME FILE_A FILE_B
  if [ "$(replies "$2")" != "$(replies "$3")" ]; then ok "$1"; else fail "$1: both answered"; replies "$2"; fi
}

printf 'Tell me about the sea.\n\nAnd the sky?\n\n' >"$work/text.in"
chat "$llama" <"$work/text.in" >"$work/llama.out" 2>&1 || fail "the Llama folder's chat failed"
chat "$llava" --log-level info <"$work/text.in" >"$work/llava.out" 2>"$work/llava.err" || fail "the LLaVA folder's chat failed"
expect "the LLaVA folder reaches its manifest" "manifest llava-llama3-cpu, vision onnx_vision" "$work/llava.err"
expect "with the language model's padded vocabulary" "vocab 128320" "$work/llava.err"
same "without images, a LLaVA folder (transformers 4) answers as its Llama folder" "$work/llama.out" "$work/llava.out"
chat "$llava5" <"$work/text.in" >"$work/llava5.out" 2>&1 || fail "the transformers 5 folder's chat failed"
same "and so does the transformers 5 layout" "$work/llama.out" "$work/llava5.out"

printf 'What is in this image?\n\nAnd now?\n\n' >"$work/image.in"
chat "$llava" --image "$images/rgb.gif" <"$work/image.in" >"$work/gif.out" 2>&1 || fail "chat with --image failed"
chat "$llava5" --image "$images/rgb.gif" <"$work/image.in" >"$work/gif5.out" 2>&1 || fail "chat with --image (t5) failed"
same "an image gives the same replies in both layouts" "$work/gif.out" "$work/gif5.out"
chat "$llava" <"$work/image.in" >"$work/none.out" 2>&1
differ "an image changes the reply" "$work/gif.out" "$work/none.out"
chat "$llava" --image "$images/grey.jpg" <"$work/image.in" >"$work/jpg.out" 2>&1
differ "another image changes it again" "$work/gif.out" "$work/jpg.out"
# The in-line form attaches to its own message: the same as --image on the first.
printf '/image %s\nWhat is in this image?\n\nAnd now?\n\n' "$images/rgb.gif" >"$work/inline.in"
chat "$llava" <"$work/inline.in" >"$work/inline.out" 2>&1
# (The pipe's echo of the prompt shows the /image line; the replies are what must agree.)
if [ "$(replies "$work/inline.out" | sed -z "s|>>> /image $images/rgb.gif\n|>>> |")" = "$(replies "$work/gif.out")" ]; then
  ok "a '/image PATH' line equals --image PATH"
else
  fail "a '/image PATH' line differs from --image PATH"; replies "$work/inline.out"; replies "$work/gif.out"
fi

# One execution path: the graph written to a file and run from it gives the same replies.
"$vision_onnx" "$llava5" "$work/vision.onnx" >"$work/export.out" 2>&1 && ok "hostrun-vision-onnx writes the graph ($(cat "$work/export.out"))" \
  || { fail "hostrun-vision-onnx"; cat "$work/export.out"; }
chat "$llava" --image "$images/rgb.gif" --set vision.graph="$work/vision.onnx" <"$work/image.in" >"$work/file.out" 2>&1
same "the graph from a file answers as the one written at load" "$work/gif.out" "$work/file.out"
chat "$llava" --set vision.graph="$onnx_fixtures/vit_block.onnx" <"$work/image.in" >"$work/wrong.out" 2>&1
expect "a graph of another shape is refused, saying what it must be" "vision.graph: $onnx_fixtures/vit_block.onnx" "$work/wrong.out"
"$vision_onnx" "$llama" "$work/none.onnx" >"$work/none.out" 2>&1
expect "a folder without a vision tower is refused by name" "vision_config" "$work/none.out"

# The benchmarks with images: every request's images encoded, each expanded to the encoder's tokens.
bench() { "$hostrun" bench "$@" --input-len 8 --output-len 2 --no-progress --output "$work/bench.json" >"$work/bench.out" 2>&1; }
bench throughput "$llava" --image "$images/rgb.gif" --images-per-request 2 --num-prompts 3 --concurrency 2
python3 - "$work/bench.json" "$llava/config.json" >"$work/bench.check" 2>&1 <<'PY'
import json, sys
j, c = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))["vision_config"]
per_image = (c["image_size"] // c["patch_size"]) ** 2
assert j["completed"] == 3 and j["failed"] == 0, j
assert j["images_per_request"] == 2 and j["engine_stats"]["images_encoded"] == 6, j
assert j["prompt_tokens"] >= 3 * 2 * per_image, (j["prompt_tokens"], per_image)
print("ok")
PY
expect "bench throughput --image encodes every request's images" "ok" "$work/bench.check" || cat "$work/bench.out"
bench latency "$llava" --image "$images/rgb.gif" --runs 1
expect "bench latency --image reports the prompt with its image" "and 1 image(s) (" "$work/bench.out"
bench latency "$llava" --image "$0" --runs 1
expect "bench --image refuses a file that is no image" "--image $0: not a PNG, JPEG, WebP or GIF image" "$work/bench.out"
bench throughput "$llama" --image "$images/rgb.gif" --num-prompts 1
expect "and a text-only model" "this model takes no images" "$work/bench.out"

# Errors: clear, before anything is generated, and the chat goes on.
printf 'hi\n\n/image %s\nhi\n\nhi\n\n' "$work/missing.png" | chat "$llava" >"$work/missing.out" 2>&1
expect "a missing file is named" "image $work/missing.png: cannot open the file" "$work/missing.out"
printf 'hi\n\n' | chat "$llava" --image "$0" >"$work/script.out" 2>&1
expect "a file that is no image is named" "not a PNG, JPEG, WebP or GIF image" "$work/script.out"
printf 'hi\n\n' | chat "$llava" --image "$images/huge.png" >"$work/huge.out" 2>&1
expect "a canvas over the limit is refused" "is larger than allowed" "$work/huge.out"
printf 'hi\n\n' | chat "$llama" --image "$images/rgb.gif" >"$work/text-model.out" 2>&1
expect "a text-only model says it takes no images" "this model takes no images" "$work/text-model.out"

echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
