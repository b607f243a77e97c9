/**
 * What the transports take from the browser, handed in rather than reached for, so
 * that tests can drive them with fakes (a WebSocket that never opens, a clock that
 * moves when told).
 *
 * @typedef {object} Runtime
 * @property {typeof WebSocket|undefined} WebSocket
 * @property {typeof EventSource|undefined} EventSource
 * @property {typeof fetch} fetch
 * @property {(callback: () => void, ms: number) => number} setTimeout
 * @property {(timer: number) => void} clearTimeout
 * @property {() => number} random in [0, 1): the backoff's jitter
 * @property {{protocol: string, host: string, search: string}} location
 * @property {(...args: *[]) => void} warn
 */

/**
 * The browser's own, looked up when called (a test page may have wrapped WebSocket
 * before the module runs).
 * @returns {Runtime}
 */
export function browserRuntime() {
  return {
    WebSocket: globalThis.WebSocket,
    EventSource: globalThis.EventSource,
    fetch: (input, init) => globalThis.fetch(input, init),
    setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
    clearTimeout: (timer) => globalThis.clearTimeout(timer),
    random: Math.random,
    location: globalThis.location,
    warn: (...args) => console.warn(...args),
  };
}

/** @param {Runtime["location"]} location @param {string} path @returns {string} the WebSocket URL of a path on this site */
export function socketUrl(location, path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}
