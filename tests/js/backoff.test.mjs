import assert from "node:assert/strict";
import { test } from "node:test";

import { BACKOFF_BASE_MS, BACKOFF_MAX_MS, backoffDelay } from "../../jobs/static/jobs/backoff.js";

const LOWEST = () => 0;
const HIGHEST = () => 1 - Number.EPSILON;

test("the first retry waits between half the base and the base", () => {
  assert.equal(backoffDelay(0, LOWEST), BACKOFF_BASE_MS / 2);
  assert.ok(backoffDelay(0, HIGHEST) < BACKOFF_BASE_MS);
  assert.ok(backoffDelay(0, HIGHEST) > BACKOFF_BASE_MS * 0.99);
});

test("each attempt's wait lies in the upper half of a ceiling that doubles", () => {
  for (let attempt = 0; attempt < 5; attempt += 1) {
    const ceiling = BACKOFF_BASE_MS * 2 ** attempt;
    assert.equal(backoffDelay(attempt, LOWEST), ceiling / 2, `attempt ${attempt}, lowest`);
    assert.equal(backoffDelay(attempt, () => 0.5), ceiling * 0.75, `attempt ${attempt}, middle`);
    assert.ok(backoffDelay(attempt, HIGHEST) < ceiling, `attempt ${attempt}, highest`);
  }
});

test("the wait is capped however many attempts failed", () => {
  for (const attempt of [5, 6, 10, 50, 1000]) {
    assert.equal(backoffDelay(attempt, LOWEST), BACKOFF_MAX_MS / 2, `attempt ${attempt}`);
    assert.ok(backoffDelay(attempt, HIGHEST) < BACKOFF_MAX_MS, `attempt ${attempt}`);
  }
  assert.equal(backoffDelay(5, LOWEST), BACKOFF_MAX_MS / 2, "500 × 2^5 = 16 s is over the cap already");
  assert.equal(backoffDelay(4, LOWEST), 4000, "500 × 2^4 = 8 s is under it");
});

test("the jitter comes from the random source handed in, so waits differ between clients", () => {
  const values = [0.1, 0.9];
  const delays = values.map((value) => backoffDelay(3, () => value));
  assert.deepEqual(delays, [2000 + 0.1 * 2000, 2000 + 0.9 * 2000]);
});
