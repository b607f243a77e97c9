/**
 * The job card: one function draws a job into its card, for the first paint from the
 * page's JSON and for every live frame, in every state (queued with its place in line,
 * running with or without a known total, succeeded with its result, failed with its
 * error, cancelled). The markup matches jobs/templates/jobs/_job_card.html, the card the
 * server draws before the module runs. Job data goes in as text only.
 */

import { el } from "./dom.js";
import { formatDuration, formatEta, formatPercent, formatRate, formatValue, ordinal } from "./format.js";
import { editUrl, elapsedSeconds, isTerminal, jobPercent } from "./job.js";

/** @typedef {import("./job.js").Job} Job */

const STATE_LABELS = { queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled" };

/** @param {Object<string, *>} data @param {string} className */
function definitionList(data, className) {
  const dl = el("dl", className);
  for (const [key, value] of Object.entries(data)) {
    const row = el("div");
    row.append(el("dt", "", key), el("dd", "", formatValue(value)));
    dl.append(row);
  }
  return dl;
}

/** @param {Job} job @param {boolean} detail */
function renderHead(job, detail) {
  const head = el("header", "job__head");
  const titleWrap = el("div", "job__title-wrap");
  const title = detail ? el("h1", "job__title", job.kind) : el("a", "job__title", job.kind);
  if (!detail) /** @type {HTMLAnchorElement} */ (title).href = job.url;
  const params = Object.entries(job.params ?? {}).map(([k, v]) => `${k} ${formatValue(v)}`).join(" · ");
  titleWrap.append(title, el("span", "job__params", params));
  let badgeText = STATE_LABELS[job.state] ?? job.state;
  if (job.state === "queued" && job.queue_position) badgeText += ` · ${ordinal(job.queue_position)} in line`;
  head.append(titleWrap, el("span", `badge badge--${job.state}`, badgeText));
  return head;
}

/**
 * Sets the bar's width and values; `bar` is the card's own bar when redrawing, so the
 * width animates from where it was.
 * @param {HTMLElement} bar @param {Job} job @param {number|null} percent
 */
function renderBar(bar, job, percent) {
  if (!bar.firstElementChild) bar.append(el("div", "bar__fill"));
  bar.className = `bar${percent === null ? " bar--indeterminate" : ""}`;
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.setAttribute("aria-label", `${job.kind} progress`);
  const fill = /** @type {HTMLElement} */ (bar.firstElementChild);
  if (percent === null) {
    bar.removeAttribute("aria-valuenow");
    bar.dataset.percent = "";
    fill.style.width = "";
  } else {
    bar.setAttribute("aria-valuenow", String(Math.round(percent)));
    bar.dataset.percent = String(Math.round(percent));
    fill.style.width = `${percent}%`;
  }
  return bar;
}

/** @param {Job} job @param {number|null} percent @param {number} now */
function renderStats(job, percent, now) {
  const stats = el("div", "job__stats");
  const message = el("p", "job__message", job.progress?.message ?? (job.state === "queued" ? "Waiting for a worker…" : ""));
  const numbers = el("p", "job__numbers");
  if (percent !== null && job.progress) numbers.append(el("span", "job__percent", formatPercent(percent)));
  if (job.state === "running" && job.progress?.rate) numbers.append(el("span", "job__rate", formatRate(job.progress.rate)));
  if (job.state === "running" && job.progress?.eta_seconds !== null && job.progress?.eta_seconds !== undefined) {
    numbers.append(el("span", "job__eta", formatEta(job.progress.eta_seconds)));
  }
  const elapsed = elapsedSeconds(job, now);
  if (elapsed !== null) numbers.append(el("span", "job__elapsed", `${job.finished_at ? "took" : "elapsed"} ${formatDuration(elapsed)}`));
  stats.append(message, numbers);
  return stats;
}

/**
 * @param {Job} job @param {boolean} detail @param {boolean} cancelling
 * @param {boolean} retrying a "Run again" was asked for and not yet answered
 */
function renderActions(job, detail, cancelling, retrying) {
  const actions = el("div", "job__actions");
  if (job.result_url) {
    const link = /** @type {HTMLAnchorElement} */ (el("a", "button button--small", "Download result"));
    link.href = job.result_url;
    link.setAttribute("download", "");
    actions.append(link);
  }
  if (!isTerminal(job.state)) {
    const cancel = /** @type {HTMLButtonElement} */ (el("button", "button button--small button--ghost", cancelling ? "Cancelling…" : "Cancel"));
    cancel.type = "button";
    cancel.disabled = cancelling;
    cancel.dataset.cancel = job.id;
    actions.append(cancel);
  } else {
    // An ended job runs again as it was, or with its parameters in the form to change first.
    const again = /** @type {HTMLButtonElement} */ (el("button", "button button--small button--accent", retrying ? "Starting…" : "Run again"));
    again.type = "button";
    again.disabled = retrying;
    again.dataset.retry = job.id;
    const edit = /** @type {HTMLAnchorElement} */ (el("a", "button button--small", "Edit and run"));
    edit.href = editUrl(job.id);
    edit.dataset.edit = job.id;
    actions.append(again, edit);
  }
  if (!detail) actions.append(Object.assign(el("a", "job__more", "Details →"), { href: job.url }));
  return actions;
}

/** The detail page's parameters and timeline. @param {Job} job */
function renderDetails(job) {
  const facts = { id: job.id, created: job.created_at, started: job.started_at, finished: job.finished_at };
  const details = el("div", "job__details");
  details.append(el("h2", "", "Parameters"), definitionList(job.params ?? {}, "job__param-list"));
  details.append(el("h2", "", "Timeline"), definitionList(
    Object.fromEntries(Object.entries(facts).map(([k, v]) => [k, k === "id" ? v : v ? new Date(v).toLocaleString() : "—"])),
    "job__facts"));
  return details;
}

/**
 * Draws `job` into a fresh card element, or into `card` when given (keeping its bar
 * element, so the width animates).
 * @param {Job} job @param {HTMLElement|null} [card]
 * @param {{detail?: boolean, cancelling?: boolean, retrying?: boolean, now?: number}} [options]
 *   detail: the job's own page; cancelling: a cancel was asked for and has not shown yet;
 *   retrying: a "Run again" was asked for and not yet answered
 * @returns {HTMLElement}
 */
export function renderJob(job, card = null, { detail = false, cancelling = false, retrying = false, now = Date.now() } = {}) {
  const percent = jobPercent(job);
  const oldBar = /** @type {HTMLElement|null} */ (card?.querySelector(".bar") ?? null);
  const node = card ?? el("article");
  node.className = `job${detail ? " job--detail" : ""}`;
  node.id = `job-${job.id}`;
  node.dataset.state = job.state;
  node.dataset.jobId = job.id;

  const parts = [renderHead(job, detail), renderBar(oldBar ?? el("div", "bar"), job, percent), renderStats(job, percent, now)];
  if (job.error) parts.push(el("p", "job__error", job.error));
  if (job.result !== null && job.result !== undefined) {
    parts.push(typeof job.result === "object" && !Array.isArray(job.result)
      ? definitionList(job.result, "job__result")
      : el("p", "job__result", formatValue(job.result)));
  }
  const actions = renderActions(job, detail, cancelling, retrying);
  if (actions.childElementCount) parts.push(actions);
  if (detail) parts.push(renderDetails(job));
  node.replaceChildren(...parts);
  return node;
}

/**
 * Moves a running job's "elapsed" on by the clock, between frames.
 * @param {HTMLElement} card @param {Job} job @param {number} [now]
 */
export function renderElapsed(card, job, now = Date.now()) {
  if (job.state !== "running" || !job.started_at) return;
  const span = card.querySelector(".job__elapsed");
  const seconds = elapsedSeconds(job, now);
  if (span && seconds !== null) span.textContent = `elapsed ${formatDuration(seconds)}`;
}
