import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { BACKOFF_BASE_MS } from "../../jobs/static/jobs/backoff.js";
import { chooseTransport, createJobStream } from "../../jobs/static/jobs/transports.js";
import { fakeRuntime, settle } from "./fake-runtime.mjs";
import { makeJob } from "./job-factory.mjs";

/**
 * A stream on fakes, as page.js wires it: `unfinished` are the jobs the page shows,
 * `serverAnswers` what the page's HTTP re-read finds.
 */
function makeStream({ jobId = null, search = "", serverAnswers = true, unfinished = [], answer, log } = {}) {
  const fakes = fakeRuntime({ search, answer });
  const seen = { jobs: [], snapshots: [], connection: [], rereads: 0 };
  const stream = createJobStream({
    jobId,
    runtime: fakes.runtime,
    callbacks: {
      onJob: (job) => seen.jobs.push(job),
      onSnapshot: (jobs) => seen.snapshots.push(jobs),
      onConnection: (text) => seen.connection.push(text),
      unfinished: () => unfinished,
      reread: async () => { seen.rereads += 1; return typeof serverAnswers === "function" ? serverAnswers() : serverAnswers; },
      log,
    },
  });
  return { stream, seen, ...fakes, lastConnection: () => seen.connection.at(-1) };
}

const RUNNING = makeJob({ id: "run-1", state: "running", seq: 4 });

describe("choosing the transport", () => {
  test("WebSocket where the browser has it", () => {
    assert.equal(chooseTransport(fakeRuntime().runtime), "ws");
  });

  test("?transport= forces one", () => {
    for (const name of ["ws", "sse", "poll"]) assert.equal(chooseTransport(fakeRuntime({ search: `?transport=${name}` }).runtime), name);
    assert.equal(chooseTransport(fakeRuntime({ search: "?transport=carrier-pigeon" }).runtime), "ws");
  });

  test("without WebSocket SSE, without either polling", () => {
    const { runtime } = fakeRuntime();
    assert.equal(chooseTransport({ ...runtime, WebSocket: undefined }), "sse");
    assert.equal(chooseTransport({ ...runtime, WebSocket: undefined, EventSource: undefined }), "poll");
  });
});

describe("the WebSocket", () => {
  test("the owner socket on / and the job socket on a detail page", () => {
    const owner = makeStream();
    owner.stream.start();
    assert.equal(owner.sockets[0].url, "ws://jobs.example/ws/jobs/");
    const detail = makeStream({ jobId: "a b" });
    detail.stream.start();
    assert.equal(detail.sockets[0].url, "ws://jobs.example/ws/jobs/a%20b/");
  });

  test("frames go to the callbacks: snapshot, job, and an error frame only warns", () => {
    const { stream, sockets, seen, warnings, lastConnection } = makeStream();
    stream.start();
    sockets[0].serverOpen();
    assert.equal(lastConnection(), "live");
    sockets[0].serverSend({ type: "snapshot", jobs: [RUNNING] });
    sockets[0].serverSend({ type: "job", job: { ...RUNNING, seq: 5 } });
    sockets[0].serverSend({ type: "error", error: "unknown frame" });
    sockets[0].serverSend("not json");
    assert.deepEqual(seen.snapshots, [[RUNNING]]);
    assert.deepEqual(seen.jobs.map((job) => job.seq), [5]);
    assert.deepEqual(warnings, [["jobstream:", "unknown frame"]]);
  });

  test("a socket that closes after it opened reconnects with backoff, without a re-read", async () => {
    const { stream, sockets, seen, clock, lastConnection } = makeStream();
    stream.start();
    sockets[0].serverOpen();
    sockets[0].serverClose(1011);
    await settle();
    assert.equal(lastConnection(), "reconnecting…");
    assert.equal(seen.rereads, 0, "the new socket's snapshot catches up");
    assert.deepEqual(clock.pendingDelays(), [BACKOFF_BASE_MS * 0.75]);
    clock.runNext();
    assert.equal(sockets.length, 2);
  });

  test("close 4404 is final", async () => {
    const { stream, sockets, clock, lastConnection } = makeStream({ jobId: "gone" });
    stream.start();
    sockets[0].serverOpen();
    sockets[0].serverClose(4404);
    await settle();
    assert.equal(lastConnection(), "");
    assert.deepEqual(clock.pendingDelays(), []);
    assert.equal(stream.transport, "ws");
  });

  test("the 1000 after a terminal frame is final on a job socket", async () => {
    const { stream, sockets, clock, lastConnection } = makeStream({ jobId: "run-1" });
    stream.start();
    sockets[0].serverOpen();
    sockets[0].serverSend({ type: "job", job: { ...RUNNING, state: "succeeded", seq: 9 } });
    sockets[0].serverClose(1000);
    await settle();
    assert.equal(lastConnection(), "");
    assert.deepEqual(clock.pendingDelays(), []);
  });

  test("a 1000 before any terminal frame reconnects", async () => {
    const { stream, sockets, clock } = makeStream({ jobId: "run-1" });
    stream.start();
    sockets[0].serverOpen();
    sockets[0].serverSend({ type: "job", job: RUNNING });
    sockets[0].serverClose(1000);
    await settle();
    assert.equal(clock.pendingDelays().length, 1);
  });

  test("a finished detail page opens no socket", () => {
    const { stream, sockets } = makeStream({ jobId: "done" });
    stream.start({ openSocket: false });
    assert.equal(sockets.length, 0);
  });

  test("a cancel goes as a frame on the open socket, else the caller asks the API", () => {
    const owner = makeStream();
    owner.stream.start();
    assert.equal(owner.stream.cancel("x"), false, "not open yet");
    owner.sockets[0].serverOpen();
    assert.equal(owner.stream.cancel("x"), true);
    assert.deepEqual(owner.sockets[0].sent, [{ type: "cancel", id: "x" }]);
    const detail = makeStream({ jobId: "x" });
    detail.stream.start();
    detail.sockets[0].serverOpen();
    detail.stream.cancel("x");
    assert.deepEqual(detail.sockets[0].sent, [{ type: "cancel" }]);
  });
});

