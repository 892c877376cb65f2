#!/usr/bin/env bash
# Packs a build for the GPU machine, which has CUDA, PyTorch and HF
# transformers but none of our Debian build dependencies (fmt, toml++, Boost,
# PCRE2): the hostrun binary, its plugins and the shared libraries they need
# that a stock image may lack (with the image codecs and libonnx onnx_vision links). Build here (CUDA 13 is installed here too),
# carry the folder, and run it there with LD_LIBRARY_PATH=FOLDER/lib:FOLDER/lib/hostrun.
#   device-bundle.sh BUILD_DIR OUT_DIR      (OUT_DIR: e.g. .devcarry, git-ignored)
set -euo pipefail
build=$1 out=$2
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib/hostrun/plugins"
cp "$build/bin/hostrun" "$build/bin/hostrun-llama-checkpoint" "$build/bin/hostrun-vision-onnx" "$build/bin/hostrun-onnx-run" "$out/bin/"
cp "$build"/lib/hostrun/plugins/*.so "$out/lib/hostrun/plugins/"
cp "$build"/lib/hostrun/*.so "$out/lib/hostrun/" 2>/dev/null || true  # libhostrun_kernels_cuda.so
# The GPU test drivers (ctest label gpu) only: a device call carries at most 64 MiB.
for test_binary in test_kernels_cuda test_llama_cuda test_awq_cuda_search test_onnx_vision_cuda conformance_kv_cache_gpu conformance_linear_gpu conformance_vision_gpu; do
  [ -x "$build/bin/$test_binary" ] && cp "$build/bin/$test_binary" "$out/bin/"
done
# Libraries from Debian's -dev packages we link; the C/C++ runtimes are left to the image.
for f in "$out"/bin/* "$out"/lib/hostrun/plugins/*.so; do
  ldd "$f" 2>/dev/null | awk '/=>/ {print $3}'
done | sort -u | grep -E "libfmt|libtomlplusplus|libpcre2|libssl|libcrypto|libonnx|libprotobuf|libpng16|libjpeg|libwebp|libgif" |
  while read -r lib; do cp -L "$lib" "$out/lib/"; done  # the image codecs and ONNX: the onnx_vision plugin
# Host symbols off (the device code, -lineinfo included, stays in the fat binaries): a call carries 64 MiB
# with the working tree.
strip --strip-unneeded "$out"/bin/* "$out"/lib/hostrun/*.so "$out"/lib/hostrun/plugins/*.so
du -sh "$out"
