/**
 * A job's log as the page knows it (docs: "Job logs"), without a DOM or a network: which
 * lines are new, which are old news, and which older ones are missing and must be read
 * over HTTP. Lines come from the socket's backfill and live frames, SSE events, polls
 * and the HTTP reads of the missing ones, in any mix; each is shown once.
 *
 * @typedef {"debug"|"info"|"warning"|"error"} LogLevel
 * @typedef {{n: number, t: string, level: LogLevel, text: string}} LogLine
 * @typedef {{lines: LogLine[], total: number, dropped: number}} LogBatch a frame, an event or a page
 * @typedef {{from: number, to: number}} Hole missing lines from..to (both included), below the last shown
 */

/** The levels, least severe first (jobs/logs.py LOG_LEVELS). */
export const LOG_LEVELS = /** @type {const} */ (["debug", "info", "warning", "error"]);

export class LogLines {
  /** The highest `n` shown: a (re)connect asks for the lines after it. */
  last = 0;
  /** Lines written so far, as the server last said. */
  total = 0;
  /** Lines the server no longer keeps (the oldest): never asked for again. */
  dropped = 0;
  /** @type {Hole[]} missing lines below `last`, oldest first */
  holes = [];

  /**
   * Takes a batch: the lines not shown yet, and the holes it opens (a frame whose first
   * line is above the next one expected: a live batch cut to 64 KiB, a backfill that
   * keeps only the log's end). Lines at or below `last` are dropped unless they fill a hole.
   * @param {LogBatch} batch
   * @returns {{lines: LogLine[], holes: Hole[]}} lines: to show, in order of `n`; holes: to read over HTTP
   */
  take({ lines, total, dropped }) {
    this.total = Math.max(this.total, total ?? 0);
    this.#drop(Math.max(this.dropped, dropped ?? 0));
    /** @type {LogLine[]} */
    const fresh = [];
    /** @type {Hole[]} */
    const opened = [];
    for (const line of [...lines].sort((a, b) => a.n - b.n)) {
      if (line.n <= this.dropped) continue;
      if (line.n <= this.last) {
        if (this.#fill(line.n)) fresh.push(line);
        continue;
      }
      const expected = Math.max(this.last, this.dropped) + 1;
      if (line.n > expected) opened.push({ from: expected, to: line.n - 1 });
      fresh.push(line);
      this.last = line.n;
    }
    this.holes.push(...opened);
    this.total = Math.max(this.total, this.last);
    return { lines: fresh, holes: opened };
  }

  /**
   * Gives up on what is left of a hole once it was read to its end: the server no
   * longer keeps those lines, and asking again would loop. @param {Hole} hole
   */
  close(hole) {
    this.holes = this.holes.filter((h) => h.to < hole.from || h.from > hole.to);
  }

  /** @param {number} n @returns {boolean} whether `n` was missing (and now is not) */
  #fill(n) {
    const index = this.holes.findIndex((h) => h.from <= n && n <= h.to);
    if (index < 0) return false;
    const { from, to } = this.holes[index];
    const rest = [{ from, to: n - 1 }, { from: n + 1, to }].filter((h) => h.from <= h.to);
    this.holes.splice(index, 1, ...rest);
    return true;
  }

  /** Lines up to `dropped` are gone for good: no hole waits for them. @param {number} dropped */
  #drop(dropped) {
    this.dropped = dropped;
    this.holes = this.holes
      .map((h) => ({ from: Math.max(h.from, dropped + 1), to: h.to }))
      .filter((h) => h.from <= h.to);
  }
}

/**
 * @typedef {{text: string, levels: Set<LogLevel>}} LogFilter
 *   text: a case-insensitive substring ("" for any); levels: the levels shown
 */

/** @param {LogLine} line @param {LogFilter} filter @returns {boolean} whether the filter shows it */
export function lineMatches(line, filter) {
  if (!filter.levels.has(line.level)) return false;
  return !filter.text || line.text.toLowerCase().includes(filter.text.toLowerCase());
}

/** `12:00:03` of a line's `t` (UTC, as written), for the panel's time column. @param {string} t */
export function lineClock(t) {
  const match = /T(\d\d:\d\d:\d\d)/.exec(t);
  return match ? match[1] : "";
}

/** The line a `#L17` fragment names, or null. @param {string} hash */
export function lineFromHash(hash) {
  const match = /^#L(\d+)$/.exec(hash);
  return match ? Number(match[1]) : null;
}
