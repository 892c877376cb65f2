// Loads the pinned npm packages from the folder install.sh filled (not from
// beside this file), through each package's own "exports" for ESM.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

export async function load_package(npm_dir, name) {
  const require = createRequire(join(npm_dir, "package.json"));
  const manifest_path = require.resolve(`${name}/package.json`);
  const manifest = JSON.parse(readFileSync(manifest_path, "utf8"));
  const root = manifest.exports?.["."];
  const entry = (root && (root.import || root.default)) || manifest.module || manifest.main || "index.js";
  return import(pathToFileURL(join(dirname(manifest_path), typeof entry === "string" ? entry : entry.default)).href);
}

// A failed check ends the script with a message naming what was expected and found.
export function check(condition, message) {
  if (!condition) {
    console.log(`FAIL: ${message}`);
    process.exitCode = 1;
    return false;
  }
  console.log(`ok: ${message}`);
  return true;
}
