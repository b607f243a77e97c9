/**
 * How a job page hears about its jobs: a WebSocket, Server-Sent Events or polling,
 * behind one interface (`createJobStream`). WebSocket first; after repeated failures
 * Server-Sent Events, one stream per unfinished job; when a stream errors without an
 * event, polling that job. `?transport=ws|sse|poll` forces one.
 *
 * A socket that cannot open while the server answers HTTP counts towards the fallback
 * to SSE (WebSockets are refused on the way: a proxy, a firewall); one that cannot open
 * while the server is away (a restart) just retries, with backoff and jitter. The HTTP
 * request that tells the two apart is the page's re-read of its jobs, so it also shows
 * whatever changed while the socket was down. A socket that reopens starts from the
 * server's snapshot.
 *
 * A detail page also hears its job's log: every socket and event stream it opens asks
 * for the lines after the last one shown (`?log_after=N`), so a resume brings none twice
 * and none missing; a poll reads them over HTTP.
 */

import { backoffDelay } from "./backoff.js";
import { isTerminal } from "./job.js";
import { keepSocketOpen } from "./reconnecting-socket.js";
import { socketUrl } from "./runtime.js";

/** @typedef {import("./job.js").Job} Job */
/** @typedef {import("./runtime.js").Runtime} Runtime */
/** @typedef {"ws"|"sse"|"poll"} TransportName */

export const CLOSE_NORMAL = 1000; // after the terminal frame on a single-job socket: final
export const CLOSE_NOT_FOUND = 4404; // unknown job, or not yours: final
const WS_FAILURES_BEFORE_SSE = 3; // failed connects in a row, the server answering HTTP, before giving up on WebSocket
const SSE_FAILURES_BEFORE_POLL = 3; // errors without a single event before polling
const POLL_INTERVAL_MS = 2000; // a poll every 2 s: a live enough bar at one cheap GET per job

/** What the connection line says for each way of hearing ("" hides it). */
export const CONNECTION_TEXT = { ws: "live", sse: "live (events)", poll: "polling", reconnecting: "reconnecting…", ended: "" };

/**
 * @typedef {object} StreamCallbacks
 * @property {(job: Job) => void} onJob a job's state, from any transport
 * @property {(jobs: Job[]) => void} onSnapshot the owner socket's snapshot, newest first
 * @property {(text: string) => void} onConnection the connection line's text
 * @property {() => Job[]} unfinished the jobs shown that have not ended: followed one by one after a fallback
 * @property {() => Promise<boolean>} reread re-reads the jobs shown over HTTP; whether the server answered
 * @property {LogCallbacks} [log] the detail page's log
 */

/**
 * @typedef {object} LogCallbacks
 * @property {() => number} after the highest line shown: a (re)connect asks for the lines after it
 * @property {(batch: import("./log-lines.js").LogBatch) => void} onLog a `log` frame or event
 * @property {() => Promise<void>} poll reads the lines after the last shown over HTTP
 */

/**
 * The transport a page starts with: the one `?transport=` asks for, else WebSocket
 * where the browser has it.
 * @param {Runtime} runtime @returns {TransportName}
 */
export function chooseTransport(runtime) {
  const asked = new URLSearchParams(runtime.location.search).get("transport");
  if (asked === "poll" || asked === "sse" || asked === "ws") return asked;
  if (runtime.WebSocket === undefined) return runtime.EventSource === undefined ? "poll" : "sse";
  return "ws";
}

/**
 * @param {{jobId: string|null, callbacks: StreamCallbacks, runtime: Runtime}} options
 *   jobId: the detail page's job (its own socket), or null for the owner socket on `/`
 */
