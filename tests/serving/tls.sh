#!/usr/bin/env bash
# HTTPS end to end on the tiny model, with a certificate authority made here
# by the openssl command: `serve api_server --ssl-certfile --ssl-keyfile`
# through the official openai client (tls.test.mjs, NODE_EXTRA_CA_CERTS), the
# Gradio bridge serving HTTPS over it as an https:// engine, `serve
# api_client` and `bench serving` against it with --ssl-ca-file, what a client
# says when it does not trust the certificate or the certificate names another
# host, and the start errors of a bad certificate or key (before the model loads).
# Then image_url parts with https:// URLs to a LLaVA folder: fetched from an
# image server (openssl s_server) with a certificate of the CA, refused from
# one whose certificate does not name the host or that the CA did not sign.
# Usage: tls.sh HOSTRUN MODEL_DIR NPM_DIR LLAVA_DIR IMAGE_DIR
#   (NPM_DIR: where serving_npm put `openai`)
set -u
hostrun=$1 model=$2 npm_dir=$3 llava=$4 images=$5
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
source "$here/../clients/lib.sh"
trap 'stop_servers; rm -rf "$work"' EXIT

# --- a CA, a certificate for localhost + 127.0.0.1, one for localhost only ---
# cert NAME SUBJECT_ALT_NAME: NAME.key and NAME.pem, signed by the CA.
cert() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/$1.key" -out "$work/$1.csr" \
    -subj "/CN=$1" 2>/dev/null &&
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$2" >"$work/$1.ext" &&
  openssl x509 -req -in "$work/$1.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 1 \
    -extfile "$work/$1.ext" -out "$work/$1.pem" 2>/dev/null
}
if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/ca.key" -out "$work/ca.pem" \
       -days 1 -subj "/CN=hostrun test CA" 2>/dev/null ||
   ! cert server "DNS:localhost,IP:127.0.0.1" || ! cert named "DNS:localhost" ||
   ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/rogue.key" \
       -out "$work/rogue.pem" -days 1 -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" 2>/dev/null ||
   ! openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/other.key" 2>/dev/null; then
  fail "openssl made the test CA and certificates"; finish; exit
fi
tls=(--ssl-certfile "$work/server.pem" --ssl-keyfile "$work/server.key")

# --- start errors, each before the model loads (--log-level info would show it) ---
# refused NAME EXPECTED_TEXT COMMAND...: the command exits non-zero, says EXPECTED_TEXT, loads no model.
refused() {
  local name=$1 expected=$2; shift 2
  timeout 60 "$@" --log-level info >"$work/refused.log" 2>&1
  local status=$?
  if [ $status -ne 0 ] && [ $status -ne 124 ] && grep -qF -- "$expected" "$work/refused.log" &&
     ! grep -q "loaded\|serving" "$work/refused.log"; then
    ok "$name"
  else
    fail "$name (exit $status): $(cat "$work/refused.log")"
  fi
}
refused "a key that is not the certificate's is refused, naming both files" \
  "the TLS key file '$work/other.key' is not the key of the certificate in '$work/server.pem'" \
  "$hostrun" serve api_server "$model" --server-port 0 --ssl-certfile "$work/server.pem" --ssl-keyfile "$work/other.key"
refused "--ssl-certfile without --ssl-keyfile is refused" \
  "ssl_certfile (--ssl-certfile) is set but ssl_keyfile (--ssl-keyfile) is not" \
  "$hostrun" serve api_server "$model" --server-port 0 --ssl-certfile "$work/server.pem"
refused "a missing certificate file is named" "the TLS certificate file '$work/absent.pem' cannot be read" \
  "$hostrun" serve gradio "$model" --server-port 0 --ssl-certfile "$work/absent.pem" --ssl-keyfile "$work/server.key"
refused "gradio refuses --ssl-keyfile alone" "gradio: ssl_keyfile (--ssl-keyfile) is set but ssl_certfile" \
  "$hostrun" serve gradio "$model" --server-port 0 --ssl-keyfile "$work/server.key"

