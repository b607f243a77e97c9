// The pages preload every module their entry imports, read from the modules' import
// lines (jobs/templatetags/browser_modules.py), which works only while each module
// imports its siblings by a relative path.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

const ROOT = new URL("../../", import.meta.url);
const STATIC = new URL("jobs/static/jobs/", ROOT);

/** @param {string} name @returns {Set<string>} every module `name` imports, transitively */
function importsOf(name, found = new Set()) {
  const source = readFileSync(new URL(name, STATIC), "utf8");
  for (const [, imported] of source.matchAll(/^import [^"]*"\.\/([\w-]+\.js)";$/gm)) {
    if (found.has(imported)) continue;
    found.add(imported);
    importsOf(imported, found);
  }
  return found;
}

test("no module imports anything but its siblings, by a relative path", () => {
  for (const name of ["page.js", "staff.js"]) {
    for (const module of [name, ...importsOf(name)]) {
      const source = readFileSync(new URL(module, STATIC), "utf8");
      const imports = [...source.matchAll(/^import .*$/gm)].map((m) => m[0]);
      for (const line of imports) assert.match(line, /from "\.\/[\w-]+\.js";$/, `${module}: ${line}`);
    }
  }
});
