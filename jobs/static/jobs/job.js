/**
 * The job JSON every API body and stream frame carries (docs: "Job state"), and the
 * facts the pages derive from it. This is the browser's one declaration of its keys.
 * `error_detail` comes only to users who may see every job (the traceback).
 *
 * @typedef {{current: number|null, total: number|null, percent: number|null,
 *            message: string, rate: number|null, eta_seconds: number|null}} Progress
 */

/**
 * @typedef {{id: string, kind: string, params: Object<string, *>, state: string,
 *            seq: number, progress: Progress|null, result: *, result_url: string|null,
 *            error: string|null, error_detail: string|undefined, queue_position: number|null,
 *            created_at: string, started_at: string|null, finished_at: string|null,
 *            updated_at: string, url: string}} Job
 */

/** States after which nothing about a job changes. */
export const TERMINAL_STATES = new Set(["succeeded", "failed", "cancelled"]);

/** @param {string} state */
export function isTerminal(state) {
  return TERMINAL_STATES.has(state);
}

/**
 * The percent a bar shows, from the server's `progress.percent` (the one truth; the
 * server rounds and clamps it), or null for an indeterminate bar (running, amount of
 * work unknown). Before the first report it is 0; a succeeded job is at 100.
 * @param {Job} job @returns {number|null}
 */
export function jobPercent(job) {
  if (job.state === "succeeded") return 100;
  const p = job.progress;
  if (job.state === "running" && p && p.total === null) return null;
  return p && p.percent !== null ? Math.min(100, Math.max(0, p.percent)) : 0;
}

/**
 * Seconds since the job started, up to its end when it has ended; null before it starts.
 * @param {Job} job @param {number} [now] ms since the epoch
 */
export function elapsedSeconds(job, now = Date.now()) {
  if (!job.started_at) return null;
  const end = job.finished_at ? Date.parse(job.finished_at) : now;
  return Math.max(0, (end - Date.parse(job.started_at)) / 1000);
}

/**
 * Where "Edit and run" goes: the form on `/`, filled in by the server with the job's kind
 * and parameters (a file cannot be, so it is chosen again).
 * @param {string} id @returns {string}
 */
export function editUrl(id) {
  return `/?edit=${encodeURIComponent(id)}#job-form`;
}

/** The API path that runs a job again. @param {string} id @returns {string} */
export function retryUrl(id) {
  return `/api/jobs/${encodeURIComponent(id)}/retry/`;
}
