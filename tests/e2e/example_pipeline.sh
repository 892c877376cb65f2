#!/usr/bin/env bash
# Installs hostrun, builds examples/pipeline against the installed copy only
# (find_package(hostrunSDK), hostrun::pipeline), and runs it: the tiny LLaVA
# folder describes an image, the same way twice (greedy), differently from
# another image; bad input is a clear error, not a crash.
# Usage: example_pipeline.sh BUILD_DIR EXAMPLE_SRC LLAVA_DIR LLAMA_DIR IMAGE_DIR
set -u
build=$1 example=$2 llava=$3 llama=$4 images=$5
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
failures=0 passes=0
ok() { echo "ok: $1"; passes=$((passes+1)); }
fail() { echo "FAIL: $1"; failures=$((failures+1)); }
cmake --install "$build" --prefix "$work/prefix" >"$work/install.log" 2>&1 || { cat "$work/install.log"; exit 1; }
if cmake -S "$example" -B "$work/example" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release \
     >"$work/configure.log" 2>&1 && cmake --build "$work/example" >"$work/build.log" 2>&1; then
  ok "examples/pipeline builds against the installed SDK"
else
  fail "examples/pipeline builds"; cat "$work/configure.log" "$work/build.log"; exit 1
fi
run=("$work/example/describe_image")
# No HOSTRUN_PLUGIN_PATH, no --plugin-dir: the library finds the installed plugins beside itself.
unset HOSTRUN_PLUGIN_PATH
"${run[@]}" "$llava" "$images/rgb.gif" >"$work/gif.out" 2>"$work/gif.err" && ok "it describes an image" \
  || { fail "describe_image on the LLaVA folder"; cat "$work/gif.err"; }
grep -q "prompt tokens" "$work/gif.out" && ok "and reports the tokens" || { fail "no token report"; cat "$work/gif.out"; }
"${run[@]}" "$llava" "$images/rgb.gif" >"$work/gif2.out" 2>&1
cmp -s "$work/gif.out" "$work/gif2.out" && ok "the same image gives the same reply (greedy)" || fail "two runs differ"
"${run[@]}" "$llava" "$images/grey.jpg" "describe this image in one word" >"$work/jpg.out" 2>&1
grep -q "prompt tokens" "$work/jpg.out" && ok "another image and prompt" || { fail "another image"; cat "$work/jpg.out"; }
"${run[@]}" "$llava" "$example/CMakeLists.txt" >"$work/text.out" 2>&1; status=$?
[ $status -eq 1 ] && grep -q "not a PNG, JPEG, WebP or GIF image" "$work/text.out" && ok "a file that is no image: a clear error" \
  || { fail "a file that is no image (status $status)"; cat "$work/text.out"; }
"${run[@]}" "$llama" "$images/rgb.gif" >"$work/llama.out" 2>&1; status=$?
[ $status -eq 1 ] && grep -q "this model takes no images" "$work/llama.out" && ok "a text-only model refuses the image, saying why" \
  || { fail "a text-only model with an image (status $status)"; cat "$work/llama.out"; }
"${run[@]}" "$work/nowhere" "$images/rgb.gif" >"$work/none.out" 2>&1; status=$?
[ $status -eq 1 ] && ok "a missing folder: status 1 ($(head -c 120 "$work/none.out"))" || { fail "a missing folder (status $status)"; cat "$work/none.out"; }
echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
