// The hostile payloads of the adversarial suite, in one place: json_bombs.mjs
// and http_framing.mjs send them one at a time, and
// scripts/bench-serving-under-attack.mjs sends them while a server is under load.

// JSON arrays nested `levels` deep: `[[[...]]]`, 2 bytes a level.
export const deep = (levels) => "[".repeat(levels) + "]".repeat(levels);

// `PREFIX"x":[[],[],...]}` as large as a body of `limit` bytes allows (the
// servers' default max_body_bytes, 16 MiB): small as text, many times
// larger once parsed into a JSON tree, so a server must refuse it by its
// estimate (413) rather than build it. PREFIX is `{` and any fields before x.
export function empty_arrays(prefix, limit = 16 * 1024 * 1024) {
  const room = limit - prefix.length - 10;
  return `${prefix}"x":[${"[],".repeat(Math.floor(room / 3) - 1)}[]]}`;
}

// The path of the request each framing case hides in its body: a server that
// ever reads it as a request answers it (404), which the checks look for.
export const smuggled_path = "/smuggled";

// Request framings that a proxy and the server could read differently
// (request smuggling, RFC 9112 section 6). Each hides a second request in
// what the first one's headers make its body; the server must answer 400
// naming the header and close the connection without reading that body.
//   host       the Host to send (the server's host:port)
//   post_path  a route that takes a JSON POST; ok_path one that answers a GET
//   auth       a whole `Authorization: ...\r\n` line, or ""
// Returns [name, bytes, a regular expression the 400's body must match].
export function framing_cases({ host, post_path, ok_path, auth = "" }) {
  const json_head = (lines) => `POST ${post_path} HTTP/1.1\r\nHost: ${host}\r\n${auth}Content-Type: application/json\r\n${lines}`;
  const hidden = `GET ${smuggled_path} HTTP/1.1\r\nHost: ${host}\r\n\r\n`;
  const chunked_body = `${hidden.length.toString(16)}\r\n${hidden}\r\n0\r\n\r\n`;
  return [
    ["Transfer-Encoding: gzip", json_head("Transfer-Encoding: gzip\r\n\r\n") + hidden, /Transfer-Encoding/],
    ["Transfer-Encoding: identity", json_head("Transfer-Encoding: identity\r\n\r\n") + hidden, /Transfer-Encoding/],
    ["Transfer-Encoding: chunked, gzip", json_head("Transfer-Encoding: chunked, gzip\r\n\r\n") + hidden, /Transfer-Encoding/],
    ["Transfer-Encoding: gzip, chunked", json_head("Transfer-Encoding: gzip, chunked\r\n\r\n") + chunked_body, /Transfer-Encoding/],
    ["Transfer-Encoding: chunked, chunked", json_head("Transfer-Encoding: chunked, chunked\r\n\r\n") + chunked_body, /Transfer-Encoding/],
    ["two Transfer-Encoding fields (gzip, then chunked)",
     json_head("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n") + chunked_body, /Transfer-Encoding/],
    ["two Transfer-Encoding: chunked fields",
     json_head("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n") + chunked_body, /Transfer-Encoding/],
    ["Transfer-Encoding: gzip with Content-Length: 0",
     json_head("Transfer-Encoding: gzip\r\nContent-Length: 0\r\n\r\n") + hidden, /Transfer-Encoding/],
    ["Transfer-Encoding: chunked, then Content-Length",
     json_head(`Transfer-Encoding: chunked\r\nContent-Length: ${chunked_body.length}\r\n\r\n`) + chunked_body, /Content-Length/],
    ["Content-Length, then Transfer-Encoding: chunked",
     json_head(`Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n`) + chunked_body, /Transfer-Encoding/],
    ["Transfer-Encoding: gzip, folded onto a second line",
     json_head("Transfer-Encoding: gzip,\r\n chunked\r\n\r\n") + chunked_body, /line folding/],
    ["Transfer-Encoding: chunked, folded onto a second line",
     json_head("Transfer-Encoding:\r\n chunked\r\n\r\n") + chunked_body, /line folding/],
    ["Transfer-Encoding in an HTTP/1.0 request",
     `POST ${post_path} HTTP/1.0\r\nHost: ${host}\r\n${auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n` + chunked_body,
     /Transfer-Encoding/],
    ["two Content-Length fields", json_head("Content-Length: 0\r\nContent-Length: 0\r\n\r\n") + hidden, /Content-Length/],
    ["Content-Length: 0, 0", json_head("Content-Length: 0, 0\r\n\r\n") + hidden, /Content-Length/],
    ["two Host fields", `GET ${ok_path} HTTP/1.1\r\nHost: ${host}\r\nHost: ${host}\r\n${auth}\r\n` + hidden, /Host/],
    ["an HTTP/1.1 request without Host", `GET ${ok_path} HTTP/1.1\r\n${auth}\r\n` + hidden, /Host/],
  ];
}
