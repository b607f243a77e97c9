/**
 * The entry module of `/` (the form and my jobs) and `/jobs/<id>/` (one job): the
 * only module of these pages that does anything when loaded. It draws the jobs the
 * page came with, then every newer state any transport brings, and wires the form,
 * the cancel and "Run again" buttons, the "Notify me" control, the elapsed clock and the re-reads of silent jobs; on a detail
 * page, the job's log panel and what feeds it.
 */

import { createDesktopNotifier } from "./desktop-notifications.js";
import { setUpForm } from "./form.js";
import { formatEta, formatRate, ordinal } from "./format.js";
import { errorMessage, getJson, postJson } from "./http.js";
import { isTerminal, retryUrl } from "./job.js";
import { createLogFeed } from "./log-feed.js";
import { lineFromHash } from "./log-lines.js";
import { createLogPanel } from "./log-panel.js";
import { renderElapsed, renderJob } from "./render.js";
import { createResync, resyncAfterMs } from "./resync.js";
import { browserRuntime } from "./runtime.js";
import { SeqFilter } from "./seq-filter.js";
import { createEndAnnouncer, createProblemToaster } from "./toasts.js";
import { createJobStream } from "./transports.js";

/** @typedef {import("./job.js").Job} Job */

const ELAPSED_TICK_MS = 1000; // "elapsed" counts in whole seconds
const LOG_FETCH_TIMEOUT_MS = 10000; // a log read the server does not answer gives up, to be asked again

const jobId = document.querySelector("[data-job-detail]")?.getAttribute("data-job-detail") ?? null;
const shown = new SeqFilter();
/** @type {Set<string>} ids of jobs whose cancel was asked for and not yet shown */
const cancelling = new Set();
/** @type {Set<string>} ids of ended jobs whose "Run again" was clicked and not yet answered */
const retrying = new Set();
const announceEnd = createEndAnnouncer(document, window);
const showProblem = createProblemToaster(document, window);
const desktop = createDesktopNotifier(document, window); // "Notify me": a hidden tab hears of an end
const logRoot = jobId ? document.querySelector("[data-log-panel]") : null;
const logPanel = jobId && logRoot instanceof HTMLElement ? createLogPanel(logRoot, { jobId, target: lineFromHash(location.hash) }) : null;
const logFeed = jobId && logPanel
  ? createLogFeed({ jobId, panel: logPanel, read: (url) => getJson(url, { timeoutMs: LOG_FETCH_TIMEOUT_MS }) })
  : null;
const resync = createResync({ shown, apply, jobId, afterMs: resyncAfterMs(document.body) });
const stream = createJobStream({
  jobId,
  runtime: browserRuntime(),
  callbacks: {
    onJob: apply,
    onSnapshot: (jobs) => [...jobs].reverse().forEach(apply), // oldest first, so prepend keeps the order
    onConnection: showConnection,
    unfinished: () => shown.all().filter((job) => !isTerminal(job.state)),
    reread: () => resync.rereadShown(),
    log: logFeed ? { after: () => logFeed.after, onLog: (batch) => logFeed.receive(batch), poll: () => logFeed.catchUp() } : undefined,
  },
});

/**
 * Shows `job` unless a frame with this seq or a higher one was shown already.
 * @param {Job} job @returns {boolean} whether it was shown
 */
function apply(job) {
  resync.heard(job.id);
  const before = shown.shown(job.id);
  if (!shown.admit(job)) return false;
  if (isTerminal(job.state)) cancelling.delete(job.id);
  const existing = document.getElementById(`job-${job.id}`);
  const options = { cancelling: cancelling.has(job.id), retrying: retrying.has(job.id) };
  if (jobId) {
    if (job.id !== jobId || !existing) return false;
    renderJob(job, existing, { ...options, detail: true });
  } else {
    const list = document.querySelector("[data-job-list]");
    if (!list) return false;
    if (existing) renderJob(job, existing, options);
    else list.prepend(renderJob(job, null, options));
    list.querySelector("[data-empty]")?.setAttribute("hidden", "");
  }
  if (before && !isTerminal(before.state) && isTerminal(job.state)) {
    announceEnd(job);
    desktop.announce(job, before);
    // A socket brings every line before the end; SSE after a reconnect and polling may not have.
    if (stream.transport !== "ws") catchUpLog();
  }
  stream.jobShown(job);
  return true;
}

/** Reads the job's log over HTTP to its current end. */
function catchUpLog() {
  logFeed?.catchUp().catch((error) => console.warn("jobstream: the log could not be read", error));
}

/** A `#L17` link, or the address bar: that line, now or once it is here. */
function onHashChange() {
  const n = lineFromHash(location.hash);
  if (n !== null) logPanel?.goTo(n);
}

