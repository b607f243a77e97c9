/**
 * A row of the staff live view's table: the job, its state, its bar with percent,
 * message, rate and error, its place in line, and a cancel button while it has not
 * ended. The percent is the job card's (`jobPercent`, from the server's
 * `progress.percent`). Job data goes in as text only.
 */

import { el } from "./dom.js";
import { formatPercentTenths, formatWholeRate, ordinal } from "./format.js";
import { isTerminal, jobPercent } from "./job.js";

/** @typedef {import("./job.js").Job} Job */

/** @param {Job} job */
function renderProgressCell(job) {
  const cell = el("td", "staff-table__progress");
  const percent = jobPercent(job);
  const bar = el("div", percent === null ? "bar bar--indeterminate" : "bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-label", `${job.kind} ${job.id}`);
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  if (percent !== null) bar.setAttribute("aria-valuenow", percent.toFixed(1));
  const fill = el("div", "bar__fill");
  fill.style.width = `${percent ?? 0}%`;
  bar.append(fill);
  const numbers = [];
  if (percent !== null && job.progress) numbers.push(formatPercentTenths(percent));
  if (job.progress?.message) numbers.push(job.progress.message);
  if (job.progress?.rate) numbers.push(formatWholeRate(job.progress.rate));
  if (job.error) numbers.push(job.error);
  cell.append(bar, el("div", "staff-row__numbers", numbers.join(" · ")));
  return cell;
}

/**
 * Draws `job` into `row` (or a new row).
 * @param {Job} job @param {number|null} place 1-based place in line among the queued jobs shown
 * @param {HTMLTableRowElement|null} row
 * @param {(id: string, button: HTMLButtonElement) => void} onCancel the row's cancel button was clicked
 * @returns {HTMLTableRowElement}
 */
export function renderStaffRow(job, place, row, onCancel) {
  const node = row ?? /** @type {HTMLTableRowElement} */ (el("tr"));
  node.dataset.jobId = job.id;
  node.className = `staff-row staff-row--${job.state}`;

  const name = el("td", "staff-row__job");
  const link = el("a", "", job.kind);
  link.setAttribute("href", job.url);
  name.append(link, el("span", "staff-row__id", ` ${job.id.slice(0, 8)}`));

  const state = el("td");
  state.append(el("span", `badge badge--${job.state}`, job.state));

  const line = el("td", "staff-row__line", place ? `${ordinal(place)} in line` : "");
  const actions = el("td");
  if (!isTerminal(job.state)) {
    const cancel = /** @type {HTMLButtonElement} */ (el("button", "button button--small", "Cancel"));
    cancel.setAttribute("type", "button");
    cancel.addEventListener("click", () => onCancel(job.id, cancel));
    actions.append(cancel);
  }
  node.replaceChildren(name, state, renderProgressCell(job), line, actions);
  return node;
}

/**
 * The table's order: running jobs first, longest running on top, then the queue in
 * the order it is served (oldest first), so a place in line is the row's rank.
 * @param {Job} a @param {Job} b
 */
export function byStartThenCreated(a, b) {
  if (a.state !== b.state) return a.state === "running" ? -1 : 1;
  const key = (/** @type {Job} */ job) => (job.state === "running" ? job.started_at : job.created_at) ?? "";
  return key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0;
}
