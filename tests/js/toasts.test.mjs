import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import { createProblemToaster } from "../../jobs/static/jobs/toasts.js";
import { installFakeDocument } from "./fake-dom.mjs";

/** A window whose timers run when the test says. */
function fakeWindow() {
  const timers = [];
  return {
    timers,
    setTimeout: (fn, ms) => timers.push({ fn, ms }),
    addEventListener() {},
    removeEventListener() {},
  };
}

let doc;

beforeEach(() => {
  doc = installFakeDocument();
  const toasts = doc.createElement("div");
  toasts.id = "toasts";
  doc.body.append(toasts);
});

test("a problem shows as an alert toast with its text, a close button, and goes after a while", () => {
  const win = fakeWindow();
  const toast = createProblemToaster(doc, win)("You have 5 jobs queued or running.");
  const toasts = doc.getElementById("toasts");
  assert.equal(toasts.childElementCount, 1);
  assert.equal(toast.className, "toast toast--failed");
  assert.equal(toast.getAttribute("role"), "alert");
  assert.equal(toast.querySelector(".toast__text").textContent, "You have 5 jobs queued or running.");
  assert.equal(toast.querySelector("button.toast__close").getAttribute("aria-label"), "Dismiss");
  assert.equal(win.timers.length, 1);
  win.timers[0].fn();
  assert.equal(toasts.childElementCount, 0);
});

test("problems pile up to three at most, the oldest going first", () => {
  const show = createProblemToaster(doc, fakeWindow());
  for (const n of [1, 2, 3, 4]) show(`problem ${n}`);
  const texts = doc.getElementById("toasts").children.map((toast) => toast.querySelector(".toast__text").textContent);
  assert.deepEqual(texts, ["problem 2", "problem 3", "problem 4"]);
});
