/**
 * Telling the user a job they watched has ended: a toast in `#toasts` and, while the
 * tab is not looked at, a mark in its title.
 */

import { el } from "./dom.js";

/** @typedef {import("./job.js").Job} Job */

const MAX_TOASTS = 3; // older ones go first: a burst of finishing jobs must not cover the page
const TOAST_MS = 8000; // long enough to read and click, short enough not to pile up
const TITLE_MARK_MS = 5000; // a tab in view keeps the mark this long; one out of view until it is looked at

const VERBS = { succeeded: "finished", failed: "failed", cancelled: "was cancelled" };
const MARKS = { succeeded: "✓", failed: "✗", cancelled: "■" };

/**
 * @param {Document} doc @param {Window} win
 * @returns {(job: Job) => void} shows that `job` (a job the user saw unfinished) has ended
 */
export function createEndAnnouncer(doc, win) {
  const title = doc.title;
  return function announceEnd(job) {
    const verb = VERBS[job.state];
    const mark = MARKS[job.state];
    const toast = el("div", `toast toast--${job.state}`);
    const link = /** @type {HTMLAnchorElement} */ (el("a", "toast__text", `${mark} ${job.kind} ${verb}`));
    link.href = job.url;
    const close = /** @type {HTMLButtonElement} */ (el("button", "toast__close", "×"));
    close.type = "button";
    close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", () => toast.remove());
    toast.append(link, close);
    const toasts = doc.getElementById("toasts");
    toasts?.append(toast);
    while (toasts && toasts.childElementCount > MAX_TOASTS) toasts.firstElementChild?.remove();
    win.setTimeout(() => toast.remove(), TOAST_MS);

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
