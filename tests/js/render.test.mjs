import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import { renderElapsed, renderJob } from "../../jobs/static/jobs/render.js";
import { installFakeDocument } from "./fake-dom.mjs";
import { makeJob, makeProgress } from "./job-factory.mjs";

const NOW = Date.parse("2026-11-25T12:00:10Z");

beforeEach(() => {
  installFakeDocument();
});

/** @param {*} card @param {string} selector */
function text(card, selector) {
  return card.querySelector(selector)?.textContent ?? null;
}

function cancelButton(card) {
  return card.querySelector("[data-cancel]");
}

test("a card carries the job's id, state and hooks", () => {
  const card = renderJob(makeJob({ id: "abc", state: "queued" }), null, { now: NOW });
  assert.equal(card.tagName, "ARTICLE");
  assert.equal(card.id, "job-abc");
  assert.equal(card.className, "job");
  assert.equal(card.getAttribute("data-state"), "queued");
  assert.equal(card.getAttribute("data-job-id"), "abc");
  assert.equal(card.querySelector("a.job__title").href, "/jobs/7b9c0d1e-0000-4000-8000-000000000001/");
  assert.equal(text(card, ".job__params"), "limit 2,000,000");
  assert.equal(text(card, ".job__more"), "Details →");
});

test("queued without a place in line: the badge says Queued, waiting for a worker, bar at 0", () => {
  const card = renderJob(makeJob({ state: "queued" }), null, { now: NOW });
  assert.equal(text(card, ".badge"), "Queued");
  assert.equal(card.querySelector(".badge").className, "badge badge--queued");
  assert.equal(text(card, ".job__message"), "Waiting for a worker…");
  const bar = card.querySelector(".bar");
  assert.equal(bar.className, "bar");
  assert.equal(bar.getAttribute("aria-valuenow"), "0");
  assert.equal(bar.firstElementChild.style.width, "0%");
  assert.equal(card.querySelector(".job__percent"), null, "no percent before a report");
  assert.equal(cancelButton(card).textContent, "Cancel");
});

test("queued with a place in line: the badge names it", () => {
  const card = renderJob(makeJob({ state: "queued", queue_position: 2 }), null, { now: NOW });
  assert.equal(text(card, ".badge"), "Queued · 2nd in line");
});

test("running with total, rate and ETA: bar at the server's percent, every number shown", () => {
  const job = makeJob({
    state: "running", started_at: "2026-11-25T12:00:00Z",
    progress: makeProgress({ current: 1, total: 3, percent: 34.4, rate: 12.46, eta_seconds: 5.5 }),
  });
  const card = renderJob(job, null, { now: NOW });
  const bar = card.querySelector("[role=progressbar]");
  assert.equal(bar.className, "bar");
  assert.equal(bar.getAttribute("aria-valuenow"), "34");
  assert.equal(bar.getAttribute("data-percent"), "34");
  assert.equal(bar.getAttribute("aria-label"), "primes progress");
  assert.equal(bar.firstElementChild.style.width, "34.4%");
  assert.equal(text(card, ".job__message"), "checked 340,000 numbers");
  assert.equal(text(card, ".job__percent"), "34.4%");
  assert.equal(text(card, ".job__rate"), "12.5/s");
  assert.equal(text(card, ".job__eta"), "about 6 s left");
  assert.equal(text(card, ".job__elapsed"), "elapsed 10 s");
  assert.equal(text(card, ".badge"), "Running");
  assert.equal(cancelButton(card).textContent, "Cancel");
});

test("running without a total: an indeterminate bar, no percent, rate or ETA", () => {
  const job = makeJob({
    state: "running", started_at: "2026-11-25T12:00:00Z",
    progress: makeProgress({ total: null, percent: null, rate: null, eta_seconds: null, message: "step 2: fetching" }),
  });
  const card = renderJob(job, null, { now: NOW });
  const bar = card.querySelector(".bar");
  assert.equal(bar.className, "bar bar--indeterminate");
  assert.equal(bar.hasAttribute("aria-valuenow"), false);
  assert.equal(bar.getAttribute("data-percent"), "");
  assert.equal(bar.firstElementChild.style.width, "");
  for (const selector of [".job__percent", ".job__rate", ".job__eta"]) assert.equal(card.querySelector(selector), null, selector);
  assert.equal(text(card, ".job__message"), "step 2: fetching");
});

test("succeeded with a result and a result_url: full bar, the result listed, a download link, no cancel", () => {
  const job = makeJob({
    state: "succeeded", started_at: "2026-11-25T12:00:00Z", finished_at: "2026-11-25T12:03:05Z",
    progress: makeProgress({ percent: 99.9 }), result: { count: 148933 }, result_url: "/api/jobs/x/result/",
  });
  const card = renderJob(job, null, { now: NOW });
  assert.equal(card.querySelector(".bar").getAttribute("aria-valuenow"), "100");
  assert.equal(text(card, ".job__percent"), "100%");
  assert.equal(text(card, ".job__elapsed"), "took 3 min 5 s");
  assert.equal(card.querySelector(".job__rate"), null, "a rate only while running");
  const result = card.querySelector("dl.job__result");
  assert.equal(text(result, "dt"), "count");
  assert.equal(text(result, "dd"), "148,933");
  const download = card.querySelector("a.button");
  assert.equal(download.textContent, "Download result");
  assert.equal(download.href, "/api/jobs/x/result/");
  assert.equal(download.hasAttribute("download"), true);
  assert.equal(cancelButton(card), null);
  assert.equal(text(card, ".badge"), "Succeeded");
});

test("a result that is not an object shows as one line", () => {
  const card = renderJob(makeJob({ state: "succeeded", result: 42 }), null, { now: NOW });
  assert.equal(card.querySelector("p.job__result").textContent, "42");
});

