// Job JSON as the server sends it (the contract's "Job state"), for the tests to vary.

/** @returns {import("../../jobs/static/jobs/job.js").Job} */
export function makeJob(overrides = {}) {
  return {
    id: "7b9c0d1e-0000-4000-8000-000000000001",
    kind: "primes",
    params: { limit: 2000000 },
    state: "queued",
    seq: 1,
    progress: null,
    result: null,
    result_url: null,
    error: null,
    queue_position: null,
    created_at: "2026-11-25T12:00:00Z",
    started_at: null,
    finished_at: null,
    updated_at: "2026-11-25T12:00:00.000000Z",
    url: "/jobs/7b9c0d1e-0000-4000-8000-000000000001/",
    ...overrides,
  };
}

/** A progress object with all six keys, as after the first report. */
export function makeProgress(overrides = {}) {
  return { current: 340, total: 1000, percent: 34.0, message: "checked 340,000 numbers", rate: 120.5, eta_seconds: 5.5, ...overrides };
}
