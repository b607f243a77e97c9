/**
 * jobstream pages: live job cards on `/` and `/jobs/<id>/`.
 *
 * One render function (`render`) draws a job into its card, for the first paint from
 * the page's JSON and for every live frame. Frames come over a WebSocket; after
 * repeated failures (or with `?transport=sse|poll`) over Server-Sent Events, then by
 * polling the JSON API. Job data is only ever inserted as text (textContent), never
 * as HTML.
 *
 * Healing: a socket that reopens starts from the server's snapshot (a fresh database
 * read), and an unfinished job that has heard nothing for STREAM_RESYNC_SECONDS is
 * re-read over HTTP (`resyncSilent`), so a frame lost on the way (a Redis restart, a
 * dropped connection) never leaves a bar waiting for good. A socket that cannot open
 * while the server answers HTTP counts towards the fallback to SSE; one that cannot
 * open while the server is away (a restart) just retries, with backoff and jitter.
 *
 * @typedef {{current: number|null, total: number|null, percent: number|null,
 *            message: string, rate: number|null, eta_seconds: number|null}} Progress
 * @typedef {{id: string, kind: string, params: Object<string, *>, state: string,
 *            seq: number, progress: Progress|null, result: *, result_url: string|null,
 *            error: string|null, queue_position: number|null, created_at: string,
 *            started_at: string|null, finished_at: string|null, updated_at: string,
 *            url: string}} Job
 */

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const CLOSE_NORMAL = 1000;
const CLOSE_NOT_FOUND = 4404;
const WS_FAILURES_BEFORE_SSE = 3; // failed connects in a row before giving up on WebSocket
const SSE_FAILURES_BEFORE_POLL = 3; // errors without a single event before polling
const POLL_INTERVAL_MS = 2000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15000;
// How long an unfinished job may go without a frame before the page re-reads it: the
// server's STREAM_RESYNC_SECONDS, on <body data-stream-resync-seconds> (core/settings.py
// gives the reason for its default).
const RESYNC_AFTER_MS = 1000 * (Number(document.body?.dataset.streamResyncSeconds) || 15);
const RESYNC_CHECK_MS = Math.min(1000, RESYNC_AFTER_MS / 2); // how often silence is looked for
const RESYNC_LIST_FROM = 2; // silent jobs on the list page from which one list request beats one each
const RESYNC_PAGE_SIZE = 100; // the API's largest page
const RESYNC_FETCH_TIMEOUT_MS = 10000; // a re-read the server does not answer must not hold up a reconnect
const MAX_TOASTS = 3; // older ones go first: a burst of finishing jobs must not cover the page
const STATE_LABELS = { queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled" };
const TITLE = document.title;

/** @type {Map<string, Job>} the last job shown per id (its seq is the highest shown) */
const shown = new Map();
/** @type {Set<string>} ids of jobs whose cancel was asked for and not yet shown */
const cancelling = new Set();
/** @type {Map<string, () => void>} per-job SSE/poll followers, to stop them */
const followers = new Map();
/** @type {Map<string, number>} when each job last heard anything (Date.now()): a frame, a snapshot, a re-read */
const heard = new Map();
let resyncing = false;
let transport = chooseTransport();
/** @type {WebSocket|null} */
let socket = null;
const detailId = document.querySelector("[data-job-detail]")?.getAttribute("data-job-detail") ?? null;

// --- formatting ------------------------------------------------------------------

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });

/** @param {*} value */
function formatValue(value) {
  if (typeof value === "number") return Number.isInteger(value) ? integer.format(value) : decimal.format(value);
  if (value === null || value === undefined) return "—";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** @param {number} rate items per second */
export function formatRate(rate) {
  return `${rate >= 100 ? integer.format(rate) : decimal.format(Number(rate.toFixed(1)))}/s`;
}

/** @param {number} seconds */
export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** @param {number} seconds */
export function formatEta(seconds) {
  return `about ${formatDuration(seconds)} left`;
}

/** @param {number} n 1-based place: 1st, 2nd, 3rd, 4th, 11th … */
export function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[n % 10] ?? "th");
  return `${n}${suffix}`;
}

/** @param {Job} job */
function elapsedSeconds(job) {
  if (!job.started_at) return null;
  const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
  return Math.max(0, (end - Date.parse(job.started_at)) / 1000);
}

