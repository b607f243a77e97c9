/**
 * Feeds a job's log panel: every batch a transport brings goes through `LogLines`, the
 * new lines to the panel, and each hole it opens is read over HTTP
 * (`GET /api/jobs/<id>/log/?after=N`), one at a time, oldest first. The same reads catch
 * a finished job's page up (no socket) and carry the log when the page polls.
 */

import { LogLines } from "./log-lines.js";

/** @typedef {import("./log-lines.js").LogBatch} LogBatch */
/** @typedef {import("./log-lines.js").LogLine} LogLine */
/** @typedef {import("./log-lines.js").Hole} Hole */
/** @typedef {LogBatch & {next: number|null}} LogPage */

const LOG_PAGE_MAX = 1000; // the API's largest page (jobs/logs.py LOG_PAGE_MAX)
const CATCH_UP_MAX_PAGES = 20; // one catch-up reads at most this many pages: twice a default log of 10,000 lines

/**
 * @typedef {object} LogSink what the feed draws into (log-panel.js)
 * @property {(lines: LogLine[]) => void} add lines to show, in order of `n` (old ones go in their place)
 * @property {(total: number, dropped: number) => void} counts the log's counts, as the server says them
 */

/**
 * @param {{jobId: string, panel: LogSink, read: (url: string) => Promise<LogPage>, lines?: LogLines}} options
 *   read: GETs a JSON body, throwing on a network error or a non-2xx answer
 */
export function createLogFeed({ jobId, panel, read, lines = new LogLines() }) {
  /** @type {Hole[]} */
  const queue = [];
  let reading = false;
  let stale = false; // a read failed: the holes left open wait for the next batch
  /** @type {Promise<void>} the holes being read, for whoever waits on them */
  let drained = Promise.resolve();

  const base = `/api/jobs/${encodeURIComponent(jobId)}/log/`;
  /** @param {number} after @param {number} limit */
  const pageUrl = (after, limit) => `${base}?after=${after}&limit=${limit}`;

  /** @param {LogBatch} batch @returns {Hole[]} the holes it opened */
  const take = (batch) => {
    const taken = lines.take(batch);
    if (taken.lines.length) panel.add(taken.lines);
    panel.counts(lines.total, lines.dropped);
    return taken.holes;
  };

  /** Reads one hole page by page; what it still lacks after its last page is not kept. @param {Hole} hole */
  const readHole = async (hole) => {
    let after = hole.from - 1;
    const pages = Math.ceil((hole.to - hole.from + 1) / LOG_PAGE_MAX) + 1; // a bound: no loop on lines not kept
    for (let page = 0; page < pages; page += 1) {
      after = Math.max(after, lines.dropped);
      if (after >= hole.to) break;
      const answer = await read(pageUrl(after, Math.min(LOG_PAGE_MAX, hole.to - after)));
      take(answer);
      if (answer.next === null || answer.next <= after) break;
      after = answer.next;
    }
    lines.close(hole);
  };

  const pump = async () => {
    reading = true;
    try {
      while (queue.length) {
        const hole = /** @type {Hole} */ (queue[0]);
        await readHole(hole);
        queue.shift();
      }
    } catch {
      // The server is away: the holes stay open, and the next batch asks for them again.
      queue.length = 0;
      stale = true;
    } finally {
      reading = false;
    }
  };

  /** @param {Hole[]} holes */
  const enqueue = (holes) => {
    queue.push(...holes);
    if (queue.length && !reading) drained = pump();
  };

  return {
    /** The highest line shown: what a (re)connect asks for the lines after. */
    get after() { return lines.last; },

    /** A `log` frame or event. @param {LogBatch} batch */
    receive(batch) {
      const opened = take(batch);
      if (!stale) enqueue(opened);
      else {
        stale = false;
        enqueue([...lines.holes]);
      }
    },

    /**
     * Reads the lines after the last shown, page by page, to the log's current end: a
     * finished job's page (no socket) and every poll. Throws when the server does not answer.
     */
    async catchUp() {
      for (let page = 0; page < CATCH_UP_MAX_PAGES; page += 1) {
        const after = lines.last;
        const answer = await read(pageUrl(after, LOG_PAGE_MAX));
        enqueue(take(answer));
        if (answer.next === null || lines.last <= after) break;
      }
      await drained;
    },

    /** Resolves once the holes being read are read (tests, and a catch-up). */
    settled() { return drained; },
  };
}
