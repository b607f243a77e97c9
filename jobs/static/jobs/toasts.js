/**
 * Telling the user a job they watched has ended: a toast in `#toasts` and, while the
 * tab is not looked at, a mark in its title. And the page's other short messages (an
 * action the server refused), as the same toasts.
 */

import { el } from "./dom.js";

/** @typedef {import("./job.js").Job} Job */

const MAX_TOASTS = 3; // older ones go first: a burst of finishing jobs must not cover the page
const TOAST_MS = 8000; // long enough to read and click, short enough not to pile up
const TITLE_MARK_MS = 5000; // a tab in view keeps the mark this long; one out of view until it is looked at

const VERBS = { succeeded: "finished", failed: "failed", cancelled: "was cancelled" };
const MARKS = { succeeded: "✓", failed: "✗", cancelled: "■" };

/**
 * Shows `text` (an element: a link, a line) as a toast of `tone` (a job state's colour)
 * with a close button, for a while.
 * @param {Document} doc @param {Window} win @param {HTMLElement} text @param {string} tone
 * @returns {HTMLElement} the toast
 */
function showToast(doc, win, text, tone) {
  const toast = el("div", `toast toast--${tone}`);
  const close = /** @type {HTMLButtonElement} */ (el("button", "toast__close", "×"));
  close.type = "button";
  close.setAttribute("aria-label", "Dismiss");
  close.addEventListener("click", () => toast.remove());
  toast.append(text, close);
  const toasts = doc.getElementById("toasts");
  toasts?.append(toast);
  while (toasts && toasts.childElementCount > MAX_TOASTS) toasts.firstElementChild?.remove();
  win.setTimeout(() => toast.remove(), TOAST_MS);
  return toast;
}

/**
 * @param {Document} doc @param {Window} win
 * @returns {(message: string) => HTMLElement} shows `message` (something the user asked
 *   for did not happen, said why) as an alert toast
 */
export function createProblemToaster(doc, win) {
  return function showProblem(message) {
    const toast = showToast(doc, win, el("p", "toast__text", message), "failed");
    toast.setAttribute("role", "alert");
    return toast;
  };
}

/**
 * @param {Document} doc @param {Window} win
 * @returns {(job: Job) => void} shows that `job` (a job the user saw unfinished) has ended
 */
export function createEndAnnouncer(doc, win) {
  const title = doc.title;
  return function announceEnd(job) {
    const verb = VERBS[job.state];
    const mark = MARKS[job.state];
    const link = /** @type {HTMLAnchorElement} */ (el("a", "toast__text", `${mark} ${job.kind} ${verb}`));
    link.href = job.url;
    showToast(doc, win, link, job.state);

    doc.title = `${mark} ${job.kind} ${verb} — ${title}`;
    const restore = () => {
      doc.title = title;
      win.removeEventListener("focus", restore);
      doc.removeEventListener("visibilitychange", onVisible);
    };
    const onVisible = () => doc.visibilityState === "visible" && restore();
    if (doc.visibilityState === "visible" && doc.hasFocus()) win.setTimeout(restore, TITLE_MARK_MS);
    else {
      win.addEventListener("focus", restore);
      doc.addEventListener("visibilitychange", onVisible);
    }
  };
}
