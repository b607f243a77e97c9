import assert from "node:assert/strict";
import { test } from "node:test";

import { createResync, resyncAfterMs } from "../../jobs/static/jobs/resync.js";
import { SeqFilter } from "../../jobs/static/jobs/seq-filter.js";
import { makeJob } from "./job-factory.mjs";

/** A resync on a list page (or a detail page), with reads answered from `server` (id → job). */
function makeResync({ jobs, server, jobId = null, afterMs = 15000 }) {
  const shown = new SeqFilter();
  for (const job of jobs) shown.admit(job);
  const clock = { now: 0 };
  const reads = [];
  const applied = [];
  const resync = createResync({
    shown,
    jobId,
    afterMs,
    now: () => clock.now,
    apply: (job) => { applied.push(job); shown.admit(job); },
    read: async (url) => {
      reads.push(url);
      if (url.startsWith("/api/jobs/?")) return { results: [...server.values()] };
      const job = server.get(decodeURIComponent(url.split("/")[3]));
      if (!job) throw Object.assign(new Error("HTTP 404"), { status: 404 });
      return job;
    },
  });
  return { resync, shown, clock, reads, applied };
}

test("the silence allowed comes from <body data-stream-resync-seconds>, 15 s without it", () => {
  assert.equal(resyncAfterMs(/** @type {*} */ ({ dataset: { streamResyncSeconds: "1.5" } })), 1500);
  assert.equal(resyncAfterMs(/** @type {*} */ ({ dataset: {} })), 15000);
  assert.equal(resyncAfterMs(null), 15000);
});

test("a job silent for the interval is re-read with its own GET; a job heard of lately is not", async () => {
  const silent = makeJob({ id: "s", state: "running", seq: 3 });
  const lively = makeJob({ id: "l", state: "running", seq: 3 });
  const { resync, clock, reads, applied } = makeResync({ jobs: [silent, lively], server: new Map([["s", { ...silent, seq: 4, state: "succeeded" }]]) });
  resync.heard("s");
  resync.heard("l");
  clock.now = 14000;
  resync.heard("l");
  clock.now = 15000;
  await resync.rereadSilent();
  assert.deepEqual(reads, ["/api/jobs/s/"]);
  assert.deepEqual(applied.map((job) => [job.id, job.state]), [["s", "succeeded"]]);
  await resync.rereadSilent();
  assert.equal(reads.length, 1, "at most one re-read per job per interval");
});

test("several silent jobs on the list page are re-read with one list request", async () => {
  const jobs = ["a", "b", "c"].map((id) => makeJob({ id, state: "running", seq: 2 }));
  const server = new Map(jobs.map((job) => [job.id, { ...job, seq: 3 }]));
  server.set("stranger", makeJob({ id: "stranger", state: "running" }));
  const { resync, clock, reads, applied } = makeResync({ jobs, server });
  for (const job of jobs) resync.heard(job.id);
  clock.now = 20000;
  await resync.rereadSilent();
  assert.deepEqual(reads, ["/api/jobs/?page_size=100"]);
  assert.deepEqual(applied.map((job) => job.id).sort(), ["a", "b", "c"], "only jobs on the page");
});

test("rereadShown tells whether the server answered", async () => {
  const job = makeJob({ id: "gone", state: "running" });
  const answers = makeResync({ jobs: [job], server: new Map() });
  assert.equal(await answers.resync.rereadShown(), true, "a 404 is an answer");
  const away = makeResync({ jobs: [job], server: new Map() });
  const resync = createResync({ shown: away.shown, jobId: null, afterMs: 15000, apply: () => {}, read: async () => { throw new TypeError("network down"); } });
  assert.equal(await resync.rereadShown(), false);
});
