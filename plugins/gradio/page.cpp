// The chat page, built into the plugin: one HTML document with its CSS and
// JavaScript inline, no CDN, no web fonts, so it works on a machine with no
// network beyond the one to hostrun. The server fills in CONFIG_JSON (title,
// model, defaults) and TITLE_HTML, and CSP_NONCE afresh for every load (the
// Content-Security-Policy lets only elements carrying it run: nothing inline
// in an attribute, nothing from elsewhere). When the server wants an API key,
// the page asks for it and keeps it in the tab's sessionStorage.
//
// The page speaks to the plugin's own endpoint, POST /api/chat, reading the
// Server-Sent Events of the answer through fetch() streaming; Stop aborts the
// fetch, which closes the connection, which cancels the request in the
// engine. History lives in the page and is sent whole each turn.
//
// When the model takes images (config.images), an Image button and drag and
// drop onto the page attach PNG/JPEG/WebP/GIF files to the next message; they
// travel as data: URLs in the message's "images" and show as thumbnails
// (blob: URLs, which the CSP allows for images).
#include "page.hpp"

namespace hostrun::gradio {

const char* const kPageTemplate = R"PAGE(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover">
<meta name="color-scheme" content="light dark">
<title>TITLE_HTML</title>
<style nonce="CSP_NONCE">
:root {
  --bg: #f6f7f9; --panel: #ffffff; --text: #1c1e21; --muted: #65676b; --border: #d9dce1;
  --accent: #2563eb; --accent-text: #ffffff; --user: #e7efff; --bot: #ffffff; --danger: #c62828;
  --radius: 12px; --gap: 12px;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
@media (prefers-color-scheme: dark) {
  :root { --bg: #111316; --panel: #1b1e23; --text: #e8eaed; --muted: #9aa0a6; --border: #30343b;
          --accent: #5b8def; --user: #1f2f4d; --bot: #1b1e23; --danger: #ef5350; }
}
* { box-sizing: border-box; }
html, body { height: 100%; margin: 0; }
body { background: var(--bg); color: var(--text); font-size: 16px; line-height: 1.45; }
.app { display: grid; grid-template-columns: minmax(0, 1fr) 300px; grid-template-rows: auto minmax(0, 1fr) auto;
       grid-template-areas: "head head" "chat side" "compose side"; height: 100vh; height: 100dvh;
       max-width: 1200px; margin: 0 auto; gap: var(--gap); padding: var(--gap); }
header { grid-area: head; display: flex; align-items: baseline; gap: 12px; flex-wrap: wrap; }
header h1 { font-size: 1.25rem; margin: 0; }
header .model { color: var(--muted); font-size: 0.9rem; overflow-wrap: anywhere; }
#messages { grid-area: chat; overflow-y: auto; background: var(--panel); border: 1px solid var(--border);
            border-radius: var(--radius); padding: var(--gap); display: flex; flex-direction: column; gap: 10px; }
.empty { color: var(--muted); margin: auto; text-align: center; padding: 24px; }
.msg { max-width: 85%; padding: 10px 14px; border-radius: var(--radius); white-space: pre-wrap;
       overflow-wrap: anywhere; border: 1px solid var(--border); }
.msg.user { align-self: flex-end; background: var(--user); }
.msg.assistant { align-self: flex-start; background: var(--bot); }
.msg.assistant.streaming::after { content: "\25CF"; color: var(--accent); margin-left: 4px;
                                   animation: blink 1s steps(2, start) infinite; }
.msg .note { display: block; color: var(--muted); font-size: 0.8rem; margin-top: 6px; white-space: normal; }
.msg.error { border-color: var(--danger); color: var(--danger); }
@keyframes blink { to { visibility: hidden; } }
.compose { grid-area: compose; display: flex; gap: 8px; align-items: flex-end; }
#prompt { flex: 1; min-height: 48px; max-height: 40vh; resize: vertical; padding: 12px; font: inherit;
          color: inherit; background: var(--panel); border: 1px solid var(--border); border-radius: var(--radius); }
#prompt:focus { outline: 2px solid var(--accent); outline-offset: 1px; }
.buttons { display: flex; gap: 8px; }
.thumbs { display: flex; flex-wrap: wrap; gap: 6px; }
.thumbs:empty { display: none; }
.thumbs img { height: 64px; max-width: 128px; object-fit: cover; border-radius: 8px; border: 1px solid var(--border); }
.msg .thumbs { margin-bottom: 6px; }
.attached { position: relative; }
.attached button { position: absolute; top: -6px; right: -6px; min-height: 24px; min-width: 24px; padding: 0;
                   border-radius: 12px; font-size: 0.8rem; }
body.dragging #messages { outline: 3px dashed var(--accent); outline-offset: -6px; }
button { font: inherit; min-height: 48px; min-width: 64px; padding: 0 16px; border-radius: var(--radius);
         border: 1px solid var(--border); background: var(--panel); color: var(--text); cursor: pointer; }
button.primary { background: var(--accent); border-color: var(--accent); color: var(--accent-text); }
button:disabled { opacity: 0.45; cursor: default; }
aside { grid-area: side; background: var(--panel); border: 1px solid var(--border); border-radius: var(--radius);
        padding: var(--gap); overflow-y: auto; }
aside summary { font-weight: 600; cursor: pointer; padding: 4px 0; }
.field { margin: 14px 0; }
.field label { display: flex; justify-content: space-between; font-size: 0.9rem; margin-bottom: 4px; }
.field output { color: var(--muted); font-variant-numeric: tabular-nums; }
.field input[type=range] { width: 100%; accent-color: var(--accent); }
.field input[type=number], .field input[type=password], .field textarea { width: 100%; font: inherit; padding: 8px; color: inherit;
        background: var(--bg); border: 1px solid var(--border); border-radius: 8px; }
#status { color: var(--muted); font-size: 0.85rem; min-height: 1.2em; margin-top: 8px; }
@media (max-width: 760px) {
  .app { grid-template-columns: minmax(0, 1fr); grid-template-rows: auto auto minmax(0, 1fr) auto;
         grid-template-areas: "head" "side" "chat" "compose"; padding: 8px; gap: 8px; }
  aside { padding: 8px 12px; }
  aside:not([open]) { overflow: visible; }
  .msg { max-width: 92%; }
  .compose { flex-direction: column; align-items: stretch; }
  .buttons > button { flex: 1; }
}
</style>
</head>
<body>
<div class="app">
  <header>
    <h1 id="title">TITLE_HTML</h1>
    <span class="model" id="model"></span>
  </header>
  <main id="messages" aria-live="polite">
    <div class="empty" id="empty">Ask anything. Enter sends, Shift+Enter starts a new line.</div>
  </main>
  <aside>
    <details id="settings" open>
      <summary>Settings</summary>
      <div class="field" id="api-key-field" hidden>
        <label for="api-key">API key</label>
        <input type="password" id="api-key" autocomplete="off" spellcheck="false">
      </div>
      <div class="field">
        <label for="temperature">Temperature <output id="temperature-value"></output></label>
        <input type="range" id="temperature" min="0" max="2" step="0.05">
      </div>
      <div class="field">
        <label for="top-p">Top-p <output id="top-p-value"></output></label>
        <input type="range" id="top-p" min="0.01" max="1" step="0.01">
      </div>
      <div class="field">
        <label for="max-tokens">Max new tokens</label>
        <input type="number" id="max-tokens" min="1" step="1" inputmode="numeric">
      </div>
      <div class="field">
        <label for="system">System prompt</label>
        <textarea id="system" rows="3" placeholder="(the chat template's default)"></textarea>
      </div>
    </details>
    <div id="status" role="status"></div>
  </aside>
  <form class="compose" id="compose">
    <div class="thumbs" id="attachments" aria-label="Images attached to the next message"></div>
    <textarea id="prompt" rows="2" placeholder="Type a message" aria-label="Message"></textarea>
    <input type="file" id="image-input" accept="image/png,image/jpeg,image/webp,image/gif" multiple hidden>
    <div class="buttons">
      <button type="button" id="attach" hidden title="Attach images (or drop them on the page)">Image</button>
      <button type="submit" class="primary" id="send">Send</button>
      <button type="button" id="stop" disabled>Stop</button>
      <button type="button" id="reset">Reset</button>
    </div>
  </form>
</div>
<script id="hostrun-config" type="application/json">CONFIG_JSON</script>
<script nonce="CSP_NONCE">
"use strict";
(() => {
  const config = JSON.parse(document.getElementById("hostrun-config").textContent);
  const $ = (id) => document.getElementById(id);
  const messages = $("messages"), prompt = $("prompt"), send = $("send"), stop = $("stop"), reset = $("reset");
  const temperature = $("temperature"), topP = $("top-p"), maxTokens = $("max-tokens"), system = $("system");
  const status = $("status");
  const apiKey = $("api-key");
  if (config.api_key_required) {
    $("api-key-field").hidden = false;
    apiKey.value = sessionStorage.getItem("hostrun-api-key") || "";
    apiKey.addEventListener("change", () => sessionStorage.setItem("hostrun-api-key", apiKey.value));
  }
  // The conversation as the engine sees it: finished turns only.
  let history = [];
  // Images for the next message: {file, url} (url: a blob: URL for the thumbnail).
  let attached = [];
  const attachments = $("attachments"), imageInput = $("image-input");
  const imageTypes = ["image/png", "image/jpeg", "image/webp", "image/gif"];
  function showAttached() {
    attachments.replaceChildren(...attached.map((a, i) => {
      const box = document.createElement("span");
      box.className = "attached";
      const img = document.createElement("img");
      img.src = a.url;
      img.alt = a.file.name;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "\u00d7";
      remove.title = "Remove " + a.file.name;
      remove.addEventListener("click", () => { URL.revokeObjectURL(a.url); attached.splice(i, 1); showAttached(); });
      box.append(img, remove);
      return box;
    }));
  }
  function attach(files) {
    for (const file of files) {
      if (!imageTypes.includes(file.type)) {
        status.textContent = file.name + " is not a PNG, JPEG, WebP or GIF image.";
        continue;
      }
      attached.push({ file, url: URL.createObjectURL(file) });
    }
    showAttached();
  }
  const dataUrl = (file) => new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
  if (config.images) {
    $("attach").hidden = false;
    $("attach").addEventListener("click", () => imageInput.click());
    imageInput.addEventListener("change", () => { attach(imageInput.files); imageInput.value = ""; });
    document.addEventListener("dragover", (e) => {
      if (![...e.dataTransfer.types].includes("Files")) return;
      e.preventDefault();
      document.body.classList.add("dragging");
    });
    document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dragging"); });
    document.addEventListener("drop", (e) => {
      if (!e.dataTransfer.files.length) return;
      e.preventDefault();
      document.body.classList.remove("dragging");
      attach(e.dataTransfer.files);
    });
  }
  let running = null;  // {controller, bubble, text}
  let conversation = 0;  // Reset starts a new one; a reply stopped by Reset joins no history

  $("model").textContent = config.model + (config.remote ? " (remote)" : "");
  temperature.value = config.temperature;
  topP.value = config.top_p;
  maxTokens.value = config.max_new_tokens;
  if (config.session_len > 0) maxTokens.max = config.session_len;
  system.value = config.system || "";
  const showValues = () => {
    $("temperature-value").textContent = Number(temperature.value).toFixed(2);
    $("top-p-value").textContent = Number(topP.value).toFixed(2);
  };
  temperature.addEventListener("input", showValues);
  topP.addEventListener("input", showValues);
  showValues();
  if (window.matchMedia("(max-width: 760px)").matches) $("settings").open = false;

  function bubble(role, text, thumbnails = []) {
    const empty = $("empty");
    if (empty) empty.remove();
    const div = document.createElement("div");
    div.className = "msg " + role;
    div.dataset.role = role;
    if (thumbnails.length) {
      const strip = document.createElement("div");
      strip.className = "thumbs";
      for (const url of thumbnails) {
        const img = document.createElement("img");
        img.src = url;
        img.alt = "attached image";
        strip.appendChild(img);
      }
      div.appendChild(strip);
    }
    div.append(text);
    messages.appendChild(div);
    messages.scrollTop = messages.scrollHeight;
    return div;
  }
  function note(div, text) {
    const span = document.createElement("span");
    span.className = "note";
    span.textContent = text;
    div.appendChild(span);
  }
  function setRunning(on) {
    send.disabled = on;
    stop.disabled = !on;
    document.body.dataset.state = on ? "streaming" : "idle";
  }

  // Reads the SSE body of /api/chat: "data: {...}" events separated by blank lines.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffered.indexOf("\n\n")) >= 0) {
        const block = buffered.slice(0, cut);
        buffered = buffered.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (data) yield JSON.parse(data);
      }
    }
  }

  async function ask(text, images) {
    const turn = [];
    if (system.value.trim()) turn.push({ role: "system", content: system.value });
    const message = { role: "user", content: text };
    try {
      if (images.length) message.images = await Promise.all(images.map((a) => dataUrl(a.file)));
    } catch (err) {
      status.textContent = "Could not read an image: " + err.message;
      return;
    }
    const sent = turn.concat(history, [message]);
    bubble("user", text, images.map((a) => a.url));
    const reply = bubble("assistant", "");
    reply.classList.add("streaming");
    const controller = new AbortController();
    const mine = conversation;
    running = { controller, bubble: reply, text: "" };
    setRunning(true);
    status.textContent = "Generating...";
    const started = performance.now();
    let first = 0, outcome = null;
    try {
      const headers = { "Content-Type": "application/json" };
      if (apiKey.value) headers.Authorization = "Bearer " + apiKey.value;
      const response = await fetch("api/chat", {
        method: "POST",
        headers,
        body: JSON.stringify({
          messages: sent,
          temperature: Number(temperature.value),
          top_p: Number(topP.value),
          max_tokens: Math.max(1, parseInt(maxTokens.value, 10) || config.max_new_tokens),
        }),
        signal: controller.signal,
      });
      if (!response.ok) {
        let message = response.status + " " + response.statusText;
        try { message = (await response.json()).error.message; } catch (e) {}
        if (response.status === 401) {
          $("settings").open = true;
          apiKey.focus();
          message += " (enter the server's API key under Settings)";
        }
        throw new Error(message);
      }
      for await (const event of events(response)) {
        if (event.text) {
          if (!first) first = performance.now();
          running.text += event.text;
          reply.textContent = running.text;
          messages.scrollTop = messages.scrollHeight;
        }
        if (event.error) throw new Error(event.error);
        if (event.finish) outcome = event;
      }
      if (!outcome) throw new Error("the connection closed before the reply was finished");
    } catch (err) {
      if (controller.signal.aborted) {
        outcome = { finish: "stopped" };
      } else {
        reply.classList.add("error");
        reply.textContent = running.text;
        note(reply, "Error: " + err.message);
        status.textContent = "The request failed.";
      }
    }
    reply.classList.remove("streaming");
    if (outcome && mine === conversation) {
      history.push(message, { role: "assistant", content: running.text });
      const seconds = (performance.now() - started) / 1000;
      const tokens = outcome.completion_tokens || 0;
      if (outcome.finish === "stopped") note(reply, "(stopped)");
      else if (outcome.finish === "length") note(reply, "(reached the token limit)");
      status.textContent = outcome.finish === "stopped" ? "Stopped." :
          (tokens ? tokens + " tokens in " + seconds.toFixed(1) + " s" +
           (first && tokens > 1 ? ", " + ((tokens - 1) / ((performance.now() - first) / 1000)).toFixed(1) + " tokens/s" : "")
           : "Done in " + seconds.toFixed(1) + " s");
    }
    running = null;
    setRunning(false);
    prompt.focus();
  }

  $("compose").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    if ((!text && !attached.length) || running) return;
    prompt.value = "";
    const images = attached;
    attached = [];
    showAttached();
    ask(text, images);
  });
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("compose").requestSubmit();
    }
  });
  stop.addEventListener("click", () => { if (running) running.controller.abort(); });
  reset.addEventListener("click", () => {
    if (running) running.controller.abort();
    conversation++;
    history = [];
    messages.replaceChildren();
    const empty = document.createElement("div");
    empty.className = "empty";
    empty.id = "empty";
    empty.textContent = "New conversation.";
    messages.appendChild(empty);
    status.textContent = "";
    prompt.focus();
  });
  setRunning(false);
})();
</script>
</body>
</html>
)PAGE";

}  // namespace hostrun::gradio
