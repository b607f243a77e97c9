/**
 * The client side of the `seq` rule: a job's `seq` strictly increases with every
 * change, so a frame whose `seq` is not above the one shown is old news (a late SSE
 * event, a poll answer overtaken by a socket frame, a re-read racing a frame) and is
 * dropped. Each job is filtered on its own.
 */

/** @typedef {import("./job.js").Job} Job */

export class SeqFilter {
  /** @type {Map<string, Job>} the last job shown per id (its seq is the highest shown) */
  #shown = new Map();

  /**
   * Keeps `job` as the one shown when its seq is above the one shown for its id.
   * @param {Job} job @returns {boolean} whether it is newer (and should be drawn)
   */
  admit(job) {
    const before = this.#shown.get(job.id);
    if (before && job.seq <= before.seq) return false;
    this.#shown.set(job.id, job);
    return true;
  }

  /** @param {string} id @returns {Job|undefined} */
  shown(id) {
    return this.#shown.get(id);
  }

  /** @param {string} id */
  has(id) {
    return this.#shown.has(id);
  }

  /** @returns {Job[]} every job shown */
  all() {
    return [...this.#shown.values()];
  }

  /** Forgets a job: the next frame of it is shown whatever its seq. @param {string} id */
  forget(id) {
    this.#shown.delete(id);
  }

  clear() {
    this.#shown.clear();
  }
}
