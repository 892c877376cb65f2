#!/usr/bin/env bash
# Builds (once) and runs the HTTP request reader's libFuzzer target for a
# bounded time, from seeds of the framings that matter (plain, chunked,
# pipelined, and the ones the reader refuses).
# Usage: run_fuzz_http.sh BUILD_DIR FUZZ_DIR CLANGXX   (FUZZ_SECONDS overrides 30 s)
set -u
build=$1 fuzz=$2 clang=${3:-}
seconds=${FUZZ_SECONDS:-30}
if [ -z "$clang" ] || [[ "$clang" == *NOTFOUND ]]; then
  echo "FAIL: no clang++ was found at configure time; the fuzzer needs clang with libFuzzer (apt-get install clang)"
  echo "0 passed, 1 failed"; exit 1
fi
if ! cmake --build "$build" --target serving_fuzzers -j 2 >"$fuzz.build.log" 2>&1; then
  echo "FAIL: building the fuzzer:"; tail -n 30 "$fuzz.build.log"; echo "0 passed, 1 failed"; exit 1
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus"
seed() { printf "$2" >"$work/corpus/$1"; }
seed get 'GET /v1/models?x=1 HTTP/1.1\r\nHost: 127.0.0.1:23333\r\nAuthorization: Bearer fuzz-key-one\r\n\r\n'
seed post 'POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\nOrigin: http://localhost\r\n\r\n{}'
seed chunked 'POST /api/chat HTTP/1.1\r\nHost: chat.example.test\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n2;ext=1\r\n{}\r\n0\r\nTrailer: x\r\n\r\n'
seed pipelined 'GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.0\r\n\r\n'
seed gzip 'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n'
seed folded 'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n'
# What the fuzzer found before (a trailer taken as a header; an empty list element before chunked;
# a Content-Length with leading zeros, which is valid).
seed trailer 'POST /api/chat HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Type: application/json\r\n\r\n'
seed empty_element 'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:, chunked\r\nContent-Lengtzh: 4\r\n\r\n0\r\n\r\n'
seed zeros 'POST / HTTP/1.0\r\nContent-Length: 0000000000000000000000\r\n\r\n'
seed expect 'POST / HTTP/1.1\r\nHost: [::1]:80\r\nExpect: 100-continue\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx'
cat >"$work/http.dict" <<'DICT'
"\x0d\x0a"
"\x0d\x0a\x0d\x0a"
"HTTP/1.1"
"HTTP/1.0"
"Transfer-Encoding: "
"chunked"
"Content-Length: "
"Host: "
"Origin: "
"Content-Type: "
"application/json"
"Authorization: Bearer "
"Connection: "
"keep-alive"
"close"
"Expect: 100-continue"
","
";"
" "
"\x09"
"0\x0d\x0a\x0d\x0a"
DICT
if "$fuzz/fuzz_http_request" "$work/corpus" -dict="$work/http.dict" -max_total_time="$seconds" -timeout=10 \
     -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 -artifact_prefix="$fuzz/" >"$work/fuzz.log" 2>&1; then
  echo "ok: fuzz_http_request ($(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/fuzz.log" | grep -o '[0-9]*$') runs in ${seconds} s)"
  echo "1 passed, 0 failed"
else
  echo "FAIL: fuzz_http_request"; grep -v '^#' "$work/fuzz.log" | tail -n 40
  ls "$fuzz"/crash-* 2>/dev/null
  echo "0 passed, 1 failed"; exit 1
fi