/** @param {string} text "" hides the connection line */
function showConnection(text) {
  for (const badge of document.querySelectorAll("[data-connection]")) {
    badge.textContent = text;
    badge.toggleAttribute("hidden", !text);
  }
}

/** Asks a job to stop: a frame on the open socket, else the API. @param {string} id */
async function cancelJob(id) {
  if (stream.cancel(id)) return;
  const response = await postJson(`/api/jobs/${encodeURIComponent(id)}/cancel/`);
  if (response.status === 202) apply(await response.json());
  else if (response.status === 409) {
    // Already finished: show how it ended.
    const current = await fetch(`/api/jobs/${encodeURIComponent(id)}/`);
    if (current.ok) apply(await current.json());
  } else throw new Error(`cancel answered ${response.status}`);
}

/**
 * Runs an ended job again: the new job shows in the list (and the owner socket's frames
 * follow it); on its own page the browser goes to the new job's. The server's refusal
 * (over a quota, its file gone…) shows as a toast.
 * @param {string} id
 */
async function retryJob(id) {
  const response = await postJson(retryUrl(id));
  const body = await response.json().catch(() => null);
  if (response.status !== 201) throw new Error(errorMessage(body, response.status));
  if (jobId) location.assign(body.url);
  else {
    apply(body);
    document.getElementById(`job-${body.id}`)?.scrollIntoView({ block: "nearest" });
  }
}

/** @param {HTMLButtonElement} button */
function onRetryClick(button) {
  const id = button.dataset.retry ?? "";
  if (retrying.has(id)) return;
  retrying.add(id);
  button.disabled = true;
  button.textContent = "Starting…";
  retryJob(id)
    .catch((error) => showProblem(error instanceof TypeError ? "Could not reach the server; try again." : error.message))
    .finally(() => {
      retrying.delete(id);
      // Its card, as drawn now (a redraw may have replaced the button).
      const again = document.querySelector(`#job-${CSS.escape(id)} [data-retry]`);
      if (again instanceof HTMLButtonElement) {
        again.disabled = false;
        again.textContent = "Run again";
      }
    });
}

/** @param {MouseEvent} event */
function onClick(event) {
  const target = event.target instanceof Element ? event.target : null;
  const retry = target?.closest("[data-retry]");
  if (retry instanceof HTMLButtonElement) {
    onRetryClick(retry);
    return;
  }
  const button = target?.closest("[data-cancel]") ?? null;
  if (!(button instanceof HTMLButtonElement)) return;
  const id = button.dataset.cancel ?? "";
  cancelling.add(id);
  button.disabled = true;
  button.textContent = "Cancelling…";
  cancelJob(id).catch(() => {
    cancelling.delete(id);
    button.disabled = false;
    button.textContent = "Cancel";
  });
}

function tickElapsed() {
  for (const job of shown.all()) {
    if (job.state !== "running") continue; // only a running job's clock moves
    const card = document.getElementById(`job-${job.id}`);
    if (card) renderElapsed(card, job);
  }
}

/** @param {string} id @returns {*} the JSON of a json_script element, or null */
function readJson(id) {
  const node = document.getElementById(id);
  return node ? JSON.parse(node.textContent ?? "null") : null;
}

function start() {
  document.documentElement.classList.add("js");
  const form = document.getElementById("job-form");
  if (form instanceof HTMLFormElement) setUpForm(form, apply);
  document.addEventListener("click", onClick);
  for (const control of document.querySelectorAll("[data-notify]")) desktop.bind(control);

  /** @type {Job[]} */
  const initial = jobId ? [readJson("initial-job")].filter(Boolean) : (readJson("initial-jobs") ?? []).slice().reverse();
  // Redraw the server's cards with the live render function (oldest first, so prepend keeps order).
  for (const job of initial) apply(job);
  const allEnded = initial.length > 0 && initial.every((job) => isTerminal(job.state));
  stream.start({ openSocket: !(jobId && allEnded) }); // a finished job has nothing more to say
  if (jobId && allEnded) catchUpLog(); // but its log, read over HTTP
  window.addEventListener("hashchange", onHashChange);
  setInterval(tickElapsed, ELAPSED_TICK_MS);
  setInterval(() => resync.rereadSilent(), resync.checkEveryMs);
}

window.jobstream = {
  render: (job, card = null, options = {}) =>
    renderJob(job, card, { cancelling: cancelling.has(job.id), retrying: retrying.has(job.id), ...options }),
  apply,
  formatRate,
  formatEta,
  ordinal,
  get transport() { return stream.transport; },
};
start();
