/**
 * "Notify me": the decisions behind a system notification when a job ends, with no
 * browser in them (desktop-notifications.js does the calling): whether to show one,
 * what it says, and what the control shows.
 */

import { isTerminal } from "./job.js";

/** @typedef {import("./job.js").Job} Job */
/** @typedef {"default"|"granted"|"denied"} Permission the browser's Notification.permission */
/** @typedef {"unsupported"|"blocked"|"on"|"off"} ControlState */

export const STORAGE_KEY = "jobstream.notify"; // "on" once the user turned it on, on this site
const OUTCOMES = { succeeded: "succeeded", failed: "failed", cancelled: "was cancelled" };
const BODY_MAX = 200; // characters: a system notification shows a line or two

/**
 * Whether `job`'s new state is worth a system notification: it just ended (the page saw
 * it unfinished), the tab is hidden, the user turned it on and the browser allows it, and
 * this page did not show one for the job yet.
 * @param {{job: Job, before: Job|null|undefined, visibility: string, permission: Permission|null,
 *   enabled: boolean, already: Set<string>}} facts
 * @returns {boolean}
 */
export function shouldNotify({ job, before, visibility, permission, enabled, already }) {
  return (
    enabled &&
    permission === "granted" &&
    visibility === "hidden" &&
    isTerminal(job.state) &&
    !!before &&
    !isTerminal(before.state) &&
    !already.has(job.id)
  );
}

/**
 * The notification of `job`'s end: `tag` is its id, so a second one for it would
 * replace the first rather than pile up.
 * @param {Job} job @returns {{title: string, options: {body: string, tag: string}}}
 */
export function notificationFor(job) {
  const outcome = OUTCOMES[/** @type {keyof typeof OUTCOMES} */ (job.state)] ?? job.state;
  const detail = job.state === "failed" && job.error ? job.error : "Click to open the job.";
  const body = detail.length > BODY_MAX ? `${detail.slice(0, BODY_MAX - 1)}…` : detail;
  return { title: `${job.kind} ${outcome}`, options: { body, tag: job.id } };
}

/**
 * What the "Notify me" control shows.
 * @param {{supported: boolean, permission: Permission|null, enabled: boolean}} facts
 * @returns {ControlState}
 */
export function controlState({ supported, permission, enabled }) {
  if (!supported) return "unsupported";
  if (permission === "denied") return "blocked";
  return enabled && permission === "granted" ? "on" : "off";
}

/** The control's words for each state: its label and the line beside it. */
export const CONTROL_TEXT = {
  unsupported: { label: "Notify me", note: "Not supported by this browser" },
  blocked: { label: "Notify me", note: "Blocked: allow notifications for this site in the browser's settings" },
  on: { label: "Notify me: on", note: "A notification when a job ends while this tab is hidden" },
  off: { label: "Notify me", note: "" },
};
