import assert from "node:assert/strict";
import { test } from "node:test";

import { NOT_A_NUMBER, paramValue } from "../../jobs/static/jobs/param-value.js";

/** @param {string} paramType @param {Partial<{value: string, checked: boolean, badInput: boolean}>} state */
const input = (paramType, { value = "", checked = false, badInput = false } = {}) => ({
  value,
  checked,
  dataset: { paramType },
  validity: { badInput },
});

test("numbers are sent as numbers, a blank one is left out", () => {
  assert.equal(paramValue(input("integer", { value: "42" })), 42);
  assert.equal(paramValue(input("number", { value: "0.25" })), 0.25);
  assert.equal(paramValue(input("integer", { value: "  " })), undefined);
});

test("a number the browser could not parse gives the marker the server refuses by name", () => {
  assert.equal(paramValue(input("integer", { badInput: true })), NOT_A_NUMBER);
});

test("a checkbox is true or false, never left out", () => {
  assert.equal(paramValue(input("boolean", { checked: true, value: "on" })), true);
  assert.equal(paramValue(input("boolean", { checked: false, value: "on" })), false);
});

test("strings, dates, emails, URLs and a select's choice are sent as typed; blank is left out", () => {
  for (const type of ["string", "enum"]) assert.equal(paramValue(input(type, { value: "North " })), "North ");
  assert.equal(paramValue(input("string", { value: "2026-12-01" })), "2026-12-01");
  assert.equal(paramValue(input("enum", { value: "" })), undefined);
  assert.equal(paramValue(input("string", { value: "   " })), undefined);
});