test("failed with an error: the error shown, no cancel", () => {
  const card = renderJob(makeJob({ state: "failed", error: "Failed at step 3." }), null, { now: NOW });
  assert.equal(text(card, ".job__error"), "Failed at step 3.");
  assert.equal(text(card, ".badge"), "Failed");
  assert.equal(card.getAttribute("data-state"), "failed");
  assert.equal(cancelButton(card), null);
});

test("cancelled: no cancel button, no error", () => {
  const card = renderJob(makeJob({ state: "cancelled" }), null, { now: NOW });
  assert.equal(text(card, ".badge"), "Cancelled");
  assert.equal(card.querySelector(".job__error"), null);
  assert.equal(cancelButton(card), null);
});

test("the cancel button is there while the job has not ended, disabled while a cancel is pending", () => {
  for (const state of ["queued", "running"]) {
    const button = cancelButton(renderJob(makeJob({ id: "j", state }), null, { now: NOW }));
    assert.equal(button.getAttribute("data-cancel"), "j", state);
    assert.equal(button.type, "button");
    assert.equal(button.disabled, false);
  }
  const pending = cancelButton(renderJob(makeJob({ state: "running" }), null, { cancelling: true, now: NOW }));
  assert.equal(pending.textContent, "Cancelling…");
  assert.equal(pending.disabled, true);
});

test("job text containing markup comes out as text", () => {
  const markup = "<b>bold</b><img src=x onerror=alert(1)>";
  const job = makeJob({
    kind: markup, state: "failed", params: { [markup]: markup }, error: markup,
    progress: makeProgress({ message: markup }), result: { [markup]: markup },
  });
  const card = renderJob(job, null, { now: NOW });
  assert.equal(text(card, ".job__title"), markup);
  assert.equal(text(card, ".job__message"), markup);
  assert.equal(text(card, ".job__error"), markup);
  assert.equal(text(card, ".job__result dd"), markup);
  assert.equal(card.querySelectorAll("b").length, 0);
  assert.equal(card.querySelectorAll("img").length, 0);
});

test("redrawing a card keeps its bar element, so the width animates", () => {
  const running = makeJob({ state: "running", seq: 2, progress: makeProgress({ percent: 20 }) });
  const card = renderJob(running, null, { now: NOW });
  const bar = card.querySelector(".bar");
  renderJob({ ...running, seq: 3, progress: makeProgress({ percent: 60 }) }, card, { now: NOW });
  assert.equal(card.querySelector(".bar"), bar);
  assert.equal(bar.firstElementChild.style.width, "60%");
  assert.equal(card.querySelectorAll(".bar").length, 1);
});

test("the detail card has a heading, the parameters and the timeline, and no details link", () => {
  const job = makeJob({ id: "d1", state: "queued" });
  const card = renderJob(job, null, { detail: true, now: NOW });
  assert.equal(card.className, "job job--detail");
  assert.equal(card.querySelector("h1.job__title").textContent, "primes");
  assert.equal(card.querySelector("a.job__title"), null);
  assert.equal(card.querySelector(".job__more"), null);
  assert.deepEqual(card.querySelectorAll(".job__details h2").map((h) => h.textContent), ["Parameters", "Timeline"]);
  assert.equal(text(card, ".job__param-list dd"), "2,000,000");
  const facts = card.querySelectorAll(".job__facts dd").map((dd) => dd.textContent);
  assert.equal(facts[0], "d1");
  assert.deepEqual(facts.slice(2), ["—", "—"], "not started, not finished");
});

test("the elapsed clock moves on between frames while running", () => {
  const job = makeJob({ state: "running", started_at: "2026-11-25T12:00:00Z", progress: makeProgress() });
  const card = renderJob(job, null, { now: NOW });
  renderElapsed(card, job, NOW + 65_000);
  assert.equal(text(card, ".job__elapsed"), "elapsed 1 min 15 s");
});

test("an ended job offers Run again and Edit and run, in every terminal state", () => {
  for (const state of ["succeeded", "failed", "cancelled"]) {
    const card = renderJob(makeJob({ id: "j 1", state }), null, { now: NOW });
    const again = card.querySelector("[data-retry]");
    assert.equal(again.tagName, "BUTTON", state);
    assert.equal(again.type, "button");
    assert.equal(again.getAttribute("data-retry"), "j 1");
    assert.equal(again.textContent, "Run again");
    assert.equal(again.disabled, false);
    const edit = card.querySelector("a[data-edit]");
    assert.equal(edit.textContent, "Edit and run", state);
    assert.equal(edit.href, "/?edit=j%201#job-form");
  }
});

test("a job that has not ended offers neither Run again nor Edit and run", () => {
  for (const state of ["queued", "running"]) {
    const card = renderJob(makeJob({ state }), null, { now: NOW });
    assert.equal(card.querySelector("[data-retry]"), null, state);
    assert.equal(card.querySelector("[data-edit]"), null, state);
  }
});

test("the buttons appear when a card drawn running is redrawn ended, and Run again waits while asked", () => {
  const card = renderJob(makeJob({ id: "j", state: "running" }), null, { now: NOW });
  renderJob(makeJob({ id: "j", state: "succeeded" }), card, { now: NOW });
  assert.equal(cancelButton(card), null);
  assert.equal(card.querySelector("[data-retry]").textContent, "Run again");
  renderJob(makeJob({ id: "j", state: "succeeded" }), card, { retrying: true, now: NOW });
  const pending = card.querySelector("[data-retry]");
  assert.equal(pending.textContent, "Starting…");
  assert.equal(pending.disabled, true);
});
