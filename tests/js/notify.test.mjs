// notify.js: when a job's end earns a system notification, what it says, and what the
// "Notify me" control shows.
import assert from "node:assert/strict";
import { test } from "node:test";

import { CONTROL_TEXT, controlState, notificationFor, shouldNotify } from "../../jobs/static/jobs/notify.js";
import { makeJob } from "./job-factory.mjs";

const running = makeJob({ state: "running", seq: 5 });
const ended = makeJob({ state: "succeeded", seq: 6 });

/** The facts under which a notification is due; each test changes one. */
function facts(overrides = {}) {
  return { job: ended, before: running, visibility: "hidden", permission: "granted", enabled: true, already: new Set(), ...overrides };
}

test("a job ending in a hidden tab, turned on and granted, is notified", () => {
  assert.equal(shouldNotify(facts()), true);
  for (const state of ["failed", "cancelled"]) assert.equal(shouldNotify(facts({ job: makeJob({ state, seq: 6 }) })), true);
});

test("a visible tab gets no notification (the toast says it)", () => {
  assert.equal(shouldNotify(facts({ visibility: "visible" })), false);
});

test("no notification unless the user turned it on and the browser granted it", () => {
  assert.equal(shouldNotify(facts({ enabled: false })), false);
  assert.equal(shouldNotify(facts({ permission: "default" })), false);
  assert.equal(shouldNotify(facts({ permission: "denied" })), false);
  assert.equal(shouldNotify(facts({ permission: null })), false);
});

test("only the end of a job the page saw unfinished, and once per job", () => {
  assert.equal(shouldNotify(facts({ job: makeJob({ state: "running", seq: 6 }) })), false);
  assert.equal(shouldNotify(facts({ before: null })), false); // arrived already ended
  assert.equal(shouldNotify(facts({ before: makeJob({ state: "failed" }) })), false);
  assert.equal(shouldNotify(facts({ already: new Set([ended.id]) })), false);
});

test("the notification names the kind and outcome, is tagged with the job id", () => {
  assert.deepEqual(notificationFor(ended), {
    title: "primes succeeded",
    options: { body: "Click to open the job.", tag: ended.id },
  });
  assert.equal(notificationFor(makeJob({ state: "cancelled" })).title, "primes was cancelled");
});

test("a failed job's notification carries its error, cut to a line or two", () => {
  const failed = notificationFor(makeJob({ state: "failed", error: "Failed at step 3." }));
  assert.equal(failed.title, "primes failed");
  assert.equal(failed.options.body, "Failed at step 3.");
  const long = notificationFor(makeJob({ state: "failed", error: "x".repeat(500) }));
  assert.equal(long.options.body.length, 200);
  assert.ok(long.options.body.endsWith("…"));
});

test("the control shows not supported, blocked, on or off", () => {
  assert.equal(controlState({ supported: false, permission: null, enabled: true }), "unsupported");
  assert.equal(controlState({ supported: true, permission: "denied", enabled: true }), "blocked");
  assert.equal(controlState({ supported: true, permission: "granted", enabled: true }), "on");
  assert.equal(controlState({ supported: true, permission: "granted", enabled: false }), "off");
  assert.equal(controlState({ supported: true, permission: "default", enabled: true }), "off"); // asked again on a click
  for (const state of ["unsupported", "blocked", "on", "off"]) assert.ok(CONTROL_TEXT[state].label.startsWith("Notify me"));
});
