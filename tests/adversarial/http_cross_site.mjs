// Requests a web page on another site can make a browser send (issue 19
// item 10): a text/plain or form POST (no CORS preflight), from a foreign
// Origin, and with a foreign Host (DNS rebinding: the attacker's name now
// points here). Each must get a clear 4xx before reaching the engine; the
// server's own page and names, and JSON from ordinary clients, still work.
//   node http_cross_site.mjs URL KIND [BEARER_KEY]
// KIND: api_server (allowed host chat.example.test) or gradio.
import { check, raw_request, request } from "./http_wire.mjs";

const [url, kind, key] = process.argv.slice(2);
const own = new URL(url).host;
const auth = key ? { authorization: `Bearer ${key}` } : {};
const targets = kind === "api_server"
  ? [["/v1/completions", JSON.stringify({ prompt: "Hi", max_tokens: 1 })]]
  : [["/api/chat", JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 1 })],
     ["/gradio_api/queue/join", JSON.stringify({ data: ["Hi", [], "", 0, 1, 1], fn_index: 1, session_hash: "xsite" })]];
const ok_path = kind === "api_server" ? "/v1/models" : "/config";

for (const [path, body] of targets) {
  const attempts = [
    ["a text/plain POST from a foreign Origin with a foreign Host",
     { host: "rebound.attacker.test:" + new URL(url).port, origin: "http://rebound.attacker.test", "content-type": "text/plain" },
     403, /Host header 'rebound\.attacker\.test/],
    ["a JSON POST whose Host is the attacker's name (DNS rebinding)",
     { host: "rebound.attacker.test", "content-type": "application/json" }, 403, /not a name this server answers to/],
    ["a JSON POST from another site's page", { origin: "https://evil.test", "content-type": "application/json" },
     403, /cross-origin request from Origin 'https:\/\/evil\.test'/],
    ["a text/plain POST (a form or sendBeacon needs no preflight)", { "content-type": "text/plain" },
     415, /Content-Type application\/json; found 'text\/plain'/],
    ["a urlencoded form POST", { "content-type": "application/x-www-form-urlencoded" }, 415, /found 'application\/x-www-form-urlencoded'/],
    ["a multipart form POST", { "content-type": "multipart/form-data; boundary=x" }, 415, /found 'multipart\/form-data/],
    ["a POST without Content-Type", {}, 415, /found none/],
  ];
  for (const [name, headers, status, says] of attempts) {
    const r = await raw_request(url, { method: "POST", path, headers: { ...auth, ...headers }, body });
    check(r.status === status && says.test(r.body), `${path}: ${name} is ${status} saying why (found ${r.status}: ${r.body.slice(0, 160)})`);
  }
  // The server's own page (same Origin), sending JSON: allowed.
  const same = await raw_request(url, { method: "POST", path, body,
    headers: { ...auth, origin: `http://${own}`, "content-type": "application/json" } });
  check(same.status === 200, `${path}: a JSON POST from the server's own origin is answered (${same.status})`);
}

// DNS rebinding also reads: a GET for the attacker's name is refused too.
{
  const r = await raw_request(url, { path: ok_path, headers: { ...auth, host: "rebound.attacker.test" } });
  check(r.status === 403, `GET ${ok_path} with a foreign Host is 403 (${r.status})`);
}

if (kind === "api_server") {
  // --allowed-hosts chat.example.test: a proxy's public name, and its page's origin through TLS.
  const r = await raw_request(url, { path: "/v1/models", headers: { host: "chat.example.test", origin: "https://chat.example.test" } });
  check(r.status === 200, `a Host listed in --allowed-hosts, with its own https origin, is answered (${r.status})`);
} else {
  // The page: a CSP that lets only its own (nonce-carrying) script and style run, and no framing.
  const page = await request(url, "/");
  const csp = page.headers.get("content-security-policy") ?? "";
  const nonce = /script-src 'nonce-([0-9a-f]+)'/.exec(csp)?.[1];
  check(page.status === 200 && /frame-ancestors 'none'/.test(csp) && /default-src 'none'/.test(csp) &&
        /connect-src 'self'/.test(csp), `the page sends a CSP with frame-ancestors 'none' (${csp})`);
  check(nonce && page.text.includes(`<script nonce="${nonce}">`) && page.text.includes(`<style nonce="${nonce}">`),
        "the page's script and style carry the CSP's nonce");
  check(page.headers.get("x-frame-options") === "DENY", `X-Frame-Options: DENY (${page.headers.get("x-frame-options")})`);
  const again = await request(url, "/");
  check(!again.headers.get("content-security-policy").includes(nonce), "each load gets a new nonce");
  // /upload takes multipart forms (the one route that does), but not from another site's page.
  const form = '--x\r\nContent-Disposition: form-data; name="files"; filename="a.gif"\r\n\r\nGIF89a\r\n--x--\r\n';
  const foreign = await raw_request(url, { method: "POST", path: "/gradio_api/upload", body: form,
    headers: { ...auth, origin: "https://evil.test", "content-type": "multipart/form-data; boundary=x" } });
  check(foreign.status === 403, `/gradio_api/upload: a form from another site's page is 403 (${foreign.status}: ${foreign.body.slice(0, 120)})`);
  const own_form = await raw_request(url, { method: "POST", path: "/gradio_api/upload", body: form,
    headers: { ...auth, origin: `http://${own}`, "content-type": "multipart/form-data; boundary=x" } });
  // The bridge's model (text only) takes no images, so the route itself answers: the form got past the rules.
  check(own_form.status === 400 && /takes no images/.test(own_form.body), `/gradio_api/upload: the same form from the server's own page reaches the route (${own_form.status}: ${own_form.body.slice(0, 120)})`);
}

const after = await request(url, ok_path, { headers: auth });
check(after.status === 200, `the server still answers GET ${ok_path} (${after.status})`);
process.exit(process.exitCode ?? 0);
