import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import { byStartThenCreated, renderStaffRow } from "../../jobs/static/jobs/staff-render.js";
import { installFakeDocument } from "./fake-dom.mjs";
import { makeJob, makeProgress } from "./job-factory.mjs";

beforeEach(() => {
  installFakeDocument();
});

const noCancel = () => assert.fail("no cancel expected");

test("a running row shows the server's percent, the message and the rate", () => {
  const job = makeJob({ id: "0123456789ab", state: "running", progress: makeProgress({ current: 1, total: 2, percent: 34.5, rate: 12.46 }) });
  const row = renderStaffRow(job, null, null, noCancel);
  assert.equal(row.tagName, "TR");
  assert.equal(row.getAttribute("data-job-id"), "0123456789ab");
  assert.equal(row.className, "staff-row staff-row--running");
  assert.equal(row.querySelector(".staff-row__job a").getAttribute("href"), job.url);
  assert.equal(row.querySelector(".staff-row__id").textContent, " 01234567");
  assert.equal(row.querySelector(".badge").textContent, "running");
  const bar = row.querySelector("[role=progressbar]");
  assert.equal(bar.className, "bar");
  assert.equal(bar.getAttribute("aria-valuenow"), "34.5");
  assert.equal(bar.firstElementChild.style.width, "34.5%");
  assert.equal(row.querySelector(".staff-row__numbers").textContent, "34.5 % · checked 340,000 numbers · 12/s");
  assert.equal(row.querySelector(".staff-row__line").textContent, "");
});

test("a running row without a total has an indeterminate bar", () => {
  const job = makeJob({ state: "running", progress: makeProgress({ total: null, percent: null, rate: null }) });
  const bar = renderStaffRow(job, null, null, noCancel).querySelector(".bar");
  assert.equal(bar.className, "bar bar--indeterminate");
  assert.equal(bar.hasAttribute("aria-valuenow"), false);
});

test("a queued row names its place in line and has a cancel button that reports its job", () => {
  const clicks = [];
  const row = renderStaffRow(makeJob({ id: "q1", state: "queued" }), 3, null, (id, button) => clicks.push([id, button.textContent]));
  assert.equal(row.querySelector(".staff-row__line").textContent, "3rd in line");
  assert.equal(row.querySelector(".staff-row__numbers").textContent, "", "no percent before a report");
  const button = row.querySelector("button");
  assert.equal(button.getAttribute("type"), "button");
  button.click();
  assert.deepEqual(clicks, [["q1", "Cancel"]]);
});

test("an ended row has no cancel button and shows the error", () => {
  for (const state of ["succeeded", "failed", "cancelled"]) {
    const row = renderStaffRow(makeJob({ state, error: state === "failed" ? "Failed at step 3." : null }), null, null, noCancel);
    assert.equal(row.querySelector("button"), null, state);
  }
  const failed = renderStaffRow(makeJob({ state: "failed", error: "<b>boom</b>" }), null, null, noCancel);
  assert.equal(failed.querySelector(".staff-row__numbers").textContent, "<b>boom</b>");
  assert.equal(failed.querySelectorAll("b").length, 0);
});

test("redrawing reuses the row", () => {
  const row = renderStaffRow(makeJob({ id: "r", state: "queued" }), 1, null, noCancel);
  const again = renderStaffRow(makeJob({ id: "r", state: "running", seq: 2 }), null, row, noCancel);
  assert.equal(again, row);
  assert.equal(row.className, "staff-row staff-row--running");
  assert.equal(row.children.length, 5);
});

test("running jobs come first, longest running on top, then the queue oldest first", () => {
  const jobs = [
    makeJob({ id: "q-new", state: "queued", created_at: "2026-11-25T12:00:05Z" }),
    makeJob({ id: "r-late", state: "running", started_at: "2026-11-25T12:00:04Z" }),
    makeJob({ id: "q-old", state: "queued", created_at: "2026-11-25T12:00:01Z" }),
    makeJob({ id: "r-early", state: "running", started_at: "2026-11-25T12:00:02Z" }),
  ];
  assert.deepEqual(jobs.sort(byStartThenCreated).map((job) => job.id), ["r-early", "r-late", "q-old", "q-new"]);
});
