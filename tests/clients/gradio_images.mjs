// Images through the Gradio API with @gradio/client, against `hostrun serve gradio` on a LLaVA folder
// started with --session-len 20: a one-turn prompt of "Hi" is 11 tokens, and each image adds its 4
// embeddings and a newline, so one image fits and two do not. That is how this test sees that the
// images reached the engine (the tiny model's replies mean nothing).
//   node gradio_images.mjs URL NPM_DIR IMAGE_DIR
import { readFileSync } from "node:fs";
import { check, load_package } from "./npm_packages.mjs";

const [url, npm_dir, image_dir] = process.argv.slice(2);
const guard = setTimeout(() => {
  console.log("FAIL: the Gradio image test did not finish within 120 s");
  process.exit(1);
}, 120_000);

const { Client, handle_file } = await load_package(npm_dir, "@gradio/client");
const client = await Client.connect(url);
const api = await client.view_api();
const message = api.named_endpoints["/chat"].parameters[0];
check(message.component === "Multimodaltextbox", `the message is a Multimodaltextbox (found ${message.component})`);

const gif_bytes = readFileSync(`${image_dir}/rgb.gif`);
const gif = () => handle_file(new Blob([gif_bytes], { type: "image/gif" }));
const jpeg = () => handle_file(new Blob([readFileSync(`${image_dir}/grey.jpg`)], { type: "image/jpeg" }));
const ask = (files, text = "Hi") => client.predict("/chat", { message: { text, files }, temperature: 0, max_tokens: 2 });
async function refused(promise) {
  try {
    await promise;
    return null;
  } catch (e) {
    return e.message ?? String(e);
  }
}

const one = await ask([gif()]);
check(typeof one.data[0] === "string", `an uploaded image (a Blob through /upload) is answered (${JSON.stringify(one.data[0])})`);
const plain = await ask([]);
check(typeof plain.data[0] === "string", "no image is answered too");
const two = await refused(ask([gif(), jpeg()]));
check(two !== null && /session length|context/.test(two), `two images no longer fit the 20-token session: ${two}`);
const inline = await ask([{ url: `data:image/gif;base64,${gif_bytes.toString("base64")}`, meta: { _type: "gradio.FileData" } }]);
check(typeof inline.data[0] === "string", "an image as a data: URL is answered");
const only_image = await client.predict("/chat", { message: { text: "", files: [gif()] }, temperature: 0, max_tokens: 2 });
check(typeof only_image.data[0] === "string", "an image with no text is a message too");

const not_image = await refused(ask([handle_file(new Blob(["just some text"], { type: "text/plain" }))]));
check(not_image !== null && /data\[0\]\.files\[0\]/.test(not_image) && /not a PNG, JPEG, WebP or GIF/.test(not_image),
      `a file that is no image is refused, naming it: ${not_image}`);
const elsewhere = await refused(ask([{ path: "/etc/passwd", meta: { _type: "gradio.FileData" } }]));
check(elsewhere !== null && /neither a file uploaded to this server/.test(elsewhere),
      `a path never uploaded is refused (nothing is read from the server's disk): ${elsewhere}`);
const fetched = await refused(ask([{ path: "https://example.com/cat.png", url: "https://example.com/cat.png", meta: { _type: "gradio.FileData" } }]));
check(fetched !== null && /fetches nothing/.test(fetched), `an http URL is not fetched: ${fetched}`);

// /upload itself: bad forms are 400s.
const upload = (body, type) => fetch(`${url}/gradio_api/upload`, { method: "POST", body, headers: type ? { "content-type": type } : {} });
check((await upload("{}", "application/json")).status === 400, "an upload that is not multipart is a 400");
const no_files = new FormData();
no_files.append("other", "x");
check((await upload(no_files)).status === 400, "a form without files is a 400");

clearTimeout(guard);
