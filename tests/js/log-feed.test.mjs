import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { createLogFeed } from "../../jobs/static/jobs/log-feed.js";
import { makeBatch, lineRange } from "./log-factory.mjs";

/**
 * A feed on a fake panel and a fake server: `kept` are the lines the server keeps,
 * `total` and `dropped` its counts; `read` answers GET /api/jobs/<id>/log/ as the API does.
 */
function makeFeed({ kept = [], total = kept.at(-1)?.n ?? 0, dropped = 0, fail = () => false } = {}) {
  const server = { kept, total, dropped };
  const shown = [];
  const counts = [];
  const urls = [];
  const read = async (url) => {
    urls.push(url);
    if (fail(url)) throw new TypeError("network down");
    const query = new URL(url, "http://x").searchParams;
    const after = Number(query.get("after"));
    const limit = Number(query.get("limit"));
    const lines = server.kept.filter((line) => line.n > after).slice(0, limit);
    const more = lines.length && server.kept.some((line) => line.n > lines.at(-1).n);
    return { lines, total: server.total, dropped: server.dropped, next: more ? lines.at(-1).n : null };
  };
  const feed = createLogFeed({
    jobId: "j 1",
    read,
    panel: { add: (lines) => shown.push(...lines.map((line) => line.n)), counts: (t, d) => counts.push([t, d]) },
  });
  return { feed, server, shown, counts, urls };
}

describe("the feed", () => {
  test("frames in order go straight to the panel, with the counts", () => {
    const { feed, shown, counts, urls } = makeFeed();
    feed.receive(makeBatch(1, 3));
    feed.receive(makeBatch(4, 4));
    assert.deepEqual(shown, [1, 2, 3, 4]);
    assert.deepEqual(counts.at(-1), [4, 0]);
    assert.equal(feed.after, 4);
    assert.deepEqual(urls, []);
  });

  test("a gap is read over HTTP after the last line shown, and goes in in order", async () => {
    const { feed, shown, urls } = makeFeed({ kept: lineRange(1, 50) });
    feed.receive(makeBatch(1, 10));
    feed.receive(makeBatch(41, 50));
    await feed.settled();
    assert.deepEqual(urls, ["/api/jobs/j%201/log/?after=10&limit=30"]);
    assert.deepEqual(shown.slice(10, 20), [41, 42, 43, 44, 45, 46, 47, 48, 49, 50]);
    assert.deepEqual(shown.slice(20).sort((a, b) => a - b), Array.from({ length: 30 }, (_, i) => 11 + i));
    assert.equal(new Set(shown).size, 50, "each line once");
  });

  test("a long hole is read page by page, 1000 at a time", async () => {
    const { feed, shown, urls } = makeFeed({ kept: lineRange(1, 10000) });
    feed.receive(makeBatch(9501, 10000)); // the backfill: the log's last 500
    await feed.settled();
    assert.equal(urls.length, 10);
    assert.equal(urls[0], "/api/jobs/j%201/log/?after=0&limit=1000");
    assert.equal(urls[9], "/api/jobs/j%201/log/?after=9000&limit=500");
    assert.equal(shown.length, 10000);
    assert.equal(new Set(shown).size, 10000);
  });

  test("lines the server no longer keeps are not asked for again, however often frames come", async () => {
    // 15,000 written, the first 5,000 gone; the backfill's hole starts above them.
    const { feed, shown, urls, counts } = makeFeed({ kept: lineRange(5001, 15000), total: 15000, dropped: 5000 });
    feed.receive(makeBatch(14501, 15000, { total: 15000, dropped: 5000 }));
    await feed.settled();
    assert.equal(urls[0], "/api/jobs/j%201/log/?after=5000&limit=1000");
    assert.equal(shown.length, 10000);
    assert.deepEqual(counts.at(-1), [15000, 5000]);
    const asked = urls.length;
    feed.receive(makeBatch(15001, 15001, { total: 15001, dropped: 5001 }));
    await feed.settled();
    assert.equal(urls.length, asked, "no hole below the kept lines");
  });

  test("a hole the server dropped while it was read is given up, without a loop", async () => {
    const { feed, server, urls } = makeFeed({ kept: lineRange(1, 3000) });
    feed.receive(makeBatch(1, 1));
    // Meanwhile the server dropped everything up to 2,500: its pages start there.
    server.kept = lineRange(2501, 3000);
    server.dropped = 2500;
    feed.receive(makeBatch(3000, 3000, { total: 3000, dropped: 0 }));
    await feed.settled();
    assert.ok(urls.length <= 4, `bounded reads: ${urls.length}`);
    feed.receive(makeBatch(3001, 3001, { total: 3001, dropped: 2500 }));
    await feed.settled();
    assert.ok(urls.length <= 4, "and none more for the gone lines");
  });

  test("a hole the server dropped whole before its turn is not asked for", async () => {
    const { feed, server, urls } = makeFeed({ kept: lineRange(1, 3000) });
    feed.receive(makeBatch(1, 1));
    feed.receive(makeBatch(1000, 1000)); // hole 2..999
    feed.receive(makeBatch(2000, 2000)); // hole 1001..1999, read after the first
    server.kept = lineRange(2500, 3000);
    server.dropped = 2499; // meanwhile both holes went
    feed.receive({ lines: [], total: 3000, dropped: 2499 });
    await feed.settled();
    assert.ok(urls.every((url) => !/limit=(0|-)/.test(url)), urls.join(" "));
    assert.ok(urls.length <= 1, urls.join(" "));
  });

  test("a hole whose read failed is asked for again with the next frame", async () => {
    let down = true;
    const { feed, shown, urls } = makeFeed({ kept: lineRange(1, 30), fail: () => down });
    feed.receive(makeBatch(1, 10));
    feed.receive(makeBatch(21, 25));
    await feed.settled();
    assert.equal(urls.length, 1);
    down = false;
    feed.receive(makeBatch(26, 30));
    await feed.settled();
    assert.equal(urls.length, 2);
    assert.deepEqual([...shown].sort((a, b) => a - b), Array.from({ length: 30 }, (_, i) => i + 1));
  });

  test("a catch-up reads everything after the last line shown, to the end", async () => {
    const { feed, shown, urls } = makeFeed({ kept: lineRange(1, 2500) });
    feed.receive(makeBatch(1, 100));
    await feed.catchUp();
    assert.deepEqual(urls, [
      "/api/jobs/j%201/log/?after=100&limit=1000",
      "/api/jobs/j%201/log/?after=1100&limit=1000",
      "/api/jobs/j%201/log/?after=2100&limit=1000",
    ]);
    assert.equal(shown.length, 2500);
    await feed.catchUp();
    assert.equal(urls.length, 4, "nothing new: one read");
  });

  test("a catch-up that fails throws, for the caller to say so", async () => {
    const { feed } = makeFeed({ fail: () => true });
    await assert.rejects(feed.catchUp(), TypeError);
  });
});
