import assert from "node:assert/strict";
import { test } from "node:test";

import { errorMessage } from "../../jobs/static/jobs/http.js";

test("an error body reads as its messages, each named by its field", () => {
  assert.equal(errorMessage({ errors: { steps: ["Must be at least 1."] } }, 400), "steps: Must be at least 1.");
  assert.equal(
    errorMessage({ errors: { file: ["The uploaded file is gone."], limit: ["Too big.", "Not whole."] } }, 400),
    "file: The uploaded file is gone. limit: Too big. Not whole.",
  );
});

test("messages about the whole request, the state or the id go without a field name", () => {
  assert.equal(errorMessage({ errors: { __all__: ["You have 5 jobs queued or running."] } }, 429), "You have 5 jobs queued or running.");
  assert.equal(errorMessage({ errors: { state: ["The job has not ended yet (running)."] } }, 409), "The job has not ended yet (running).");
  assert.equal(errorMessage({ errors: { id: ["No job with this id."] } }, 404), "No job with this id.");
});

test("a body that is not the API's error shape says the status", () => {
  for (const body of [null, undefined, "oops", 42, {}, { errors: null }, { errors: {} }, { detail: "x" }]) {
    assert.equal(errorMessage(body, 502), "The server answered 502.", JSON.stringify(body));
  }
});
