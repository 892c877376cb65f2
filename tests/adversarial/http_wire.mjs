// Shared by the adversarial HTTP tests: raw bytes over a socket (what no
// client library will send), plain requests through fetch, and the checks.
import net from "node:net";
export { check } from "../clients/npm_packages.mjs";

// Sends `bytes` on a fresh connection and reads until the server closes it or
// `wait_ms` pass. Returns the text, whether the server closed the connection,
// and the status of every response head in it (pipelined answers included).
export function exchange(url, bytes, { wait_ms = 3000 } = {}) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), hostname);
    let text = "";
    let closed = false;
    const done = () => {
      socket.destroy();
      const statuses = [...text.matchAll(/HTTP\/1\.[01] (\d{3}) /g)].map((m) => Number(m[1]));
      resolve({ text, closed, statuses });
    };
    const timer = setTimeout(done, wait_ms);
    socket.on("connect", () => socket.write(bytes));
    socket.on("data", (chunk) => { text += chunk.toString("latin1"); });
    socket.on("end", () => { closed = true; clearTimeout(timer); done(); });
    socket.on("error", () => { closed = true; clearTimeout(timer); done(); });
  });
}

// The host:port a browser would send as Host for `url`.
export const authority = (url) => new URL(url).host;

// fetch with a deadline; returns { status, headers, text, json }.
export async function request(url, path, { method = "GET", headers = {}, body } = {}) {
  const res = await fetch(url.replace(/\/$/, "") + path, { method, headers, body, signal: AbortSignal.timeout(30_000) });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}

// Node's fetch will not send a Host other than the URL's, so requests that
// pretend to come through another name go over a raw socket. Returns the
// status and the body of the (single) response.
export async function raw_request(url, { method = "GET", path = "/", headers = {}, body = "" }) {
  const lines = [`${method} ${path} HTTP/1.1`];
  const all = { host: authority(url), connection: "close", ...headers };
  if (body || method === "POST") all["content-length"] = String(Buffer.byteLength(body));
  for (const [name, value] of Object.entries(all)) if (value !== undefined) lines.push(`${name}: ${value}`);
  const { text, statuses } = await exchange(url, lines.join("\r\n") + "\r\n\r\n" + body);
  return { status: statuses[0] ?? 0, body: text.slice(text.indexOf("\r\n\r\n") + 4), text };
}
