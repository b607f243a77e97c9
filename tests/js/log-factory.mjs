// Log lines and batches as the server sends them (the contract's "Job logs").

/** @returns {import("../../jobs/static/jobs/log-lines.js").LogLine} */
export function makeLine(n, overrides = {}) {
  return { n, t: `2026-11-25T12:00:${String(n % 60).padStart(2, "0")}.000000Z`, level: "info", text: `line ${n}`, ...overrides };
}

/** Lines from..to, both included. */
export function lineRange(from, to, overrides = {}) {
  return Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => makeLine(from + i, overrides));
}

/** A `log` frame's body: lines from..to of a log with `total` lines written, `dropped` not kept. */
export function makeBatch(from, to, { total = to, dropped = 0 } = {}) {
  return { lines: lineRange(from, to), total, dropped };
}
