/**
 * Healing: an unfinished job that has heard nothing for STREAM_RESYNC_SECONDS is
 * re-read over HTTP, so a frame lost on the way (a Redis restart, a dropped
 * connection) never leaves a bar waiting for good. The same re-read tells the
 * WebSocket transport whether the server answers at all.
 */

import { getJson } from "./http.js";
import { isTerminal } from "./job.js";

/** @typedef {import("./job.js").Job} Job */
/** @typedef {import("./seq-filter.js").SeqFilter} SeqFilter */

const DEFAULT_RESYNC_SECONDS = 15; // core/settings.py's default, should the page not say
const RESYNC_LIST_FROM = 2; // silent jobs on the list page from which one list request beats one each
const RESYNC_PAGE_SIZE = 100; // the API's largest page
const RESYNC_FETCH_TIMEOUT_MS = 10000; // a re-read the server does not answer must not hold up a reconnect

/**
 * How long an unfinished job may go without a frame before the page re-reads it: the
 * server's STREAM_RESYNC_SECONDS, on `<body data-stream-resync-seconds>` (core/settings.py
 * gives the reason for its default).
 * @param {HTMLElement|null} body @returns {number} ms
 */
export function resyncAfterMs(body) {
  return 1000 * (Number(body?.dataset.streamResyncSeconds) || DEFAULT_RESYNC_SECONDS);
}

/**
 * @param {{shown: SeqFilter, apply: (job: Job) => *, jobId: string|null, afterMs: number,
 *          read?: (url: string) => Promise<*>, now?: () => number}} options
 *   shown: the jobs on the page; apply: shows a job read; jobId: the detail page's job, else null
 */
export function createResync({ shown, apply, jobId, afterMs, read = (url) => getJson(url, { timeoutMs: RESYNC_FETCH_TIMEOUT_MS }), now = Date.now }) {
  /** @type {Map<string, number>} when each job last heard anything: a frame, a snapshot, a re-read */
  const heard = new Map();
  let resyncing = false;

  /**
   * Re-reads jobs and shows each whose seq is above the one shown: one GET per job, or
   * one list request when several on the list page need it (others, one each).
   * @param {string[]} ids @returns {Promise<boolean>} true; throws when the server does not answer
   */
  const rereadJobs = async (ids) => {
    let pending = ids;
    if (!jobId && ids.length >= RESYNC_LIST_FROM) {
      /** @type {Job[]} */
      const results = (await read(`/api/jobs/?page_size=${RESYNC_PAGE_SIZE}`)).results;
      // Only jobs on the page: older ones must not pop up on top of it.
      results.filter((job) => shown.has(job.id)).reverse().forEach(apply);
      const listed = new Set(results.map((job) => job.id));
      pending = ids.filter((id) => !listed.has(id));
    }
    await Promise.all(pending.map(async (id) => {
      try {
        apply(await read(`/api/jobs/${encodeURIComponent(id)}/`));
      } catch (error) {
        if (/** @type {{status?: number}} */ (error).status !== 404) throw error;
        heard.set(id, Infinity); // gone (purged): nothing more to hear
      }
    }));
    return true;
  };

  return {
    /** How often silence is looked for, in ms. */
    checkEveryMs: Math.min(1000, afterMs / 2),

    /** Notes that a job was heard of (shown or not: an old frame still proves the stream works). @param {string} id */
    heard(id) {
      heard.set(id, now());
    },

    /** Re-reads every unfinished job shown (or, on a detail page, its job). @returns {Promise<boolean>} whether the server answered */
    async rereadShown() {
      const ids = jobId ? [jobId] : shown.all().filter((job) => !isTerminal(job.state)).map((job) => job.id);
      try {
        if (ids.length) return await rereadJobs(ids);
        await read("/api/jobs/?page_size=1");
        return true;
      } catch {
        return false;
      }
    },

    /** Re-reads the unfinished jobs that have heard nothing for `afterMs`. */
    async rereadSilent() {
      if (resyncing) return;
      const at = now();
      const silent = shown.all()
        .filter((job) => !isTerminal(job.state) && at - (heard.get(job.id) ?? at) >= afterMs)
        .map((job) => job.id);
      if (!silent.length) return;
      for (const id of silent) heard.set(id, at); // at most one re-read per job per interval, answered or not
      resyncing = true;
      try {
        await rereadJobs(silent);
      } catch {
        // The server is away: the socket's reconnect, or the next interval, catches up.
      } finally {
        resyncing = false;
      }
    },
  };
}
