// The web chat page in a real browser: playwright-core drives Debian's
// Chromium headless. Type a message, watch the reply stream in, press Stop,
// send another, press Reset; then the same page on a phone-sized screen.
// With KEYED_URL (a server started with --api-keys KEY): the page asks for
// the key, a message sent without it says so, and with it the reply comes.
// Every page runs under the server's Content-Security-Policy, so a script or
// style it blocks shows up as an error here. Screenshots go to ARTIFACT_DIR
// (desktop.png, phone.png).
//   node browser.mjs URL NPM_DIR ARTIFACT_DIR [CHROMIUM [KEYED_URL KEY]]
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { check, load_package } from "./npm_packages.mjs";

const [url, npm_dir, artifacts, chromium_path = "/usr/bin/chromium", keyed_url, key] = process.argv.slice(2);
const base = url.replace(/\/$/, "");
const keyed_base = keyed_url?.replace(/\/$/, "");
mkdirSync(artifacts, { recursive: true });
const guard = setTimeout(() => {
  console.log("FAIL: the browser test did not finish within 150 s");
  process.exit(1);
}, 150_000);

const { chromium } = await load_package(npm_dir, "playwright-core");
const profile = mkdtempSync(join(tmpdir(), "hostrun-chromium-"));  // a fresh --user-data-dir
const context = await chromium.launchPersistentContext(profile, {
  executablePath: chromium_path,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1280, height: 800 },
});

// The page must load nothing from anywhere but hostrun (no CDN, no web fonts).
const foreign = [];
await context.route("**/*", (route) => {
  const target = route.request().url();
  if (target.startsWith(base) || (keyed_base && target.startsWith(keyed_base))) return route.continue();
  foreign.push(target);
  return route.abort();
});
const page_errors = [];
const page = context.pages()[0] ?? (await context.newPage());
page.on("pageerror", (e) => page_errors.push(String(e)));
page.on("console", (m) => { if (m.type() === "error") page_errors.push(m.text()); });

const assistant = page.locator(".msg.assistant");
const idle = () => page.waitForSelector("body[data-state=idle]", { timeout: 60_000 });
const reply_length = async (i) => (await assistant.nth(i).evaluate((e) => e.firstChild?.textContent ?? "")).length;

try {
  await page.goto(base + "/");
  await page.waitForSelector("#prompt");
  check((await page.title()) === "hostrun chat", `the page's title (${await page.title()})`);
  check((await page.textContent("#model")).includes("tiny"), `the page names the model (${await page.textContent("#model")})`);
  check(!(await page.isVisible("#api-key")), "a server without keys asks for none");
  check(!(await page.isVisible("#attach")), "a text-only model offers no Image button");

  // A long reply, so that it is still streaming when Stop is pressed.
  await page.fill("#temperature", "1");
  await page.fill("#max-tokens", "8000");
  await page.fill("#prompt", "Tell me about the sea.");
  await page.press("#prompt", "Enter");
  await page.waitForSelector(".msg.user");
  check((await page.textContent(".msg.user")) === "Tell me about the sea.", "the message shows as the user's");
  await page.waitForFunction(() => (document.querySelector(".msg.assistant")?.textContent ?? "").length > 0);
  const early = await reply_length(0);
  await page.waitForTimeout(700);
  const later = await reply_length(0);
  const streaming = await page.getAttribute("body", "data-state");
  check(later > early && streaming === "streaming", `the reply streams in (${early} then ${later} characters, state ${streaming})`);

  await page.click("#stop");
  await idle();
  const stopped_at = await reply_length(0);
  await page.waitForTimeout(500);
  check((await reply_length(0)) === stopped_at, `after Stop the reply stops growing (${stopped_at} characters)`);
  check((await assistant.nth(0).textContent()).includes("(stopped)"), "the reply is marked (stopped)");
  check(await page.isEnabled("#send") && !(await page.isEnabled("#stop")), "Send is enabled and Stop disabled again");

  // A second turn that runs to its end.
  await page.fill("#max-tokens", "16");
  await page.fill("#prompt", "And about rivers?\nIn two lines.");
  await page.click("#send");
  await page.waitForFunction(() => document.querySelectorAll(".msg.assistant").length === 2);
  await idle();
  check((await reply_length(1)) > 0, "the second reply arrives");
  const status = await page.textContent("#status");
  check(/tokens in/.test(status), `the status line reports the reply (${status})`);
  await page.screenshot({ path: join(artifacts, "desktop.png") });

  await page.click("#reset");
  check((await page.locator(".msg").count()) === 0, "Reset clears the conversation");
  check(await page.isVisible("#empty"), "Reset shows the empty state");

  // The same page on a phone.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.reload();
  await page.waitForSelector("#prompt");
  check(!(await page.isVisible("#max-tokens")), "on a phone the settings start folded away");
  await page.click("#settings summary");
  await page.fill("#max-tokens", "12");
  await page.click("#settings summary");
  await page.fill("#prompt", "Hello from a phone");
  await page.press("#prompt", "Enter");
  await page.waitForSelector(".msg.assistant");
  await idle();
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 390, `nothing scrolls sideways on a 390 px screen (content is ${width} px wide)`);
  const send_box = await page.locator("#send").boundingBox();
  check(send_box && send_box.y + send_box.height <= 844 && send_box.height >= 40,
        `the Send button is on screen and easy to tap (${JSON.stringify(send_box)})`);
  await page.screenshot({ path: join(artifacts, "phone.png") });

  if (keyed_base) {
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.goto(keyed_base + "/");
    await page.waitForSelector("#prompt");
    check(await page.isVisible("#api-key"), "a server with keys: the page shows an API key field");
    await page.fill("#max-tokens", "8");
    await page.fill("#prompt", "Hello without a key");
    await page.press("#prompt", "Enter");
    await page.waitForSelector(".msg.assistant.error");
    const refused = await assistant.nth(0).textContent();
    check(/API key/.test(refused), `without the key the reply says what is missing (${refused})`);
    await page.fill("#api-key", key);
    await page.fill("#prompt", "Hello with the key");
    await page.press("#prompt", "Enter");
    await page.waitForFunction(() => document.querySelectorAll(".msg.assistant").length === 2);
    await idle();
    const answered = assistant.nth(1);
    check(!(await answered.getAttribute("class")).includes("error") && (await reply_length(1)) > 0,
          `with the key the reply arrives (${await answered.textContent()})`);
    // The browser logs the refused request itself; that one is expected.
    const unexpected = page_errors.filter((e) => !/status of 401/.test(e));
    page_errors.length = 0;
    page_errors.push(...unexpected);
  }

  check(foreign.length === 0, `the page loads nothing from elsewhere (${foreign.join(", ") || "nothing"})`);
  check(page_errors.length === 0, `no script errors (${page_errors.join(" | ") || "none"})`);
} catch (e) {
  check(false, `the browser test ran to its end: ${e.message}`);
  await page.screenshot({ path: join(artifacts, "failure.png") }).catch(() => {});
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  clearTimeout(guard);
}
console.log(process.exitCode ? "browser: FAILED" : "browser: all checks passed");
