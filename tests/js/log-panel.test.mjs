import assert from "node:assert/strict";
import { beforeEach, describe, test } from "node:test";

import { createLogPanel } from "../../jobs/static/jobs/log-panel.js";
import { installFakeDocument } from "./fake-dom.mjs";
import { lineRange, makeLine } from "./log-factory.mjs";

/** @type {import("./fake-dom.mjs").FakeDocument} */
let doc;
beforeEach(() => {
  doc = installFakeDocument();
});

/** A panel whose frames run when the test says (`frame()`), in a body of 400 px. */
function makePanel(options = {}) {
  const root = doc.createElement("section");
  doc.body.append(root);
  const frames = [];
  const panel = createLogPanel(root, { jobId: "j1", schedule: (callback) => frames.push(callback), ...options });
  const body = root.querySelector(".log__body");
  Object.assign(body, { scrollTop: 0, scrollHeight: 400, clientHeight: 400 });
  const frame = () => { for (const callback of frames.splice(0)) callback(); };
  return { root, panel, body, frame, frames };
}

/** @param {*} node @param {string} type */
function fire(node, type) {
  for (const listener of node.listeners.get(type) ?? []) listener({ type, target: node });
}

const visible = (root) => root.querySelectorAll(".log__line").filter((row) => !row.hidden).map((row) => Number(row.dataset.n));

