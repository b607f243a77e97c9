// Each entry's template preloads exactly the modules the entry imports (directly or
// not), so the browser fetches them all at once rather than one import level at a time.
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

/** @param {string} template @returns {{preloaded: Set<string>, entry: string}} */
function scriptsOf(template) {
  const html = readFileSync(new URL(template, ROOT), "utf8");
  const preloaded = new Set([...html.matchAll(/rel="modulepreload" href="\{% static 'jobs\/([\w-]+\.js)' %\}"/g)].map((m) => m[1]));
  const entry = html.match(/<script type="module" src="\{% static 'jobs\/([\w-]+\.js)' %\}">/)?.[1] ?? "";
  return { preloaded, entry };
}

for (const [template, entry] of [["core/templates/base.html", "page.js"], ["jobs/templates/jobs/staff.html", "staff.js"]]) {
  test(`${template} preloads every module ${entry} imports, and no other`, () => {
    const scripts = scriptsOf(template);
    assert.equal(scripts.entry, entry);
    assert.deepEqual([...scripts.preloaded].sort(), [...importsOf(entry)].sort());
  });
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
