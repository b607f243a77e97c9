import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { LOG_LEVELS, LogLines, lineClock, lineFromHash, lineMatches } from "../../jobs/static/jobs/log-lines.js";
import { makeBatch, makeLine } from "./log-factory.mjs";

const ns = (lines) => lines.map((line) => line.n);

describe("taking batches", () => {
  test("lines in order are shown, and the last shown is the resume point", () => {
    const log = new LogLines();
    const first = log.take(makeBatch(1, 3));
    assert.deepEqual(ns(first.lines), [1, 2, 3]);
    assert.deepEqual(first.holes, []);
    assert.deepEqual(ns(log.take(makeBatch(4, 5)).lines), [4, 5]);
    assert.equal(log.last, 5);
    assert.equal(log.total, 5);
  });

  test("lines at or below the last shown are dropped (a resume that overlaps, a late event)", () => {
    const log = new LogLines();
    log.take(makeBatch(1, 5));
    const again = log.take(makeBatch(3, 7));
    assert.deepEqual(ns(again.lines), [6, 7]);
    assert.deepEqual(ns(log.take(makeBatch(1, 7)).lines), []);
  });

  test("an empty backfill frame is fine, and its counts are kept", () => {
    const log = new LogLines();
    assert.deepEqual(log.take({ lines: [], total: 0, dropped: 0 }), { lines: [], holes: [] });
    log.take({ lines: [], total: 12, dropped: 2 });
    assert.equal(log.total, 12);
    assert.equal(log.dropped, 2);
  });

  test("a frame whose first line is above the next expected opens a hole", () => {
    const log = new LogLines();
    log.take(makeBatch(1, 10));
    const cut = log.take(makeBatch(41, 50)); // a live batch cut to 64 KiB
    assert.deepEqual(ns(cut.lines), ns(makeBatch(41, 50).lines));
    assert.deepEqual(cut.holes, [{ from: 11, to: 40 }]);
    assert.deepEqual(log.holes, [{ from: 11, to: 40 }]);
    assert.equal(log.last, 50, "the resume point is the highest shown, holes or not");
  });

  test("a backfill of the log's last 500 on a fresh page opens a hole from line 1", () => {
    const log = new LogLines();
    const backfill = log.take(makeBatch(9501, 10000));
    assert.deepEqual(backfill.holes, [{ from: 1, to: 9500 }]);
  });

  test("lines the server no longer keeps are never a hole", () => {
    const log = new LogLines();
    const backfill = log.take(makeBatch(14501, 15000, { total: 15000, dropped: 5000 }));
    assert.deepEqual(backfill.holes, [{ from: 5001, to: 14500 }]);
    const none = new LogLines();
    assert.deepEqual(none.take(makeBatch(5001, 5100, { dropped: 5000 })).holes, []);
  });

  test("lines that fill a hole are shown, each once, and the hole shrinks", () => {
    const log = new LogLines();
    log.take(makeBatch(1, 2));
    log.take(makeBatch(10, 12));
    assert.deepEqual(ns(log.take(makeBatch(3, 5)).lines), [3, 4, 5]);
    assert.deepEqual(log.holes, [{ from: 6, to: 9 }]);
    assert.deepEqual(ns(log.take(makeBatch(3, 7)).lines), [6, 7], "3..5 were shown already");
    assert.deepEqual(ns(log.take({ lines: [makeLine(9)], total: 12, dropped: 0 }).lines), [9]);
    assert.deepEqual(log.holes, [{ from: 8, to: 8 }]);
    assert.equal(log.last, 12);
  });

  test("a hole the server dropped meanwhile shrinks, or goes", () => {
    const log = new LogLines();
    log.take(makeBatch(1, 2));
    log.take(makeBatch(100, 101));
    log.take({ lines: [], total: 101, dropped: 50 });
    assert.deepEqual(log.holes, [{ from: 51, to: 99 }]);
    log.take({ lines: [], total: 101, dropped: 99 });
    assert.deepEqual(log.holes, []);
  });

  test("close gives up on what a hole still lacks", () => {
    const log = new LogLines();
    log.take(makeBatch(1, 1));
    log.take(makeBatch(10, 10));
    log.take(makeBatch(20, 20));
    log.close({ from: 2, to: 9 });
    assert.deepEqual(log.holes, [{ from: 11, to: 19 }]);
    assert.deepEqual(ns(log.take(makeBatch(5, 5)).lines), [], "a closed hole's lines are old news");
  });

  test("counts never go back (an older page answering late)", () => {
    const log = new LogLines();
    log.take({ lines: [], total: 30, dropped: 10 });
    log.take({ lines: [], total: 20, dropped: 5 });
    assert.equal(log.total, 30);
    assert.equal(log.dropped, 10);
  });
});

describe("filter, clock and hash", () => {
  const warning = makeLine(3, { level: "warning", text: "Retrying Page 3" });

  test("a line shows when its level is on and its text holds the filter, any case", () => {
    const all = new Set(LOG_LEVELS);
    assert.equal(lineMatches(warning, { text: "", levels: all }), true);
    assert.equal(lineMatches(warning, { text: "page 3", levels: all }), true);
    assert.equal(lineMatches(warning, { text: "page 4", levels: all }), false);
    assert.equal(lineMatches(warning, { text: "", levels: new Set(["error"]) }), false);
  });

  test("the clock is the time of day as written", () => {
    assert.equal(lineClock("2026-11-25T12:00:03.123456Z"), "12:00:03");
    assert.equal(lineClock(""), "");
  });

  test("#L17 names line 17; anything else names none", () => {
    assert.equal(lineFromHash("#L17"), 17);
    for (const hash of ["", "#L", "#L1x", "#job-1", "#l17"]) assert.equal(lineFromHash(hash), null);
  });
});
