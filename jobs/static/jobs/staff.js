/**
 * The entry module of the staff live view (`/staff/jobs/`): every queued and running
 * job, fed by /ws/staff/jobs/. The socket sends a snapshot (active jobs oldest first,
 * and the counts per state), then one frame per change of any job; a frame whose seq
 * is not above the one shown for its job is dropped. Places in line are worked out
 * here from the queued jobs shown, so they stay right as jobs start.
 */

import { formatCount } from "./format.js";
import { isTerminal } from "./job.js";
import { keepSocketOpen } from "./reconnecting-socket.js";
import { browserRuntime, socketUrl } from "./runtime.js";
import { SeqFilter } from "./seq-filter.js";
import { byStartThenCreated, renderStaffRow } from "./staff-render.js";
import { CLOSE_NOT_FOUND } from "./transports.js";

/** @typedef {import("./job.js").Job} Job */

const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
const ENDED_ROW_MS = 4000; // a finished job stays this long, showing how it ended, then goes

const jobs = new SeqFilter();
/** @type {Map<string, HTMLTableRowElement>} */
const rows = new Map();
/** @type {Record<string, number>} */
let counts = Object.fromEntries(STATES.map((state) => [state, 0]));

const body = /** @type {HTMLElement} */ (document.querySelector("[data-staff-jobs]"));
const empty = /** @type {HTMLElement} */ (document.querySelector("[data-empty]"));
const connection = /** @type {HTMLElement} */ (document.querySelector("[data-connection]"));

/** @param {string} id @param {HTMLButtonElement} button */
function cancel(id, button) {
  button.disabled = true;
  button.textContent = "Cancelling…";
  socket.send(JSON.stringify({ type: "cancel", id }));
}

function redraw() {
  const active = jobs.all().sort(byStartThenCreated);
  let place = 0;
  const ordered = active.map((job) => {
    const row = renderStaffRow(job, job.state === "queued" ? ++place : null, rows.get(job.id) ?? null, cancel);
    rows.set(job.id, row);
    return row;
  });
  body.replaceChildren(...ordered);
  empty.hidden = ordered.length > 0;
  for (const state of STATES) {
    const cell = document.querySelector(`[data-count="${state}"]`);
    if (cell) cell.textContent = formatCount(counts[state] ?? 0);
  }
}

/** @param {{jobs: Job[], counts?: Record<string, number>}} frame */
function applySnapshot(frame) {
  jobs.clear();
  rows.clear();
  for (const job of frame.jobs) jobs.admit(job);
  counts = { ...counts, ...(frame.counts ?? {}) };
  redraw();
}

/** @param {Job} job */
function applyJob(job) {
  const known = jobs.shown(job.id);
  if (!jobs.admit(job)) return; // older than what is shown
  if (known) {
    if (known.state !== job.state) {
      counts[known.state] = Math.max(0, (counts[known.state] ?? 0) - 1);
      counts[job.state] = (counts[job.state] ?? 0) + 1;
    }
  } else {
    counts[job.state] = (counts[job.state] ?? 0) + 1; // new since the snapshot
  }
  if (isTerminal(job.state)) {
    setTimeout(() => {
      const current = jobs.shown(job.id);
      if (current && isTerminal(current.state)) {
        jobs.forget(job.id);
        rows.delete(job.id);
        redraw();
      }
    }, ENDED_ROW_MS);
  }
  redraw();
}

redraw();
const socket = keepSocketOpen(socketUrl(location, "/ws/staff/jobs/"), {
  onOpen: () => { connection.textContent = "live"; },
  onFrame: (frame) => {
    if (frame.type === "snapshot") applySnapshot(frame);
    else if (frame.type === "job") applyJob(frame.job);
  },
  onClose: (event) => {
    if (event.code === CLOSE_NOT_FOUND) {
      connection.textContent = "staff only";
      return false;
    }
    connection.textContent = "reconnecting…";
    return true;
  },
}, browserRuntime());
