// The staff live view: every queued and running job, fed by /ws/staff/jobs/.
// The socket sends a snapshot (active jobs oldest first, counts per state), then one
// frame per change of any job. A frame whose seq is not above the last one shown for
// its job is dropped. Places in line are worked out here from the queued jobs shown,
// so they stay right as jobs start. Job text only ever goes in with textContent.

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
const CLOSE_NOT_FOUND = 4404;
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15000;
const ENDED_ROW_MS = 4000; // a finished job stays this long, showing how it ended, then goes

/** @type {Map<string, any>} */
const jobs = new Map();
/** @type {Map<string, HTMLTableRowElement>} */
const rows = new Map();
/** @type {Record<string, number>} */
let counts = Object.fromEntries(STATES.map((state) => [state, 0]));
let socket = /** @type {WebSocket | null} */ (null);
let attempt = 0;

const body = /** @type {HTMLElement} */ (document.querySelector("[data-staff-jobs]"));
const empty = /** @type {HTMLElement} */ (document.querySelector("[data-empty]"));
const connection = /** @type {HTMLElement} */ (document.querySelector("[data-connection]"));
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1, minimumFractionDigits: 1 });
const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] ?? "th";
  return `${n}${suffix}`;
}

function el(tag, className = "", text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

function percentOf(job) {
  const progress = job.progress;
  if (job.state === "succeeded") return 100;
  if (!progress || progress.total === null || progress.total === 0) return null;
  return Math.max(0, Math.min(100, (100 * (progress.current ?? 0)) / progress.total));
}

function renderRow(job, place) {
  let row = rows.get(job.id);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.jobId = job.id;
    rows.set(job.id, row);
  }
  row.replaceChildren();
  row.className = `staff-row staff-row--${job.state}`;

  const name = el("td", "staff-row__job");
  const link = el("a", "", job.kind);
  link.setAttribute("href", job.url);
  name.append(link, el("span", "staff-row__id", ` ${job.id.slice(0, 8)}`));

  const state = el("td");
  state.append(el("span", `badge badge--${job.state}`, job.state));

  const progressCell = el("td", "staff-table__progress");
  const percent = percentOf(job);
  const bar = el("div", percent === null && job.state === "running" ? "bar bar--indeterminate" : "bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-label", `${job.kind} ${job.id}`);
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  if (percent !== null) bar.setAttribute("aria-valuenow", percent.toFixed(1));
  const fill = el("div", "bar__fill");
  fill.style.width = `${percent ?? 0}%`;
  bar.append(fill);
  const numbers = [];
  if (percent !== null) numbers.push(`${decimal.format(percent)} %`);
  if (job.progress?.message) numbers.push(job.progress.message);
  if (job.progress?.rate) numbers.push(`${integer.format(job.progress.rate)}/s`);
  if (job.error) numbers.push(job.error);
  progressCell.append(bar, el("div", "staff-row__numbers", numbers.join(" · ")));

  const line = el("td", "staff-row__line", place ? `${ordinal(place)} in line` : "");
  const actions = el("td");
  if (!TERMINAL.has(job.state)) {
    const cancel = el("button", "button button--small", "Cancel");
    cancel.setAttribute("type", "button");
    cancel.addEventListener("click", () => {
      cancel.disabled = true;
      cancel.textContent = "Cancelling…";
      socket?.send(JSON.stringify({ type: "cancel", id: job.id }));
    });
    actions.append(cancel);
  }
  row.append(name, state, progressCell, line, actions);
  return row;
}

function byStartThenCreated(a, b) {
  if (a.state !== b.state) return a.state === "running" ? -1 : 1;
  const key = (job) => (job.state === "running" ? job.started_at : job.created_at) ?? "";
  return key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0;
}

function redraw() {
  const active = [...jobs.values()].sort(byStartThenCreated);
  let place = 0;
  const ordered = active.map((job) => renderRow(job, job.state === "queued" ? ++place : null));
  body.replaceChildren(...ordered);
  empty.hidden = ordered.length > 0;
  for (const state of STATES) {
    const cell = document.querySelector(`[data-count="${state}"]`);
    if (cell) cell.textContent = integer.format(counts[state] ?? 0);
  }
}

function applySnapshot(frame) {
  jobs.clear();
  rows.clear();
  for (const job of frame.jobs) jobs.set(job.id, job);
  counts = { ...counts, ...(frame.counts ?? {}) };
  redraw();
}

function applyJob(job) {
  const known = jobs.get(job.id);
  if (known && job.seq <= known.seq) return; // older than what is shown
  if (known) {
    if (known.state !== job.state) {
      counts[known.state] = Math.max(0, (counts[known.state] ?? 0) - 1);
      counts[job.state] = (counts[job.state] ?? 0) + 1;
    }
  } else {
    counts[job.state] = (counts[job.state] ?? 0) + 1; // new since the snapshot
  }
  jobs.set(job.id, job);
  if (TERMINAL.has(job.state)) {
    setTimeout(() => {
      const current = jobs.get(job.id);
      if (current && TERMINAL.has(current.state)) {
        jobs.delete(job.id);
        rows.delete(job.id);
        redraw();
      }
    }, ENDED_ROW_MS);
  }
  redraw();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/staff/jobs/`);
  socket.addEventListener("open", () => {
    attempt = 0;
    connection.textContent = "live";
  });
  socket.addEventListener("message", (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    if (frame.type === "snapshot") applySnapshot(frame);
    else if (frame.type === "job") applyJob(frame.job);
  });
  socket.addEventListener("close", (event) => {
    if (event.code === CLOSE_NOT_FOUND) {
      connection.textContent = "staff only";
      return;
    }
    attempt += 1;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
    connection.textContent = "reconnecting…";
    setTimeout(connect, delay);
  });
}

redraw();
connect();
