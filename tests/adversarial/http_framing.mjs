// Request framing that a proxy and hostrun could read differently (request
// smuggling, issue 19 item 3). Each case hides a second request in what the
// first one's headers make its body; the server must answer 400 naming the
// header, close the connection (RFC 9112 section 6.3), and never answer the
// hidden request. Then the server still answers an ordinary request.
//   node http_framing.mjs URL POST_PATH POST_BODY OK_PATH [BEARER_KEY]
// POST_BODY is a JSON body POST_PATH accepts; OK_PATH answers a GET with 200.
import { check, exchange, request } from "./http_wire.mjs";
import { framing_cases, smuggled_path } from "./payloads.mjs";

const [url, post_path, post_body, ok_path, key] = process.argv.slice(2);
const host = new URL(url).host;
const auth = key ? `Authorization: Bearer ${key}\r\n` : "";
const json_head = (lines) => `POST ${post_path} HTTP/1.1\r\nHost: ${host}\r\n${auth}Content-Type: application/json\r\n${lines}`;
const cases = framing_cases({ host, post_path, ok_path, auth });

for (const [name, bytes, names] of cases) {
  const { text, closed, statuses } = await exchange(url, bytes);
  const body = text.slice(text.indexOf("\r\n\r\n") + 4);
  check(statuses.length === 1 && statuses[0] === 400 && closed && names.test(body),
        `${name}: one 400 naming the header, then the connection closes ` +
        `(found statuses [${statuses}], ${closed ? "closed" : "still open"}, body ${JSON.stringify(body.slice(0, 200))})`);
  check(!text.includes(smuggled_path), `${name}: the hidden request was never read as one`);
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
