/**
 * "Notify me": the control that asks for the Notification permission (only on a click),
 * and the system notification of a job that ends while the tab is hidden; the decisions
 * are notify.js's. Nothing happens until the entry module calls these.
 */

import { controlState, CONTROL_TEXT, notificationFor, shouldNotify, STORAGE_KEY } from "./notify.js";

/** @typedef {import("./job.js").Job} Job */

/**
 * @param {Document} doc @param {Window} win
 * @returns {{bind: (root: Element) => void, announce: (job: Job, before: Job|null|undefined) => boolean}}
 */
export function createDesktopNotifier(doc, win) {
  const api = /** @type {typeof Notification|undefined} */ (/** @type {*} */ (win).Notification);
  /** @type {Set<string>} ids of jobs this page showed a notification for */
  const already = new Set();
  /** @type {Element[]} */
  const controls = [];
  let enabled = readChoice();

  function readChoice() {
    try { return win.localStorage.getItem(STORAGE_KEY) === "on"; } catch { return false; } // storage may be off
  }

  /** @param {boolean} on */
  function remember(on) {
    enabled = on;
    try { win.localStorage.setItem(STORAGE_KEY, on ? "on" : "off"); } catch { /* kept for this page only */ }
  }

  function state() {
    return controlState({ supported: typeof api === "function", permission: api ? api.permission : null, enabled });
  }

  function show() {
    const current = state();
    const text = CONTROL_TEXT[current];
    for (const root of controls) {
      root.removeAttribute("hidden");
      root.setAttribute("data-notify-state", current);
      const button = root.querySelector("[data-notify-toggle]");
      if (button instanceof HTMLButtonElement) {
        button.textContent = text.label;
        button.setAttribute("aria-pressed", String(current === "on"));
        button.disabled = current === "unsupported" || current === "blocked";
      }
      const note = root.querySelector("[data-notify-note]");
      if (note) note.textContent = text.note;
    }
  }

  async function toggle() {
    if (!api) return show();
    if (state() === "on") remember(false);
    else {
      const permission = api.permission === "granted" ? "granted" : await api.requestPermission();
      remember(permission === "granted");
    }
    show();
  }

  return {
    /** Wires one "Notify me" control (`[data-notify]` holding its button and note). */
    bind(root) {
      controls.push(root);
      root.querySelector("[data-notify-toggle]")?.addEventListener("click", () => {
        toggle().catch((error) => console.warn("jobstream: the notification permission could not be asked", error));
      });
      show();
    },
    /** Shows the system notification of `job`'s end when notify.js says so; whether it did. */
    announce(job, before) {
      const facts = { job, before, visibility: doc.visibilityState, permission: api ? api.permission : null, enabled, already };
      if (!api || !shouldNotify(facts)) return false;
      already.add(job.id);
      const { title, options } = notificationFor(job);
      const notification = new api(title, options);
      notification.onclick = () => {
        win.focus();
        notification.close();
        win.location.assign(job.url);
      };
      return true;
    },
  };
}