describe("the panel", () => {
  test("says there are no lines yet, and links the whole log", () => {
    const { root } = makePanel();
    assert.equal(root.querySelector(".log__empty").textContent, "No log lines yet.");
    assert.equal(root.querySelector(".log__empty").hidden, false);
    const download = root.querySelector(".log__download");
    assert.equal(download.getAttribute("href"), "/api/jobs/j1/log.txt");
    assert.equal(root.querySelector(".log__notice").hidden, true);
  });

  test("a line: a number that links to it, the time, the level, the text", () => {
    const { root, panel, frame } = makePanel();
    panel.add([makeLine(17, { level: "warning", text: "retrying" })]);
    frame();
    const row = root.querySelector("#L17");
    assert.equal(row.className, "log__line log__line--warning");
    assert.equal(row.querySelector("a.log__n").getAttribute("href"), "#L17");
    assert.equal(row.querySelector(".log__n").textContent, "17");
    assert.equal(row.querySelector(".log__t").textContent, "12:00:17");
    assert.equal(row.querySelector(".log__level").textContent, "WARN");
    assert.equal(row.querySelector(".log__text").textContent, "retrying");
    assert.equal(root.querySelector(".log__empty").hidden, true);
  });

  test("text goes in as text, never as markup", () => {
    const { root, panel, frame } = makePanel();
    panel.add([makeLine(1, { text: "<img src=x onerror=alert(1)>" })]);
    frame();
    const text = root.querySelector(".log__text");
    assert.equal(text.childNodes.length, 1);
    assert.equal(text.childNodes[0].constructor.name, "FakeText");
    assert.equal(text.textContent, "<img src=x onerror=alert(1)>");
    assert.equal(root.querySelector("img"), null);
  });

  test("lines added between frames go in at the next frame, all at once, in order", () => {
    const { root, panel, frame, frames } = makePanel();
    panel.add(lineRange(4, 6));
    panel.add(lineRange(1, 3));
    assert.equal(frames.length, 1, "one frame asked for");
    assert.equal(root.querySelectorAll(".log__line").length, 0);
    frame();
    assert.deepEqual(panel.rendered(), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(visible(root), [1, 2, 3, 4, 5, 6]);
  });

  test("older lines (a hole read over HTTP) go in their place", () => {
    const { root, panel, frame } = makePanel();
    panel.add([...lineRange(1, 2), ...lineRange(8, 9)]);
    frame();
    panel.add(lineRange(3, 7));
    panel.add([makeLine(10)]);
    frame();
    assert.deepEqual(visible(root), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  });

  test("lines go in blocks of 200, also when a long hole's lines go in before the tail", () => {
    const { root, panel, frame } = makePanel();
    panel.add(lineRange(9501, 10000)); // a backfill: the log's last 500
    frame();
    panel.add(lineRange(1, 9500)); // the hole, read over HTTP
    frame();
    const blocks = root.querySelectorAll(".log__block");
    assert.ok(blocks.every((block) => block.childElementCount <= 200), "no block past 200 lines");
    assert.ok(blocks.length <= 51, `${blocks.length} blocks`);
    const order = blocks.flatMap((block) => block.children.map((row) => Number(row.dataset.n)));
    assert.deepEqual(order, Array.from({ length: 10000 }, (_, i) => i + 1));
  });

  test("at most maxLines stay, the oldest going, and the panel says so", () => {
    const { root, panel, frame } = makePanel({ maxLines: 5 });
    panel.add(lineRange(1, 8));
    frame();
    assert.deepEqual(panel.rendered(), [4, 5, 6, 7, 8]);
    assert.equal(root.querySelector(".log__notice").textContent, "3 earlier lines not shown here (the download has them)");
    panel.add([makeLine(2)]); // older than every line here: not drawn
    frame();
    assert.deepEqual(panel.rendered(), [4, 5, 6, 7, 8]);
  });

  test("the counts: lines written, and the earlier ones not kept", () => {
    const { root, panel } = makePanel();
    panel.counts(11234, 1234);
    assert.equal(root.querySelector(".log__count").textContent, "11,234 lines");
    assert.equal(root.querySelector(".log__notice").textContent, "1,234 earlier lines not kept");
    assert.equal(root.querySelector(".log__notice").hidden, false);
    panel.counts(1, 0);
    assert.equal(root.querySelector(".log__count").textContent, "1 line");
    assert.equal(root.querySelector(".log__notice").hidden, true);
  });

  test("follows the tail until the reader scrolls up; then the jump control shows", () => {
    const { root, panel, body, frame } = makePanel();
    const jump = root.querySelector(".log__jump");
    panel.add(lineRange(1, 50));
    body.scrollHeight = 1000;
    frame();
    assert.equal(body.scrollTop, 1000, "at the end");
    body.scrollTop = 200; // 400 px above the end
    fire(body, "scroll");
    assert.equal(jump.hidden, false);
    panel.add(lineRange(51, 60));
    body.scrollHeight = 1200;
    frame();
    assert.equal(body.scrollTop, 200, "the reader stays where they are");
    jump.click();
    assert.equal(body.scrollTop, 1200);
    assert.equal(jump.hidden, true);
    fire(body, "scroll");
    panel.add(lineRange(61, 62));
    body.scrollHeight = 1300;
    frame();
    assert.equal(body.scrollTop, 1300, "following again");
  });

  test("filter by text and by level; the level buttons count their lines", () => {
    const { root, panel, frame } = makePanel();
    panel.add([
      makeLine(1, { text: "fetched page 1" }),
      makeLine(2, { level: "warning", text: "retrying page 2" }),
      makeLine(3, { level: "error", text: "gave up on page 2" }),
      makeLine(4, { level: "debug", text: "cache hit" }),
    ]);
    frame();
    const search = root.querySelector("[data-log-search]");
    search.value = " PAGE 2 ";
    fire(search, "input");
    assert.deepEqual(visible(root), [2, 3]);
    root.querySelector('[data-log-level="warning"]').click();
    assert.deepEqual(visible(root), [3]);
    assert.equal(root.querySelector('[data-log-level="warning"]').getAttribute("aria-pressed"), "false");
    search.value = "nothing like it";
    fire(search, "input");
    assert.equal(root.querySelector(".log__empty").textContent, "No lines match the filter.");
    assert.equal(root.querySelector(".log__empty").hidden, false);
    search.value = "";
    fire(search, "input");
    assert.deepEqual(visible(root), [1, 3, 4]);
    panel.add([makeLine(5, { level: "warning" }), makeLine(6)]);
    frame();
    assert.deepEqual(visible(root), [1, 3, 4, 6], "new lines meet the filter too");
    assert.equal(root.querySelector('[data-log-level="warning"] .log__tally').textContent, "2");
    assert.equal(root.querySelector('[data-log-level="info"] .log__tally').textContent, "2");
  });

  test("opened at #L17: line 17 is marked and scrolled to once it is here, and the tail is not followed", () => {
    const { root, panel, body, frame } = makePanel({ target: 17 });
    panel.add(lineRange(1, 10));
    frame();
    assert.equal(root.querySelector(".log__line--target"), null);
    panel.add(lineRange(11, 30));
    body.scrollHeight = 900;
    frame();
    const row = root.querySelector("#L17");
    assert.equal(row.classList.contains("log__line--target"), true);
    assert.deepEqual(row.scrolledIntoView, { block: "center" });
    assert.notEqual(body.scrollTop, 900);
    assert.equal(root.querySelector(".log__jump").hidden, false);
    panel.goTo(3); // a click on another line number
    assert.equal(row.classList.contains("log__line--target"), false);
    assert.equal(root.querySelector("#L3").classList.contains("log__line--target"), true);
  });
});
