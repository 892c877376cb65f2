// Request framing that a proxy and hostrun could read differently (request
// smuggling, issue 19 item 3). Each case hides a second request in what the
// first one's headers make its body; the server must answer 400 naming the
// header, close the connection (RFC 9112 section 6.3), and never answer the
// hidden request. Then the server still answers an ordinary request.
//   node http_framing.mjs URL POST_PATH POST_BODY OK_PATH [BEARER_KEY]
// POST_BODY is a JSON body POST_PATH accepts; OK_PATH answers a GET with 200.
import { check, exchange, request } from "./http_wire.mjs";

const [url, post_path, post_body, ok_path, key] = process.argv.slice(2);
const host = new URL(url).host;
const auth = key ? `Authorization: Bearer ${key}\r\n` : "";
const json_head = (lines) => `POST ${post_path} HTTP/1.1\r\nHost: ${host}\r\n${auth}Content-Type: application/json\r\n${lines}`;
// Answered 404 if the server ever reads it as a request.
const hidden = `GET /smuggled HTTP/1.1\r\nHost: ${host}\r\n\r\n`;
const chunked_body = `${hidden.length.toString(16)}\r\n${hidden}\r\n0\r\n\r\n`;

const cases = [
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

for (const [name, bytes, names] of cases) {
  const { text, closed, statuses } = await exchange(url, bytes);
  const body = text.slice(text.indexOf("\r\n\r\n") + 4);
  check(statuses.length === 1 && statuses[0] === 400 && closed && names.test(body),
        `${name}: one 400 naming the header, then the connection closes ` +
        `(found statuses [${statuses}], ${closed ? "closed" : "still open"}, body ${JSON.stringify(body.slice(0, 200))})`);
  check(!text.includes("/smuggled"), `${name}: the hidden request was never read as one`);
}

// A well-formed chunked body is read as the body, and the connection stays open for the next request.
{
  const payload = post_body;
  const bytes = json_head("Transfer-Encoding: chunked\r\n\r\n") + `${Buffer.byteLength(payload).toString(16)}\r\n${payload}\r\n0\r\n\r\n` +
                `GET ${ok_path} HTTP/1.1\r\nHost: ${host}\r\n${auth}Connection: close\r\n\r\n`;
  const { statuses, closed } = await exchange(url, bytes);
  check(statuses.length === 2 && statuses[0] === 200 && statuses[1] === 200 && closed,
        `a proper chunked POST is read, and the pipelined request after it answered (statuses [${statuses}])`);
}

const after = await request(url, ok_path, { headers: key ? { authorization: `Bearer ${key}` } : {} });
check(after.status === 200, `the server still answers GET ${ok_path} (${after.status})`);
process.exit(process.exitCode ?? 0);