export function createJobStream({ jobId, callbacks, runtime }) {
  let transport = chooseTransport(runtime);
  /** @type {Map<string, () => void>} per-job SSE/poll followers, to stop them */
  const followers = new Map();
  /** @type {ReturnType<typeof keepSocketOpen>|null} */
  let socket = null;

  /** `?log_after=N` (after `sep`) on the detail page's streams, else "". @param {string} sep */
  const logQuery = (sep) => (jobId && callbacks.log ? `${sep}log_after=${callbacks.log.after()}` : "");

  /** Switches to SSE or polling and follows every job not yet finished. @param {"sse"|"poll"} to */
  const fallBack = (to) => {
    transport = to;
    socket = null;
    callbacks.onConnection(CONNECTION_TEXT[to]);
    for (const job of callbacks.unfinished()) follow(job);
  };

  const connectSocket = () => {
    let failures = 0;
    let finished = false;
    const path = jobId ? `/ws/jobs/${encodeURIComponent(jobId)}/` : "/ws/jobs/";
    socket = keepSocketOpen(() => socketUrl(runtime.location, path + logQuery("?")), {
      onOpen: () => { failures = 0; callbacks.onConnection(CONNECTION_TEXT.ws); },
      onFrame: (frame) => {
        if (frame.type === "snapshot") callbacks.onSnapshot(frame.jobs);
        else if (frame.type === "job") {
          callbacks.onJob(frame.job);
          if (jobId && isTerminal(frame.job.state)) finished = true;
        } else if (frame.type === "log") callbacks.log?.onLog(frame);
        else if (frame.type === "error") runtime.warn("jobstream:", frame.error);
      },
      onClose: async (event, opened) => {
        if (event.code === CLOSE_NOT_FOUND || (event.code === CLOSE_NORMAL && finished)) {
          callbacks.onConnection(CONNECTION_TEXT.ended);
          return false;
        }
        callbacks.onConnection(CONNECTION_TEXT.reconnecting);
        if (!opened && (await callbacks.reread()) && ++failures >= WS_FAILURES_BEFORE_SSE) {
          fallBack("sse");
          return false;
        }
        return true;
      },
      onCannotConstruct: () => fallBack("sse"),
    }, runtime);
  };

  /** Follows one unfinished job over SSE, or by polling. @param {Job} job */
  const follow = (job) => {
    if (followers.has(job.id) || isTerminal(job.state)) return;
    if (transport === "sse" && runtime.EventSource !== undefined) followEvents(job.id);
    else poll(job.id);
  };

  /** @param {string} id */
  const followEvents = (id) => {
    const Source = /** @type {typeof EventSource} */ (runtime.EventSource);
    const source = new Source(`/api/jobs/${encodeURIComponent(id)}/events/${id === jobId ? logQuery("?") : ""}`);
    let errors = 0;
    const stop = () => { source.close(); followers.delete(id); };
    followers.set(id, stop);
    source.addEventListener("job", (event) => {
      errors = 0;
      let job;
      try { job = JSON.parse(/** @type {MessageEvent} */ (event).data); } catch { return; }
      callbacks.onJob(job);
    });
    source.addEventListener("log", (event) => {
      errors = 0;
      let batch;
      try { batch = JSON.parse(/** @type {MessageEvent} */ (event).data); } catch { return; }
      callbacks.log?.onLog(batch);
    });
    source.addEventListener("error", () => {
      // The stream also "errors" when the server ends it; a finished job has stopped us already.
      if (source.readyState === Source.CLOSED || ++errors >= SSE_FAILURES_BEFORE_POLL) {
        stop();
        poll(id);
      }
    });
  };

  /** Polls GET /api/jobs/<id>/ until the job ends (or is not found). @param {string} id */
  const poll = (id) => {
    let stopped = false;
    let timer = 0;
    let attempt = 0;
    followers.set(id, () => { stopped = true; runtime.clearTimeout(timer); followers.delete(id); });
    const tick = async () => {
      if (stopped) return;
      let delay = POLL_INTERVAL_MS;
      try {
        const response = await runtime.fetch(`/api/jobs/${encodeURIComponent(id)}/`, { headers: { Accept: "application/json" } });
        if (response.status === 404) { followers.get(id)?.(); return; }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const job = await response.json();
        // The log first: once the job shows its end its poll stops, and by then every line is
        // in. A log read that fails holds up no state: the next tick, or the page's catch-up
        // at the end, reads it again.
        if (id === jobId) await callbacks.log?.poll().catch(() => {});
        attempt = 0;
        callbacks.onJob(job);
      } catch {
        delay = Math.max(POLL_INTERVAL_MS, backoffDelay(attempt++, runtime.random));
      }
      if (!stopped) timer = runtime.setTimeout(tick, delay);
    };
    tick();
  };

  return {
    /** @returns {TransportName} the transport in use now */
    get transport() { return transport; },

    /**
     * Starts hearing: opens the socket, or says which fallback is in use (SSE and poll
     * followers start as jobs are shown).
     * @param {{openSocket?: boolean}} [options] openSocket false: nothing more to hear (a detail page's finished job)
     */
    start({ openSocket = true } = {}) {
      if (transport !== "ws") callbacks.onConnection(CONNECTION_TEXT[transport]);
      else if (openSocket) connectSocket();
    },

    /** Stops every socket, stream, poll and timer. */
    stop() {
      socket?.stop();
      socket = null;
      for (const stop of [...followers.values()]) stop();
    },

    /**
     * To be called with every job the page shows: a job that ended stops its follower;
     * an unfinished one is followed when the page is on SSE or polling.
     * @param {Job} job
     */
    jobShown(job) {
      if (isTerminal(job.state)) followers.get(job.id)?.();
      else if (transport !== "ws") follow(job);
    },

    /**
     * Sends a cancel frame on the open socket. @param {string} id
     * @returns {boolean} whether it was sent (false: no socket open, ask the API)
     */
    cancel(id) {
      return socket?.send(JSON.stringify(jobId ? { type: "cancel" } : { type: "cancel", id })) ?? false;
    },
  };
}