describe("falling back: WebSocket, then SSE, then polling", () => {
  test("three sockets that cannot open while the server answers HTTP: SSE for every unfinished job", async () => {
    const other = makeJob({ id: "queued-2", state: "queued", seq: 1 });
    const { stream, sockets, sources, clock, seen, lastConnection } = makeStream({ unfinished: [RUNNING, other] });
    stream.start();
    const delays = [];
    for (let failure = 1; failure <= 2; failure += 1) {
      sockets.at(-1).refuse();
      await settle();
      assert.equal(stream.transport, "ws", `still WebSocket after ${failure} failure(s)`);
      assert.equal(lastConnection(), "reconnecting…");
      delays.push(clock.runNext());
    }
    assert.deepEqual(delays, [BACKOFF_BASE_MS * 0.75, BACKOFF_BASE_MS * 2 * 0.75], "backoff grows between tries");
    sockets.at(-1).refuse();
    await settle();
    assert.equal(stream.transport, "sse");
    assert.equal(lastConnection(), "live (events)");
    assert.equal(seen.rereads, 3, "each failure asked whether the server answers");
    assert.equal(sockets.length, 3, "no fourth socket");
    assert.deepEqual(clock.pendingDelays(), []);
    assert.deepEqual(sources.map((source) => source.url), ["/api/jobs/run-1/events/", "/api/jobs/queued-2/events/"]);
  });

  test("a socket that opens in between starts the count again", async () => {
    const { stream, sockets, clock } = makeStream();
    stream.start();
    for (const step of ["refuse", "refuse", "open", "refuse", "refuse"]) {
      if (step === "open") {
        sockets.at(-1).serverOpen();
        sockets.at(-1).serverClose(1011);
      } else sockets.at(-1).refuse();
      await settle();
      clock.runNext();
    }
    assert.equal(stream.transport, "ws");
    sockets.at(-1).refuse();
    await settle();
    assert.equal(stream.transport, "sse");
  });

  test("sockets that cannot open while the server is away keep to WebSocket, backing off to the cap", async () => {
    const { stream, sockets, clock, seen } = makeStream({ serverAnswers: false });
    stream.start();
    const delays = [];
    for (let failure = 0; failure < 10; failure += 1) {
      sockets.at(-1).refuse();
      await settle();
      delays.push(clock.runNext());
    }
    assert.equal(stream.transport, "ws");
    assert.equal(sockets.length, 11);
    assert.equal(seen.rereads, 10);
    assert.deepEqual(delays.slice(0, 6), [375, 750, 1500, 3000, 6000, 11250]);
    assert.ok(delays.slice(5).every((ms) => ms === 11250), "capped at 15 s (× 0.75 with this jitter)");
  });

  test("a browser that refuses to build a WebSocket goes to SSE at once", () => {
    const fakes = makeStream({ unfinished: [RUNNING] });
    fakes.runtime.WebSocket = class { constructor() { throw new SyntaxError("blocked"); } };
    fakes.stream.start();
    assert.equal(fakes.stream.transport, "sse");
    assert.equal(fakes.sources.length, 1);
  });

  test("SSE erroring three times without an event: that job is polled", async () => {
    const { stream, sources, fetched } = makeStream({
      search: "?transport=sse",
      answer: () => ({ status: 200, body: { ...RUNNING, seq: 6 } }),
    });
    stream.start();
    stream.jobShown(RUNNING);
    const source = sources[0];
    source.serverError();
    source.serverError();
    assert.equal(source.closed, false);
    assert.deepEqual(fetched, []);
    source.serverError();
    assert.equal(source.closed, true);
    await settle();
    assert.deepEqual(fetched, ["/api/jobs/run-1/"]);
    assert.equal(stream.transport, "sse", "only that job moves to polling");
  });

  test("an SSE event starts the error count again", () => {
    const { stream, sources, seen } = makeStream({ search: "?transport=sse" });
    stream.start();
    stream.jobShown(RUNNING);
    const source = sources[0];
    source.serverError();
    source.serverError();
    source.serverEvent({ ...RUNNING, seq: 5 });
    source.serverError();
    source.serverError();
    assert.equal(source.closed, false);
    assert.deepEqual(seen.jobs.map((job) => job.seq), [5]);
  });

  test("an SSE stream the browser gave up on is polled at once", () => {
    const { stream, sources, fetched } = makeStream({ search: "?transport=sse", answer: () => ({ status: 200, body: RUNNING }) });
    stream.start();
    stream.jobShown(RUNNING);
    sources[0].serverError({ final: true });
    assert.equal(sources[0].closed, true);
    assert.deepEqual(fetched, ["/api/jobs/run-1/"]);
  });

  test("a job that ends stops its SSE stream", () => {
    const { stream, sources } = makeStream({ search: "?transport=sse" });
    stream.start();
    stream.jobShown(RUNNING);
    stream.jobShown(RUNNING); // shown again: still one stream
    assert.equal(sources.length, 1);
    stream.jobShown({ ...RUNNING, state: "cancelled", seq: 8 });
    assert.equal(sources[0].closed, true);
    stream.jobShown(makeJob({ id: "done", state: "failed" }));
    assert.equal(sources.length, 1, "an ended job is not followed");
  });
});

