import assert from "node:assert/strict";
import { test } from "node:test";

import {
  formatCount, formatDuration, formatEta, formatPercent, formatPercentTenths, formatRate, formatValue, formatWholeRate, ordinal,
} from "../../jobs/static/jobs/format.js";

test("ordinal names places in line in English, teens included", () => {
  const cases = { 1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th", 13: "13th", 21: "21st", 22: "22nd", 101: "101st", 111: "111th", 112: "112th" };
  for (const [n, text] of Object.entries(cases)) assert.equal(ordinal(Number(n)), text);
});

test("durations read in seconds, then minutes, then hours", () => {
  assert.equal(formatDuration(0), "0 s");
  assert.equal(formatDuration(-3), "0 s");
  assert.equal(formatDuration(59.4), "59 s");
  assert.equal(formatDuration(185), "3 min 5 s");
  assert.equal(formatDuration(7800), "2 h 10 min");
  assert.equal(formatEta(5.5), "about 6 s left");
});

test("rates keep one decimal below 100 per second", () => {
  assert.equal(formatRate(12.46), "12.5/s");
  assert.equal(formatRate(3), "3/s");
  assert.equal(formatRate(1234.5), "1,235/s");
  assert.equal(formatWholeRate(12.46), "12/s");
});

test("percents read as on the card and in the staff table", () => {
  assert.equal(formatPercent(34), "34%");
  assert.equal(formatPercent(34.56), "34.6%");
  assert.equal(formatPercentTenths(34), "34.0 %");
  assert.equal(formatPercentTenths(100), "100.0 %");
});

test("values group numbers and show none as a dash", () => {
  assert.equal(formatValue(2000000), "2,000,000");
  assert.equal(formatValue(0.125), "0.13");
  assert.equal(formatValue(null), "—");
  assert.equal(formatValue({ a: 1 }), '{"a":1}');
  assert.equal(formatValue("<b>x</b>"), "<b>x</b>");
  assert.equal(formatCount(1234), "1,234");
});