/** @param {Job} job percent shown, or null for an indeterminate bar */
function percentOf(job) {
  if (job.state === "succeeded") return 100;
  const p = job.progress;
  if (job.state === "running" && p && p.total === null) return null;
  return p && p.percent !== null ? Math.min(100, Math.max(0, p.percent)) : 0;
}

// --- rendering -------------------------------------------------------------------

/**
 * Creates an element with a class and, optionally, text (always as textContent).
 * @param {string} tag @param {string} [className] @param {string} [text]
 */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

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

/**
 * Draws `job` into a fresh card element, or into `card` when given (keeping the bar
 * element, so its width animates). Every piece of job data goes in as text.
 * @param {Job} job @param {HTMLElement|null} [card] @param {{detail?: boolean}} [options]
 * @returns {HTMLElement}
 */
export function render(job, card = null, { detail = false } = {}) {
  const percent = percentOf(job);
  const oldBar = card?.querySelector(".bar");
  const node = card ?? el("article");
  node.className = `job${detail ? " job--detail" : ""}`;
  node.id = `job-${job.id}`;
  node.dataset.state = job.state;
  node.dataset.jobId = job.id;

  const head = el("header", "job__head");
  const titleWrap = el("div", "job__title-wrap");
  const title = detail ? el("h1", "job__title", job.kind) : el("a", "job__title", job.kind);
  if (!detail) /** @type {HTMLAnchorElement} */ (title).href = job.url;
  const params = Object.entries(job.params ?? {}).map(([k, v]) => `${k} ${formatValue(v)}`).join(" · ");
  titleWrap.append(title, el("span", "job__params", params));
  let badgeText = STATE_LABELS[job.state] ?? job.state;
  if (job.state === "queued" && job.queue_position) badgeText += ` · ${ordinal(job.queue_position)} in line`;
  head.append(titleWrap, el("span", `badge badge--${job.state}`, badgeText));

  const bar = oldBar instanceof HTMLElement ? oldBar : el("div", "bar");
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

  const stats = el("div", "job__stats");
  const message = el("p", "job__message", job.progress?.message ?? (job.state === "queued" ? "Waiting for a worker…" : ""));
  const numbers = el("p", "job__numbers");
  if (percent !== null && job.progress) numbers.append(el("span", "job__percent", `${decimal.format(Number(percent.toFixed(1)))}%`));
  if (job.state === "running" && job.progress?.rate) numbers.append(el("span", "job__rate", formatRate(job.progress.rate)));
  if (job.state === "running" && job.progress?.eta_seconds !== null && job.progress?.eta_seconds !== undefined) {
    numbers.append(el("span", "job__eta", formatEta(job.progress.eta_seconds)));
  }
  const elapsed = elapsedSeconds(job);
  if (elapsed !== null) numbers.append(el("span", "job__elapsed", `${job.finished_at ? "took" : "elapsed"} ${formatDuration(elapsed)}`));
  stats.append(message, numbers);

  const parts = [head, bar, stats];
  if (job.error) parts.push(el("p", "job__error", job.error));
  if (job.result !== null && job.result !== undefined) {
    parts.push(typeof job.result === "object" && !Array.isArray(job.result)
      ? definitionList(job.result, "job__result")
      : el("p", "job__result", formatValue(job.result)));
  }
  const actions = el("div", "job__actions");
  if (job.result_url) {
    const link = el("a", "button button--small", "Download result");
    link.href = job.result_url;
    link.setAttribute("download", "");
    actions.append(link);
  }
  if (!TERMINAL.has(job.state)) {
    const pending = cancelling.has(job.id);
    const cancel = el("button", "button button--small button--ghost", pending ? "Cancelling…" : "Cancel");
    cancel.type = "button";
    cancel.disabled = pending;
    cancel.dataset.cancel = job.id;
    actions.append(cancel);
  }
  if (!detail) actions.append(Object.assign(el("a", "job__more", "Details →"), { href: job.url }));
  if (actions.childElementCount) parts.push(actions);

  if (detail) {
    const facts = { id: job.id, created: job.created_at, started: job.started_at, finished: job.finished_at };
    const details = el("div", "job__details");
    details.append(el("h2", "", "Parameters"), definitionList(job.params ?? {}, "job__param-list"));
    details.append(el("h2", "", "Timeline"), definitionList(
      Object.fromEntries(Object.entries(facts).map(([k, v]) => [k, k === "id" ? v : v ? new Date(v).toLocaleString() : "—"])),
      "job__facts"));
    parts.push(details);
  }
  node.replaceChildren(...parts);
  return node;
}