describe("polling", () => {
  test("polls every 2 s until the job ends", async () => {
    const answers = [{ ...RUNNING, seq: 5 }, { ...RUNNING, seq: 6, state: "succeeded" }];
    let shown = null;
    const fakes = makeStream({ search: "?transport=poll", answer: () => ({ status: 200, body: answers.shift() }) });
    const { stream, clock, fetched, seen, lastConnection } = fakes;
    stream.start();
    assert.equal(lastConnection(), "polling");
    stream.jobShown(RUNNING);
    await settle();
    assert.deepEqual(seen.jobs.map((job) => job.seq), [5]);
    assert.deepEqual(clock.pendingDelays(), [2000]);
    clock.runNext();
    await settle();
    shown = seen.jobs.at(-1);
    stream.jobShown(shown); // the page shows the terminal state: the poll stops
    assert.equal(shown.state, "succeeded");
    assert.deepEqual(clock.pendingDelays(), []);
    assert.equal(fetched.length, 2);
  });

  test("a job not found stops its poll", async () => {
    const { stream, clock } = makeStream({ search: "?transport=poll", answer: () => ({ status: 404, body: {} }) });
    stream.start();
    stream.jobShown(RUNNING);
    await settle();
    assert.deepEqual(clock.pendingDelays(), []);
  });

  test("a failing poll waits at least the interval, longer with backoff", async () => {
    let calls = 0;
    const { stream, clock } = makeStream({
      search: "?transport=poll",
      answer: () => { calls += 1; return { status: 503, body: {} }; },
    });
    stream.start();
    stream.jobShown(RUNNING);
    const delays = [];
    for (let i = 0; i < 5; i += 1) {
      await settle();
      delays.push(clock.runNext());
    }
    assert.deepEqual(delays, [2000, 2000, 2000, 3000, 6000]);
    assert.equal(calls, 6);
  });

  test("stop() ends every socket, stream, poll and timer", async () => {
    const { stream, sockets, clock } = makeStream();
    stream.start();
    sockets[0].serverOpen();
    stream.stop();
    await settle();
    assert.equal(sockets[0].readyState, 3);
    assert.deepEqual(clock.pendingDelays(), []);
    const poll = makeStream({ search: "?transport=poll", answer: () => ({ status: 200, body: RUNNING }) });
    poll.stream.jobShown(RUNNING);
    await settle();
    poll.stream.stop();
    assert.deepEqual(poll.clock.pendingDelays(), []);
  });
});

/** The detail page's log callbacks: `after` is the highest line shown, as the feed keeps it. */
function fakeLog({ poll = async () => {} } = {}) {
  const log = { last: 0, batches: [], polls: 0 };
  log.callbacks = {
    after: () => log.last,
    onLog: (batch) => {
      log.batches.push(batch);
      log.last = Math.max(log.last, ...batch.lines.map((line) => line.n));
    },
    poll: async () => { log.polls += 1; await poll(); },
  };
  return log;
}

