// Fakes of what the transports take from the browser (see jobs/static/jobs/runtime.js):
// a WebSocket and an EventSource the test opens, feeds and closes by hand, a fetch
// answered by a function of the test, and a clock that only moves when told.

/** Lets pending promise callbacks (an awaited re-read, a fetch) run. */
export async function settle() {
  for (let i = 0; i < 5; i += 1) await new Promise((resolve) => setImmediate(resolve));
}

class Listeners {
  constructor() { this.listeners = new Map(); }
  addEventListener(type, listener) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(listener);
  }
  dispatch(type, event) {
    for (const listener of this.listeners.get(type) ?? []) listener(event);
  }
}

export class FakeClock {
  constructor() {
    this.now = 0;
    this.nextId = 1;
    /** @type {Map<number, {at: number, ms: number, callback: () => void}>} */
    this.timers = new Map();
  }
  setTimeout = (callback, ms) => {
    const id = this.nextId++;
    this.timers.set(id, { at: this.now + ms, ms, callback });
    return id;
  };
  clearTimeout = (id) => {
    this.timers.delete(id);
  };
  /** The delays of the timers waiting now, soonest first. */
  pendingDelays() {
    return [...this.timers.values()].sort((a, b) => a.at - b.at).map((timer) => timer.ms);
  }
  /** Runs the soonest timer (moving the clock to it); returns its delay. */
  runNext() {
    const [id, timer] = [...this.timers.entries()].sort((a, b) => a[1].at - b[1].at)[0] ?? [];
    if (id === undefined) throw new Error("no timer waiting");
    this.timers.delete(id);
    this.now = timer.at;
    timer.callback();
    return timer.ms;
  }
}

/**
 * A runtime of fakes. `answer(url, init)` gives fetch's answer: `{status, body}`, or
 * throws for a network error.
 */
export function fakeRuntime({ search = "", answer = () => { throw new TypeError("network down"); }, random = () => 0.5 } = {}) {
  const clock = new FakeClock();
  const sockets = [];
  const sources = [];
  const fetched = [];
  const warnings = [];

  class FakeWebSocket extends Listeners {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;
    constructor(url) {
      super();
      this.url = url;
      this.readyState = FakeWebSocket.CONNECTING;
      this.sent = [];
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== FakeWebSocket.OPEN) throw new Error("InvalidStateError: not open");
      this.sent.push(JSON.parse(data));
    }
    close() {
      if (this.readyState === FakeWebSocket.CLOSED) return;
      this.serverClose(1005);
    }
    // --- what the test does as the server or the network ---
    serverOpen() {
      this.readyState = FakeWebSocket.OPEN;
      this.dispatch("open", {});
    }
    serverSend(frame) {
      this.dispatch("message", { data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }
    serverClose(code) {
      this.readyState = FakeWebSocket.CLOSED;
      this.dispatch("close", { code });
    }
    /** The handshake fails: the browser reports a close (1006) without an open. */
    refuse() {
      this.serverClose(1006);
    }
  }

  class FakeEventSource extends Listeners {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSED = 2;
    constructor(url) {
      super();
      this.url = url;
      this.readyState = FakeEventSource.CONNECTING;
      this.closed = false;
      sources.push(this);
    }
    close() {
      this.closed = true;
      this.readyState = FakeEventSource.CLOSED;
    }
    serverEvent(job) {
      this.readyState = FakeEventSource.OPEN;
      this.dispatch("job", { data: JSON.stringify(job) });
    }
    /** An `event: log` with `data: {"lines", "total", "dropped"}`. */
    serverLog(batch) {
      this.readyState = FakeEventSource.OPEN;
      this.dispatch("log", { data: typeof batch === "string" ? batch : JSON.stringify(batch) });
    }
    /** An error the browser will retry after (readyState CONNECTING). */
    serverError({ final = false } = {}) {
      this.readyState = final ? FakeEventSource.CLOSED : FakeEventSource.CONNECTING;
      this.dispatch("error", {});
    }
  }

  const runtime = {
    WebSocket: FakeWebSocket,
    EventSource: FakeEventSource,
    fetch: async (url, init) => {
      fetched.push(url);
      const { status, body } = answer(url, init);
      return { status, ok: status >= 200 && status < 300, json: async () => body };
    },
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random,
    location: { protocol: "http:", host: "jobs.example", search },
    warn: (...args) => warnings.push(args),
  };
  return { runtime, clock, sockets, sources, fetched, warnings };
}
