// The web page with images, in headless Chromium (playwright-core), against `serve gradio` on a LLaVA
// folder started with --session-len 20 (one image fits a one-line prompt, two do not: see
// gradio_images.mjs). The Image button attaches files (thumbnails, removable), drag and drop does too,
// the sent message shows its images, and a refusal reads as one. Screenshot: ARTIFACT_DIR/images.png.
//   node browser_images.mjs URL NPM_DIR IMAGE_DIR ARTIFACT_DIR CHROMIUM
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { check, load_package } from "./npm_packages.mjs";

const [url, npm_dir, image_dir, artifacts, chromium_path] = process.argv.slice(2);
const base = url.replace(/\/$/, "");
mkdirSync(artifacts, { recursive: true });
const guard = setTimeout(() => {
  console.log("FAIL: the browser image test did not finish within 150 s");
  process.exit(1);
}, 150_000);

const { chromium } = await load_package(npm_dir, "playwright-core");
const profile = mkdtempSync(join(tmpdir(), "hostrun-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: chromium_path,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  viewport: { width: 1280, height: 800 },
});
const page_errors = [];
const page = context.pages()[0] ?? (await context.newPage());
page.on("pageerror", (e) => page_errors.push(String(e)));
page.on("console", (m) => { if (m.type() === "error") page_errors.push(m.text()); });
const idle = () => page.waitForSelector("body[data-state=idle]", { timeout: 60_000 });

try {
  await page.goto(base + "/");
  await page.waitForSelector("#prompt");
  check(await page.isVisible("#attach"), "a model that takes images offers an Image button");
  await page.fill("#max-tokens", "2");
  await page.fill("#temperature", "0");

  // The button opens a file chooser; the chosen image shows as a thumbnail before sending.
  const chooser = page.waitForEvent("filechooser");
  await page.click("#attach");
  await (await chooser).setFiles(join(image_dir, "rgb.gif"));
  check((await page.locator("#attachments img").count()) === 1, "the chosen image shows as a thumbnail");
  await page.fill("#prompt", "Hi");
  await page.press("#prompt", "Enter");
  await page.waitForSelector(".msg.user img");
  await idle();
  const first = page.locator(".msg.assistant").nth(0);
  check(!(await first.getAttribute("class")).includes("error"), `one image is answered (${await first.textContent()})`);
  check((await page.locator("#attachments img").count()) === 0, "sending clears the attachments");
  const loaded = await page.locator(".msg.user img").evaluate((img) => img.complete && img.naturalWidth > 0);
  check(loaded, "the sent message shows its image (the CSP lets blob: thumbnails load)");

  // Drag and drop: two images dropped on the page, one removed again, then both: too long for the session.
  await page.click("#reset");
  const drop = async (files) => {
    const transfer = await page.evaluateHandle((files) => {
      const dt = new DataTransfer();
      for (const [name, type, base64] of files)
        dt.items.add(new File([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], name, { type }));
      return dt;
    }, files);
    await page.dispatchEvent("#messages", "dragover", { dataTransfer: transfer });
    await page.dispatchEvent("#messages", "drop", { dataTransfer: transfer });
  };
  const file = (name, type) => [name, type, readFileSync(join(image_dir, name)).toString("base64")];
  await drop([file("rgb.gif", "image/gif"), file("grey.jpg", "image/jpeg"), file("palette.png", "image/png")]);
  check((await page.locator("#attachments img").count()) === 3, "three dropped images show as thumbnails");
  await page.click("#attachments .attached:nth-child(3) button");
  check((await page.locator("#attachments img").count()) === 2, "the x removes one");
  await drop([["notes.txt", "text/plain", btoa("not an image")]]);
  check((await page.locator("#attachments img").count()) === 2 && /not a PNG, JPEG, WebP or GIF/.test(await page.textContent("#status")),
        `a dropped file that is no image is left out, saying so (${await page.textContent("#status")})`);
  await page.fill("#prompt", "Hi");
  await page.press("#prompt", "Enter");
  await page.waitForSelector(".msg.assistant.error");
  const refused = await page.locator(".msg.assistant").nth(0).textContent();
  check(/session length|context/.test(refused), `two images do not fit the 20-token session, and the page says so (${refused})`);
  check((await page.locator(".msg.user img").count()) === 2, "the refused message still shows both images");
  await page.screenshot({ path: join(artifacts, "images.png") });

  // Refused requests are logged by the browser itself; nothing else may be.
  const unexpected = page_errors.filter((e) => !/status of 400/.test(e));
  check(unexpected.length === 0, `no script errors (${unexpected.join(" | ") || "none"})`);
} catch (e) {
  check(false, `the browser image test ran to its end: ${e.stack ?? e}`);
  await page.screenshot({ path: join(artifacts, "images-failure.png") }).catch(() => {});
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  clearTimeout(guard);
}
