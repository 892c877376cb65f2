// The official Gradio JS client (@gradio/client, pinned in package.json)
// against `hostrun serve gradio`: connect, read the API, stream a reply from
// /chat, predict with history, a validation error, and a cancel.
//   node gradio_client.mjs URL NPM_DIR
import { check, load_package } from "./npm_packages.mjs";

const [url, npm_dir] = process.argv.slice(2);
const guard = setTimeout(() => {
  console.log("FAIL: the Gradio client test did not finish within 120 s");
  process.exit(1);
}, 120_000);

const { Client } = await load_package(npm_dir, "@gradio/client");
// Status events too, not only data, so the test sees how each job ends.
const client = await Client.connect(url, { events: ["data", "status"] });
check(client.config.protocol === "sse_v3", `config.protocol is sse_v3 (found ${client.config.protocol})`);
check(client.api_prefix === "/gradio_api", `api_prefix is /gradio_api (found ${client.api_prefix})`);

const api = await client.view_api();
const chat = api.named_endpoints["/chat"];
check(chat !== undefined, `view_api lists /chat (found ${Object.keys(api.named_endpoints)})`);
const names = chat.parameters.map((p) => p.parameter_name).join(",");
check(names === "message,history,system_prompt,temperature,top_p,max_tokens", `/chat's parameters (${names})`);
check(chat.type.generator === true, "/chat is a generator (it streams)");

// Streaming: every data event holds the reply so far, so each extends the one before.
{
  const job = client.submit("/chat", { message: "Tell me about the sea.", temperature: 1.0, max_tokens: 24 });
  const replies = [];
  let last_status = null;
  for await (const message of job) {
    if (message.type === "data") replies.push(message.data[0]);
    if (message.type === "status") last_status = message.stage;
  }
  check(replies.length >= 3, `the reply streamed in ${replies.length} data events (expected at least 3)`);
  const grows = replies.every((text, i) => typeof text === "string" && (i === 0 || text.startsWith(replies[i - 1])));
  check(grows, "each streamed value extends the previous one");
  check(replies.length > 0 && replies.at(-1).length > 0, `the final reply is not empty: ${JSON.stringify(replies.at(-1))}`);
  check(last_status === "complete", `the job ended with status complete (found ${last_status})`);
}

// predict with positional data and history; greedy, so twice gives the same text.
{
  const history = [{ role: "user", content: "Hi" }, { role: "assistant", content: "Hello! How can I help?" }];
  const first = await client.predict("/chat", ["What is the sea?", history, "", 0, 1, 8]);
  const second = await client.predict("/chat", ["What is the sea?", history, "", 0, 1, 8]);
  check(typeof first.data[0] === "string" && first.data[0].length > 0, `predict returns the reply (${JSON.stringify(first.data[0])})`);
  check(first.data[0] === second.data[0], "greedy predict gives the same reply twice");
  const no_history = await client.predict("/chat", ["What is the sea?", [], "", 0, 1, 8]);
  check(typeof no_history.data[0] === "string", "predict works with an empty history too");
  const pairs = await client.predict("/chat", ["What is the sea?", [["Hi", "Hello! How can I help?"]], "", 0, 1, 8]);
  check(pairs.data[0] === first.data[0], "[user, assistant] pairs mean the same history as messages");
}

// Back-to-back calls reuse the session's stream; a call after the stream was
// closed for idleness opens a new one. Either way every call gets its answer.
{
  let answered = 0;
  for (let i = 0; i < 10; i++) {
    const r = await client.predict("/chat", { message: `Count ${i}`, temperature: 0, max_tokens: 2 });
    if (typeof r.data[0] === "string") answered++;
  }
  check(answered === 10, `10 back-to-back predicts all answered (${answered})`);
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const after_idle = await client.predict("/chat", { message: "Still there?", temperature: 0, max_tokens: 2 });
  check(typeof after_idle.data[0] === "string", "a predict after the idle stream was closed is answered");
}

// A bad request is Gradio's validation error, with the server's words.
try {
  await client.predict("/chat", { message: "", max_tokens: 4 });
  check(false, "an empty message is refused");
} catch (e) {
  check(/message/.test(e.message), `an empty message is refused: ${e.message}`);
}

// Cancel: the job ends soon, with the reply it had.
{
  const job = client.submit("/chat", { message: "Write a long story.", temperature: 1.0, max_tokens: 4000 });
  const started = Date.now();
  let events = 0;
  let cancelled = false;
  for await (const message of job) {
    if (message.type === "data") {
      events++;
      if (!cancelled && events >= 2) {
        cancelled = true;
        await job.cancel();
      }
    }
  }
  const seconds = (Date.now() - started) / 1000;
  check(cancelled && seconds < 30 && events < 1000,
        `a cancelled job ends after ${events} data events in ${seconds.toFixed(2)} s (4000 tokens would take minutes)`);
}

client.close();
clearTimeout(guard);
console.log(process.exitCode ? "gradio client: FAILED" : "gradio client: all checks passed");
process.exit(process.exitCode ?? 0);
