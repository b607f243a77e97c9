/**
 * A WebSocket that opens again after it closes, with backoff and jitter, until the
 * caller calls a close final. The job pages' socket and the staff view's both use it.
 */

import { backoffDelay } from "./backoff.js";

/** @typedef {import("./runtime.js").Runtime} Runtime */

/**
 * @typedef {object} SocketHandlers
 * @property {() => void} [onOpen]
 * @property {(frame: *) => void} onFrame each text frame, parsed as JSON (others are dropped)
 * @property {(event: CloseEvent, opened: boolean) => boolean|Promise<boolean>} onClose
 *   whether to open again; `opened` tells a socket that never opened from one that closed
 * @property {(error: *) => void} [onCannotConstruct] the browser refused to build a WebSocket at all
 */

/**
 * Opens `url` now, and again after every close its handler does not call final. The
 * backoff starts over once a frame arrives: a socket that opens and is closed at once
 * (a refusal after accept) keeps backing off.
 * @param {string|(() => string)} url a function is asked at every open (a resume point in the query)
 * @param {SocketHandlers} handlers @param {Runtime} runtime
 * @returns {{send(data: string): boolean, stop(): void}} send: whether the socket was open to take it
 */
export function keepSocketOpen(url, handlers, runtime) {
  /** @type {WebSocket|null} */
  let socket = null;
  let attempt = 0;
  let stopped = false;
  let timer = 0;

  const open = () => {
    if (stopped) return;
    let opened = false;
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new /** @type {typeof WebSocket} */ (runtime.WebSocket)(typeof url === "function" ? url() : url);
    } catch (error) {
      handlers.onCannotConstruct?.(error);
      return;
    }
    socket = ws;
    ws.addEventListener("open", () => { opened = true; handlers.onOpen?.(); });
    ws.addEventListener("message", (event) => {
      attempt = 0;
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      handlers.onFrame(frame);
    });
    ws.addEventListener("close", async (event) => {
      if (socket === ws) socket = null;
      if (stopped) return;
      const again = await handlers.onClose(event, opened);
      if (again && !stopped) timer = runtime.setTimeout(open, backoffDelay(attempt++, runtime.random));
    });
  };
  open();

  return {
    send(data) {
      if (!socket || socket.readyState !== /** @type {typeof WebSocket} */ (runtime.WebSocket).OPEN) return false;
      socket.send(data);
      return true;
    },
    stop() {
      stopped = true;
      runtime.clearTimeout(timer);
      socket?.close();
      socket = null;
    },
  };
}
