/**
 * How long a client waits before it tries again (a socket reconnect, a failed poll):
 * exponential, capped, with jitter, so that a thousand pages cut off by one restart do
 * not all come back in the same instant.
 */

export const BACKOFF_BASE_MS = 500; // the first retry: soon, a blip is the common case
export const BACKOFF_MAX_MS = 15000; // the cap: a page never waits longer than this to try again

/**
 * The wait before retry number `attempt` (0 for the first): a ceiling of base × 2^attempt,
 * capped, and a random point in its upper half (jitter on half keeps the growth).
 * @param {number} attempt @param {() => number} [random] in [0, 1), injectable for tests
 * @returns {number} ms
 */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return ceiling / 2 + random() * (ceiling / 2);
}