/** Ticks the elapsed time of running jobs once a second. */
function tickElapsed() {
  for (const job of shown.values()) {
    if (job.state !== "running" || !job.started_at) continue;
    const span = document.getElementById(`job-${job.id}`)?.querySelector(".job__elapsed");
    const seconds = elapsedSeconds(job);
    if (span && seconds !== null) span.textContent = `elapsed ${formatDuration(seconds)}`;
  }
}

// --- applying frames -------------------------------------------------------------

/**
 * Shows `job` unless a frame with this seq or a higher one was shown already.
 * @param {Job} job @returns {boolean} whether it was shown
 */
export function apply(job) {
  heard.set(job.id, Date.now());
  const before = shown.get(job.id);
  if (before && job.seq <= before.seq) return false;
  shown.set(job.id, job);
  if (TERMINAL.has(job.state)) cancelling.delete(job.id);
  const existing = document.getElementById(`job-${job.id}`);
  if (detailId) {
    if (job.id !== detailId || !existing) return false;
    render(job, existing, { detail: true });
  } else {
    const list = document.querySelector("[data-job-list]");
    if (!list) return false;
    if (existing) render(job, existing);
    else list.prepend(render(job));
    list.querySelector("[data-empty]")?.setAttribute("hidden", "");
  }
  if (before && !TERMINAL.has(before.state) && TERMINAL.has(job.state)) announceEnd(job);
  if (TERMINAL.has(job.state)) followers.get(job.id)?.();
  else if (transport !== "ws") follow(job);
  return true;
}

/** A toast and a flashing tab title for a job the user saw running that just ended. @param {Job} job */
function announceEnd(job) {
  const verb = { succeeded: "finished", failed: "failed", cancelled: "was cancelled" }[job.state];
  const mark = { succeeded: "✓", failed: "✗", cancelled: "■" }[job.state];
  const toast = el("div", `toast toast--${job.state}`);
  const link = el("a", "toast__text", `${mark} ${job.kind} ${verb}`);
  link.href = job.url;
  const close = el("button", "toast__close", "×");
  close.type = "button";
  close.setAttribute("aria-label", "Dismiss");
  close.addEventListener("click", () => toast.remove());
  toast.append(link, close);
  const toasts = document.getElementById("toasts");
  toasts?.append(toast);
  while (toasts && toasts.childElementCount > MAX_TOASTS) toasts.firstElementChild?.remove();
  setTimeout(() => toast.remove(), 8000);

  document.title = `${mark} ${job.kind} ${verb} — ${TITLE}`;
  const restore = () => {
    document.title = TITLE;
    window.removeEventListener("focus", restore);
    document.removeEventListener("visibilitychange", onVisible);
  };
  const onVisible = () => document.visibilityState === "visible" && restore();
  if (document.visibilityState === "visible" && document.hasFocus()) setTimeout(restore, 5000);
  else {
    window.addEventListener("focus", restore);
    document.addEventListener("visibilitychange", onVisible);
  }
}

/** @param {string} text */
function setConnection(text) {
  for (const badge of document.querySelectorAll("[data-connection]")) {
    badge.textContent = text;
    badge.toggleAttribute("hidden", !text);
  }
}

// --- transports ------------------------------------------------------------------

/** @returns {"ws"|"sse"|"poll"} */
function chooseTransport() {
  const asked = new URLSearchParams(location.search).get("transport");
  if (asked === "poll" || asked === "sse" || asked === "ws") return asked;
  if (typeof WebSocket === "undefined") return typeof EventSource === "undefined" ? "poll" : "sse";
  return "ws";
}

