import assert from "node:assert/strict";
import { test } from "node:test";

import { editUrl, elapsedSeconds, isTerminal, jobPercent, retryUrl } from "../../jobs/static/jobs/job.js";
import { makeJob, makeProgress } from "./job-factory.mjs";

test("the percent is the server's progress.percent, not current over total", () => {
  const job = makeJob({ state: "running", progress: makeProgress({ current: 1, total: 3, percent: 40.5 }) });
  assert.equal(jobPercent(job), 40.5);
});

test("a running job without a total has no percent: the bar is indeterminate", () => {
  assert.equal(jobPercent(makeJob({ state: "running", progress: makeProgress({ total: null, percent: null }) })), null);
});

test("a job not yet reporting is at 0, a succeeded one at 100", () => {
  assert.equal(jobPercent(makeJob({ state: "queued" })), 0);
  assert.equal(jobPercent(makeJob({ state: "running" })), 0);
  assert.equal(jobPercent(makeJob({ state: "succeeded", progress: makeProgress({ percent: 80 }) })), 100);
  assert.equal(jobPercent(makeJob({ state: "failed", progress: makeProgress({ total: null, percent: null }) })), 0);
});

test("a percent out of range is clamped", () => {
  assert.equal(jobPercent(makeJob({ state: "running", progress: makeProgress({ percent: 120 }) })), 100);
  assert.equal(jobPercent(makeJob({ state: "running", progress: makeProgress({ percent: -5 }) })), 0);
});

test("succeeded, failed and cancelled are terminal", () => {
  assert.deepEqual(["queued", "running", "succeeded", "failed", "cancelled"].map(isTerminal), [false, false, true, true, true]);
});

test("elapsed runs from the start to the end, or to now while running", () => {
  const started_at = "2026-11-25T12:00:00Z";
  assert.equal(elapsedSeconds(makeJob({ started_at: null })), null);
  assert.equal(elapsedSeconds(makeJob({ started_at }), Date.parse(started_at) + 4500), 4.5);
  assert.equal(elapsedSeconds(makeJob({ started_at, finished_at: "2026-11-25T12:01:00Z" }), Date.parse(started_at) + 999999), 60);
});

test("Edit and run goes to the form on / with the job's id; Run again posts to its retry path", () => {
  assert.equal(editUrl("7b9c0d1e-0000-4000-8000-000000000001"), "/?edit=7b9c0d1e-0000-4000-8000-000000000001#job-form");
  assert.equal(retryUrl("7b9c0d1e-0000-4000-8000-000000000001"), "/api/jobs/7b9c0d1e-0000-4000-8000-000000000001/retry/");
  assert.equal(editUrl("a/b?c"), "/?edit=a%2Fb%3Fc#job-form", "an id is always one query value");
  assert.equal(retryUrl("../x"), "/api/jobs/..%2Fx/retry/");
});