# --- the servers ---------------------------------------------------------------
if ! start_server "$work/api.log" "$hostrun" serve api_server "$model" --server-name 127.0.0.1 --server-port 0 \
       "${tls[@]}"; then
  fail "serve api_server --ssl-certfile --ssl-keyfile started"; finish; exit
fi
api_url=$server_url
port=${api_url##*:}
[[ $api_url == https://127.0.0.1:* ]] && ok "the start line says https:// ($api_url)" || fail "start line: $api_url"

# The bridge first without the CA: it cannot trust the server, and says how to.
timeout 60 "$hostrun" serve gradio "https://localhost:$port" --server-port 0 >"$work/untrusted.log" 2>&1
status=$?
[ $status -ne 0 ] && grep -q "its certificate is not trusted (unable to get local issuer certificate); for a certificate from your own CA, pass that CA's certificate with --ssl-ca-file" "$work/untrusted.log" &&
  ok "the bridge without the CA refuses the server, naming --ssl-ca-file" || fail "untrusted bridge (exit $status): $(cat "$work/untrusted.log")"

if start_server "$work/gradio.log" "$hostrun" serve gradio "https://localhost:$port" --ssl-ca-file "$work/ca.pem" \
     --server-name 127.0.0.1 --server-port 0 --ssl-certfile "$work/named.pem" --ssl-keyfile "$work/named.key"; then
  gradio_url=$server_url
  [[ $gradio_url == https://* ]] && ok "gradio's start line says https:// ($gradio_url)" || fail "gradio: $gradio_url"
  cp "$here/tls.test.mjs" "$here/metrics_text.mjs" "$npm_dir/"
  NODE_EXTRA_CA_CERTS="$work/ca.pem" HOSTRUN_TLS_URL="https://localhost:$port" \
    HOSTRUN_GRADIO_URL="https://localhost:${gradio_url##*:}" \
    timeout 240 node --test --test-reporter=spec "$npm_dir/tls.test.mjs" >"$work/node.log" 2>&1 &&
    ok "the openai client and fetch over TLS (tls.test.mjs)" || fail "tls.test.mjs"
  sed 's/^/  [node] /' "$work/node.log"

  # The gradio certificate names localhost only: an address is checked as an address.
  printf 'Hello\n\n' | timeout 60 "$hostrun" serve api_client "https://127.0.0.1:${gradio_url##*:}" \
    --ssl-ca-file "$work/ca.pem" >"$work/mismatch.log" 2>&1
  grep -q "its certificate is not trusted (IP address mismatch)" "$work/mismatch.log" &&
    ok "a certificate that does not name the address is refused" || fail "address mismatch: $(cat "$work/mismatch.log")"
else
  fail "serve gradio https://... --ssl-ca-file --ssl-certfile --ssl-keyfile started"
fi

# --- the terminal client and the benchmark over https:// ------------------------
printf 'Hello\n\n' | timeout 60 "$hostrun" serve api_client "https://localhost:$port" --ssl-ca-file "$work/ca.pem" \
  --max-new-tokens 4 --temperature 0 >"$work/client.log" 2>&1
status=$?
[ $status -eq 0 ] && grep -q "double enter to end input >>> Hello" "$work/client.log" &&
  [ "$(grep -c 'double enter' "$work/client.log")" -ge 2 ] &&
  ok "serve api_client https:// --ssl-ca-file chats" || fail "api_client over TLS (exit $status): $(cat "$work/client.log")"
printf 'Hello\n\n' | SSL_CERT_FILE="$work/ca.pem" timeout 60 "$hostrun" serve api_client "https://127.0.0.1:$port" \
  --max-new-tokens 4 >"$work/client_env.log" 2>&1 &&
  ok "serve api_client trusts the CA in SSL_CERT_FILE" || fail "SSL_CERT_FILE: $(cat "$work/client_env.log")"
printf 'Hello\n\n' | timeout 60 "$hostrun" serve api_client "https://localhost:$port" >"$work/client_untrusted.log" 2>&1
[ $? -ne 0 ] && grep -q "its certificate is not trusted" "$work/client_untrusted.log" &&
  ok "serve api_client without the CA refuses the server" || fail "untrusted api_client: $(cat "$work/client_untrusted.log")"

timeout 120 "$hostrun" bench serving "https://localhost:$port" --ssl-ca-file "$work/ca.pem" --num-prompts 4 \
  --concurrency 2 --input-len 8 --output-len 4 --no-progress --output "$work/bench.json" >"$work/bench.log" 2>&1
status=$?
completed=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["completed"], r["failed"])' \
  "$work/bench.json" 2>/dev/null)
[ $status -eq 0 ] && [ "$completed" = "4 0" ] && ok "bench serving https:// --ssl-ca-file: 4 requests completed" ||
  fail "bench serving over TLS (exit $status, completed/failed: $completed): $(cat "$work/bench.log")"

# --- image_url parts with https:// URLs ----------------------------------------
# Image servers: openssl s_server -WWW serves the folder it runs in. The api_server trusts the CA through
# SSL_CERT_FILE (OpenSSL's default verify paths, which the fetcher uses).
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mkdir -p "$work/www" && cp "$images/rgb.gif" "$work/www/"
image_server() {  # image_server CERT_NAME: serves $work/www over TLS; prints its port
  local port; port=$(free_port)
  (cd "$work/www" && exec openssl s_server -quiet -accept "127.0.0.1:$port" -cert "$work/$1.pem" \
     -key "$work/$1.key" -WWW) >/dev/null 2>&1 &
  server_pids+=("$!")
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  echo "$port"
}
trusted=$(image_server server) other_name=$(image_server named) rogue=$(image_server rogue)
if SSL_CERT_FILE="$work/ca.pem" start_server "$work/llava.log" "$hostrun" serve api_server "$llava" \
     --server-name 127.0.0.1 --server-port 0 --session-len 512 --image-url-hosts localhost,127.0.0.1 \
     --set frontend.image_url_timeout=5; then
  ask_image() {  # ask_image URL OUT: one greedy question about the image at URL
    python3 - "$1" "${server_url}" >"$2" 2>&1 <<'PY'
import json, sys, urllib.request, urllib.error
url, server = sys.argv[1], sys.argv[2]
model = json.load(urllib.request.urlopen(server + "/v1/models", timeout=60))["data"][0]["id"]
body = {"model": model, "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is in this image?"}]}]}
request = urllib.request.Request(server + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
try:
    reply = json.load(urllib.request.urlopen(request, timeout=60))
    print("200", json.dumps(reply["choices"][0]["message"]["content"]), reply["usage"]["prompt_tokens"])
except urllib.error.HTTPError as e:
    print(e.code, json.load(e)["error"]["message"])
PY
  }
  ask_image "data:image/gif;base64,$(base64 -w0 "$images/rgb.gif")" "$work/inline.out"
  ask_image "https://localhost:$trusted/rgb.gif" "$work/https.out"
  [ "$(cut -c1-3 "$work/https.out")" = 200 ] && cmp -s "$work/inline.out" "$work/https.out" &&
    ok "an https image URL is fetched with the CA's certificate and answers as its data: URL" ||
    fail "https image: $(cat "$work/https.out") against $(cat "$work/inline.out")"
  ask_image "https://127.0.0.1:$other_name/rgb.gif" "$work/https_name.out"
  grep -q "^400 .*certificate verify failed" "$work/https_name.out" &&
    ok "an https image server whose certificate does not name the address is refused" ||
    fail "https image, address mismatch: $(cat "$work/https_name.out")"
  ask_image "https://localhost:$rogue/rgb.gif" "$work/https_rogue.out"
  grep -q "^400 .*certificate verify failed" "$work/https_rogue.out" &&
    ok "an https image server with a certificate the CA did not sign is refused" ||
    fail "https image, untrusted: $(cat "$work/https_rogue.out")"
else
  fail "serve api_server LLAVA --image-url-hosts started"
fi

# --- every server exits 0 on SIGTERM -----------------------------------------
for pid in "${server_pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
for pid in "${server_pids[@]}"; do
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fail "server $pid did not stop within 5 s of SIGTERM"
  else
    wait "$pid"; status=$?
    [ $status -eq 0 ] && ok "server $pid exited 0 on SIGTERM" || fail "server $pid exited $status on SIGTERM"
  fi
done
server_pids=()
finish
