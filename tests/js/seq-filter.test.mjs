import assert from "node:assert/strict";
import { test } from "node:test";

import { SeqFilter } from "../../jobs/static/jobs/seq-filter.js";
import { makeJob } from "./job-factory.mjs";

test("the first frame of a job is shown", () => {
  const filter = new SeqFilter();
  assert.equal(filter.admit(makeJob({ id: "a", seq: 5 })), true);
  assert.equal(filter.shown("a")?.seq, 5);
});

test("a frame with a higher seq is shown and becomes the one kept", () => {
  const filter = new SeqFilter();
  filter.admit(makeJob({ id: "a", seq: 5 }));
  assert.equal(filter.admit(makeJob({ id: "a", seq: 6, state: "running" })), true);
  assert.equal(filter.shown("a")?.state, "running");
});

test("a frame with an older seq is dropped and the one shown stays", () => {
  const filter = new SeqFilter();
  filter.admit(makeJob({ id: "a", seq: 7, state: "cancelled" }));
  assert.equal(filter.admit(makeJob({ id: "a", seq: 6, state: "running" })), false);
  assert.equal(filter.shown("a")?.state, "cancelled");
});

test("a frame with the same seq is dropped", () => {
  const filter = new SeqFilter();
  const first = makeJob({ id: "a", seq: 7 });
  filter.admit(first);
  assert.equal(filter.admit(makeJob({ id: "a", seq: 7, state: "running" })), false);
  assert.equal(filter.shown("a"), first);
});

test("each job is filtered on its own seq", () => {
  const filter = new SeqFilter();
  filter.admit(makeJob({ id: "a", seq: 50 }));
  assert.equal(filter.admit(makeJob({ id: "b", seq: 3 })), true, "a low seq of another job is not old");
  assert.equal(filter.admit(makeJob({ id: "b", seq: 2 })), false);
  assert.equal(filter.admit(makeJob({ id: "a", seq: 51 })), true);
  assert.deepEqual(filter.all().map((job) => [job.id, job.seq]), [["a", 51], ["b", 3]]);
});

test("a forgotten job is shown again whatever its seq", () => {
  const filter = new SeqFilter();
  filter.admit(makeJob({ id: "a", seq: 9 }));
  filter.forget("a");
  assert.equal(filter.has("a"), false);
  assert.equal(filter.admit(makeJob({ id: "a", seq: 1 })), true);
  filter.clear();
  assert.deepEqual(filter.all(), []);
});