const lines = (from, to) => ({ lines: Array.from({ length: to - from + 1 }, (_, i) => ({ n: from + i, t: "", level: "info", text: "" })), total: to, dropped: 0 });

describe("the job's log", () => {
  test("the socket asks for the lines after the last shown, at every (re)connect", async () => {
    const log = fakeLog();
    const { stream, sockets, clock } = makeStream({ jobId: "run-1", log: log.callbacks });
    stream.start();
    assert.equal(sockets[0].url, "ws://jobs.example/ws/jobs/run-1/?log_after=0");
    sockets[0].serverOpen();
    sockets[0].serverSend({ type: "job", job: RUNNING });
    sockets[0].serverSend({ type: "log", ...lines(1, 0) }); // the backfill: empty
    sockets[0].serverSend({ type: "log", ...lines(1, 42) });
    sockets[0].serverClose(1006); // daphne restarts
    await settle();
    clock.runNext();
    assert.equal(sockets[1].url, "ws://jobs.example/ws/jobs/run-1/?log_after=42");
    sockets[1].refuse();
    await settle();
    log.last = 57; // lines read over HTTP meanwhile
    clock.runNext();
    assert.equal(sockets[2].url, "ws://jobs.example/ws/jobs/run-1/?log_after=57");
  });

  test("log frames go to the log, in the order they came", () => {
    const log = fakeLog();
    const { stream, sockets, seen } = makeStream({ jobId: "run-1", log: log.callbacks });
    stream.start();
    sockets[0].serverOpen();
    sockets[0].serverSend({ type: "job", job: RUNNING });
    sockets[0].serverSend({ type: "log", ...lines(1, 3) });
    sockets[0].serverSend({ type: "log", ...lines(4, 5) });
    sockets[0].serverSend({ type: "job", job: { ...RUNNING, state: "succeeded", seq: 9 } });
    assert.deepEqual(log.batches.map((batch) => batch.lines.map((line) => line.n)), [[1, 2, 3], [4, 5]]);
    assert.equal(log.batches[0].total, 3);
    assert.deepEqual(seen.jobs.map((job) => job.seq), [4, 9]);
  });

  test("the owner socket asks for no log", () => {
    const { stream, sockets } = makeStream({ log: fakeLog().callbacks });
    stream.start();
    assert.equal(sockets[0].url, "ws://jobs.example/ws/jobs/");
  });

  test("SSE after the socket fell back asks for the lines after the last shown; its log events go to the log", async () => {
    const log = fakeLog();
    log.last = 7;
    const { stream, sockets, sources, clock } = makeStream({ jobId: "run-1", unfinished: [RUNNING], log: log.callbacks });
    stream.start();
    for (let failure = 0; failure < 3; failure += 1) {
      sockets.at(-1).refuse();
      await settle();
      if (failure < 2) clock.runNext();
    }
    assert.equal(stream.transport, "sse");
    assert.equal(sources[0].url, "/api/jobs/run-1/events/?log_after=7");
    sources[0].serverLog(lines(8, 9));
    sources[0].serverLog("not json");
    assert.deepEqual(log.batches.map((batch) => batch.total), [9]);
    assert.equal(log.last, 9);
  });

  test("polling reads the log before it shows the job, so an ended job's last lines are in", async () => {
    const order = [];
    const log = fakeLog({ poll: async () => { order.push("log"); } });
    const { stream, seen } = makeStream({
      jobId: "run-1",
      search: "?transport=poll",
      answer: () => ({ status: 200, body: { ...RUNNING, state: "succeeded", seq: 9 } }),
      log: { ...log.callbacks, poll: async () => { await log.callbacks.poll(); order.push(`job seen ${seen.jobs.length}`); } },
    });
    stream.start();
    stream.jobShown(RUNNING);
    await settle();
    assert.equal(log.polls, 1);
    assert.deepEqual(order, ["log", "job seen 0"]);
    assert.equal(seen.jobs.at(-1).state, "succeeded");
  });

  test("a log read that fails holds up no job state", async () => {
    const { stream, seen } = makeStream({
      jobId: "run-1",
      search: "?transport=poll",
      answer: () => ({ status: 200, body: { ...RUNNING, seq: 5 } }),
      log: fakeLog({ poll: async () => { throw new TypeError("network down"); } }).callbacks,
    });
    stream.start();
    stream.jobShown(RUNNING);
    await settle();
    assert.deepEqual(seen.jobs.map((job) => job.seq), [5]);
  });
});
