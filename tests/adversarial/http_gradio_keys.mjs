// The Gradio bridge with API keys (issue 19 item 7): everything but the page
// itself needs `Authorization: Bearer KEY`, with the api_server's messages,
// and the official @gradio/client still works when given the key.
//   node http_gradio_keys.mjs GRADIO_URL NPM_DIR KEY
import { load_package } from "../clients/npm_packages.mjs";
import { check, request } from "./http_wire.mjs";

const [gradio, npm_dir, key] = process.argv.slice(2);
const bearer = { authorization: `Bearer ${key}` };

const page = await request(gradio, "/");
check(page.status === 200 && page.text.includes('"api_key_required":true'),
      `the page itself is served, and tells the script a key is needed (${page.status})`);
for (const path of ["/config", "/gradio_api/config", "/gradio_api/info", "/api/info", "/gradio_api/app_id"]) {
  const none = await request(gradio, path);
  const wrong = await request(gradio, path, { headers: { authorization: "Bearer not-the-key" } });
  const right = await request(gradio, path, { headers: bearer });
  const said = JSON.stringify(none.json);
  check(none.status === 401 && none.headers.get("www-authenticate") === "Bearer" && /provide an API key/.test(said),
        `${path} without a key: 401 (${none.status}: ${said})`);
  check(wrong.status === 401 && /Incorrect API key/.test(wrong.text), `${path} with a wrong key: 401 (${wrong.status})`);
  check(right.status === 200, `${path} with the key: 200 (${right.status})`);
}
for (const [path, body] of [["/api/chat", { messages: [{ role: "user", content: "Hi" }], max_tokens: 1 }],
                            ["/gradio_api/queue/join", { data: ["Hi"], fn_index: 1, session_hash: "nokey" }]]) {
  const r = await request(gradio, path, { method: "POST", headers: { "content-type": "application/json" },
                                          body: JSON.stringify(body) });
  check(r.status === 401, `POST ${path} without a key: 401 (${r.status}: ${r.text})`);
}
const stream = await request(gradio, "/gradio_api/queue/data?session_hash=nokey");
check(stream.status === 401, `GET /gradio_api/queue/data without a key: 401 (${stream.status})`);

const { Client } = await load_package(npm_dir, "@gradio/client");
try {
  await Client.connect(gradio);
  check(false, "@gradio/client without the key cannot connect");
} catch (e) {
  check(true, `@gradio/client without the key cannot connect: ${e.message}`);
}
// The key as a header reaches every request the client makes, its stream and cancel included.
const client = await Client.connect(gradio, { headers: bearer, events: ["data", "status"] });
const { data } = await client.predict("/chat", { message: "What is the sea?", temperature: 0, max_tokens: 8 });
check(typeof data[0] === "string" && data[0].length > 0, `@gradio/client with the key: predict answers (${JSON.stringify(data[0])})`);
{
  const job = client.submit("/chat", { message: "Write a long story.", temperature: 1, max_tokens: 4000 });
  const started = Date.now();
  let events = 0, last = null;
  for await (const message of job) {
    if (message.type === "data" && ++events === 2) await job.cancel();
    if (message.type === "status") last = message.stage;
  }
  const seconds = (Date.now() - started) / 1000;
  check(last === "complete" && seconds < 30, `@gradio/client with the key: a cancelled job ends (${last}, ${seconds.toFixed(1)} s)`);
}
client.close();
process.exit(process.exitCode ?? 0);