/** @param {number} attempt @returns {number} ms: exponential, capped, with full jitter on half */
function backoff(attempt) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** The owner socket on `/`, or the job socket on a detail page; reconnects with backoff. */
function connectSocket() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const path = detailId ? `/ws/jobs/${encodeURIComponent(detailId)}/` : "/ws/jobs/";
  let failures = 0;
  let attempt = 0;
  const open = () => {
    let opened = false;
    let finished = false;
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}${path}`);
    } catch {
      fallBack("sse");
      return;
    }
    socket = ws;
    ws.addEventListener("open", () => { opened = true; failures = 0; setConnection("live"); });
    ws.addEventListener("message", (event) => {
      attempt = 0;
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      if (frame.type === "snapshot") [...frame.jobs].reverse().forEach(apply);
      else if (frame.type === "job") {
        apply(frame.job);
        if (detailId && TERMINAL.has(frame.job.state)) finished = true;
      } else if (frame.type === "error") console.warn("jobstream:", frame.error);
    });
    ws.addEventListener("close", async (event) => {
      socket = null;
      if (event.code === CLOSE_NOT_FOUND || (event.code === CLOSE_NORMAL && finished)) { setConnection(""); return; }
      setConnection("reconnecting…");
      // A socket that never opened: WebSockets are refused on the way (count it towards
      // SSE) if the server answers HTTP meanwhile; if not, the server is away (a restart)
      // and WebSocket is retried. The HTTP request is the job re-read, so it shows
      // whatever changed while the socket was down.
      if (!opened && (await resyncShown()) && ++failures >= WS_FAILURES_BEFORE_SSE) { fallBack("sse"); return; }
      setTimeout(open, backoff(attempt++));
    });
  };
  open();
}

/** Switches to SSE or polling and follows every job not yet finished. @param {"sse"|"poll"} to */
function fallBack(to) {
  transport = to;
  setConnection(to === "sse" ? "live (events)" : "polling");
  for (const job of shown.values()) if (!TERMINAL.has(job.state)) follow(job);
}

/** Follows one unfinished job over SSE, or by polling. @param {Job} job */
function follow(job) {
  if (followers.has(job.id) || TERMINAL.has(job.state)) return;
  if (transport === "sse" && typeof EventSource !== "undefined") followEvents(job.id);
  else poll(job.id);
}

/** @param {string} id */
function followEvents(id) {
  const source = new EventSource(`/api/jobs/${encodeURIComponent(id)}/events/`);
  let errors = 0;
  const stop = () => { source.close(); followers.delete(id); };
  followers.set(id, stop);
  source.addEventListener("job", (event) => {
    errors = 0;
    try { apply(JSON.parse(/** @type {MessageEvent} */ (event).data)); } catch { /* not JSON: ignore */ }
  });
  source.addEventListener("error", () => {
    // The stream also "errors" when the server ends it; a finished job has stopped us already.
    if (source.readyState === EventSource.CLOSED || ++errors >= SSE_FAILURES_BEFORE_POLL) {
      stop();
      poll(id);
    }
  });
}

/** Polls GET /api/jobs/<id>/ until the job ends (or is not found). @param {string} id */
function poll(id) {
  let stopped = false;
  let timer = 0;
  let attempt = 0;
  followers.set(id, () => { stopped = true; clearTimeout(timer); followers.delete(id); });
  const tick = async () => {
    if (stopped) return;
    let delay = POLL_INTERVAL_MS;
    try {
      const response = await fetch(`/api/jobs/${encodeURIComponent(id)}/`, { headers: { Accept: "application/json" } });
      if (response.status === 404) { followers.get(id)?.(); return; }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      attempt = 0;
      apply(await response.json());
    } catch {
      delay = Math.max(POLL_INTERVAL_MS, backoff(attempt++));
    }
    if (!stopped) timer = window.setTimeout(tick, delay);
  };
  tick();
}

// --- healing: re-reading silent jobs over HTTP ------------------------------------------

/** @param {string} url @returns {Promise<*>} the JSON body; throws on a network error or a non-2xx answer */
async function getJson(url) {
  const response = await fetch(url, {
    headers: { Accept: "application/json" },
    credentials: "same-origin",
    signal: AbortSignal.timeout(RESYNC_FETCH_TIMEOUT_MS),
  });
  if (!response.ok) throw Object.assign(new Error(`HTTP ${response.status}`), { status: response.status });
  return response.json();
}

/**
 * Re-reads jobs over HTTP and shows each whose seq is above the one shown: one GET per
 * job, or one list request when several on the list page need it (others, one each).
 * @param {string[]} ids @returns {Promise<boolean>} whether the server answered
 */
async function resyncJobs(ids) {
  let pending = ids;
  if (!detailId && ids.length >= RESYNC_LIST_FROM) {
    /** @type {Job[]} */
    const results = (await getJson(`/api/jobs/?page_size=${RESYNC_PAGE_SIZE}`)).results;
    // Only jobs on the page: older ones must not pop up on top of it.
    results.filter((job) => shown.has(job.id)).reverse().forEach(apply);
    const listed = new Set(results.map((job) => job.id));
    pending = ids.filter((id) => !listed.has(id));
  }
  await Promise.all(pending.map(async (id) => {
    try {
      apply(await getJson(`/api/jobs/${encodeURIComponent(id)}/`));
    } catch (error) {
      if (/** @type {{status?: number}} */ (error).status !== 404) throw error;
      heard.set(id, Infinity); // gone (purged): nothing more to hear
    }
  }));
  return true;
}

/** Re-reads every unfinished job shown (or, on a detail page, its job). @returns {Promise<boolean>} whether the server answered */
async function resyncShown() {
  const ids = detailId ? [detailId] : [...shown.values()].filter((job) => !TERMINAL.has(job.state)).map((job) => job.id);
  try {
    if (ids.length) return await resyncJobs(ids);
    await getJson("/api/jobs/?page_size=1");
    return true;
  } catch {
    return false;
  }
}

/** Re-reads the unfinished jobs that have heard nothing for RESYNC_AFTER_MS. */
async function resyncSilent() {
  if (resyncing) return;
  const now = Date.now();
  const silent = [...shown.values()]
    .filter((job) => !TERMINAL.has(job.state) && now - (heard.get(job.id) ?? now) >= RESYNC_AFTER_MS)
    .map((job) => job.id);
  if (!silent.length) return;
  for (const id of silent) heard.set(id, now); // at most one re-read per job per interval, answered or not
  resyncing = true;
  try {
    await resyncJobs(silent);
  } catch {
    // The server is away: the socket's reconnect, or the next interval, catches up.
  } finally {
    resyncing = false;
  }
}

// --- HTTP ------------------------------------------------------------------------

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

/** @param {string} url @param {*} body */
function postJson(url, body) {
  return fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify(body ?? {}),
    credentials: "same-origin",
  });
}

/**
 * Starts a job of a kind with a file parameter: multipart/form-data with the fields
 * kind, params (a JSON string) and one per file (DESIGN.md). The browser sets the
 * Content-Type with its boundary.
 * @param {string} kind @param {Object<string, number|string>} params @param {Map<string, File>} files
 */
function postUpload(kind, params, files) {
  const body = new FormData();
  body.append("kind", kind);
  body.append("params", JSON.stringify(params));
  for (const [name, file] of files) body.append(name, file, file.name);
  return fetch("/api/jobs/", {
    method: "POST",
    headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
    body,
    credentials: "same-origin",
  });
}

/** Asks a job to stop: a frame on the open socket, else the API. @param {string} id */
async function cancelJob(id) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(detailId ? { type: "cancel" } : { type: "cancel", id }));
    return;
  }
  const response = await postJson(`/api/jobs/${encodeURIComponent(id)}/cancel/`);
  if (response.status === 202) apply(await response.json());
  else if (response.status === 409) {
    // Already finished: show how it ended.
    const current = await fetch(`/api/jobs/${encodeURIComponent(id)}/`);
    if (current.ok) apply(await current.json());
  } else throw new Error(`cancel answered ${response.status}`);
}

// --- the form --------------------------------------------------------------------

/** @param {HTMLFormElement} form */
function setUpForm(form) {
  const select = /** @type {HTMLSelectElement} */ (form.querySelector("[data-kind-select]"));
  const status = form.querySelector("[data-form-status]");
  const button = form.querySelector("button[type=submit]");
  form.noValidate = true; // the server's messages show inline, next to their fields
  const showKind = () => {
    for (const fieldset of form.querySelectorAll("fieldset[data-kind]")) {
      const selected = fieldset.getAttribute("data-kind") === select.value;
      fieldset.hidden = !selected;
      fieldset.toggleAttribute("data-selected", selected);
    }
  };
  select.addEventListener("change", () => { clearErrors(form); showKind(); });
  showKind();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const kind = select.value;
    const fieldset = form.querySelector(`fieldset[data-kind="${CSS.escape(kind)}"]`);
    /** @type {Object<string, number|string>} */
    const params = {};
    /** @type {Map<string, File>} a kind with a file parameter posts multipart/form-data */
    const files = new Map();
    /** @type {Object<string, string[]>} */
    const fileErrors = {};
    const fileInputs = [];
    for (const input of fieldset?.querySelectorAll("input") ?? []) {
      const name = input.name.slice(kind.length + 1);
      if (input.type === "file") {
        fileInputs.push(input);
        const file = input.files?.[0];
        const limit = Number(input.dataset.maxBytes);
        // The server checks again; this spares sending a file it would refuse.
        if (!file) fileErrors[name] = ["Choose a file to upload."];
        else if (limit && file.size > limit) fileErrors[name] = [`The file '${file.name}' is over the limit of ${input.dataset.maxSize}.`];
        else files.set(name, file);
      } else if (input.validity.badInput) params[name] = "not a number";
      else if (input.value.trim() !== "") params[name] = Number(input.value);
    }
    clearErrors(form);
    if (Object.keys(fileErrors).length) { showErrors(form, kind, fileErrors); return; }
    if (button) button.disabled = true;
    if (status) status.textContent = fileInputs.length ? "Uploading…" : "Starting…";
    try {
      const response = fileInputs.length ? await postUpload(kind, params, files) : await postJson("/api/jobs/", { kind, params });
      const body = await response.json().catch(() => ({}));
      if (response.status === 201) {
        apply(body);
        for (const input of fileInputs) input.value = ""; // the next import is another file
        if (status) status.textContent = "Started.";
        return;
      }
      showErrors(form, kind, body.errors ?? { request: [`The server answered ${response.status}.`] });
      if (status) status.textContent = "";
    } catch {
      showErrors(form, kind, { request: ["Could not reach the server; try again."] });
      if (status) status.textContent = "";
    } finally {
      if (button) button.disabled = false;
    }
  });
}

/** @param {HTMLFormElement} form */
function clearErrors(form) {
  for (const node of form.querySelectorAll("[data-error-for], #form-error")) {
    node.textContent = "";
    node.setAttribute("hidden", "");
  }
  for (const node of form.querySelectorAll(".field--invalid")) node.classList.remove("field--invalid");
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

/** Puts each message next to its field (`kind`, or a param name); others on top. */
function showErrors(/** @type {HTMLFormElement} */ form, /** @type {string} */ kind, /** @type {Object<string, string[]>} */ errors) {
  const general = [];
  for (const [field, messages] of Object.entries(errors)) {
    const name = field === "kind" ? "kind" : `${kind}-${field}`;
    const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
    if (!slot) { general.push(field === "__all__" ? messages.join(" ") : `${field}: ${messages.join(" ")}`); continue; }
    slot.textContent = messages.join(" ");
    slot.removeAttribute("hidden");
    slot.closest(".field")?.classList.add("field--invalid");
    const input = form.elements.namedItem(name);
    if (input instanceof HTMLElement) {
      input.setAttribute("aria-invalid", "true");
      if (slot.id) input.setAttribute("aria-describedby", slot.id);
    }
  }
  const top = form.querySelector("#form-error");
  if (top && general.length) { top.textContent = general.join(" "); top.removeAttribute("hidden"); }
  form.querySelector("[aria-invalid=true]")?.focus();
}

// --- start -----------------------------------------------------------------------

/** @param {string} id @returns {*} the JSON of a json_script element, or null */
function readJson(id) {
  const node = document.getElementById(id);
  return node ? JSON.parse(node.textContent ?? "null") : null;
}

function start() {
  document.documentElement.classList.add("js");
  const form = document.getElementById("job-form");
  if (form instanceof HTMLFormElement) setUpForm(form);
  document.addEventListener("click", (event) => {
    const button = event.target instanceof Element ? event.target.closest("[data-cancel]") : null;
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
  });

  /** @type {Job[]} */
  const initial = detailId ? [readJson("initial-job")].filter(Boolean) : (readJson("initial-jobs") ?? []).slice().reverse();
  // Redraw the server's cards with the live render function (oldest first, so prepend keeps order).
  for (const job of initial) apply(job);
  const allEnded = initial.length > 0 && initial.every((job) => TERMINAL.has(job.state));
  if (transport !== "ws") setConnection(transport === "sse" ? "live (events)" : "polling");
  else if (!(detailId && allEnded)) connectSocket(); // a finished job has nothing more to say
  setInterval(tickElapsed, 1000);
  setInterval(resyncSilent, RESYNC_CHECK_MS);
}

window.jobstream = { render, apply, formatRate, formatEta, ordinal, get transport() { return transport; } };
start();
