// jobstream's job sockets served by Node.js: the "side-car" alternative of
// bench/alternatives/compare.py. Django keeps the HTTP side; this process holds the
// sockets and forwards what the workers PUBLISH on Redis.
//
//   node server.js            (settings from the environment, below)
//
// PORT            where to listen, on 127.0.0.1 (default 8100)
// DJANGO_URL      the jobstream that owns sessions and jobs (default http://127.0.0.1:8000),
//                 serving bench/alternatives/sidecar_asgi.py (GET /sidecar/owner/)
// REDIS_URL       the channel layer's Redis (one shard; CHANNEL_REDIS_URLS is not followed)
// ALLOWED_ORIGINS comma-separated origins a handshake may come from (default DJANGO_URL)
// LAYER_PREFIX    the channel layer's prefix (default "asgi", channels-redis's)
//
// The same contract as notifications/consumers.py for what the benchmarks use:
// /ws/jobs/<id>/ sends {"type": "job"} at once, then each newer change, and closes 1000
// after the terminal frame; /ws/jobs/ sends {"type": "snapshot"} then every change of the
// owner's jobs. 4401 without a session, 4404 for a job that is not yours, 403 for a
// handshake from another origin, an error frame for anything but a cancel. Log lines,
// quotas and the staff feed are left out: the comparison does not exercise them.
//
// Who the visitor is: asked of Django over HTTP with the client's cookie, once per
// connect, not read from the session table. Reading the session here would mean a
// database driver per SESSION_ENGINE, the SECRET_KEY and Django's signing format in a
// second language; an HTTP call costs one request and stays right whatever Django
// stores. GET /sidecar/owner/ names the owner's groups; the job socket's snapshot is
// the product's GET /api/jobs/<id>/ (its 404 is the owner check), the owner socket's
// GET /api/jobs/.

import http from "node:http";

import { decode } from "@msgpack/msgpack";
import { createClient } from "@redis/client";
import { WebSocketServer } from "ws";

const PORT = Number(process.env.PORT || 8100);
const DJANGO_URL = (process.env.DJANGO_URL || "http://127.0.0.1:8000").replace(/\/$/, "");
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";
const ALLOWED_ORIGINS = new Set(
  (process.env.ALLOWED_ORIGINS || DJANGO_URL).split(",").map((origin) => origin.trim()).filter(Boolean),
);
const LAYER_PREFIX = process.env.LAYER_PREFIX || "asgi";
const SESSION_COOKIE = process.env.SESSION_COOKIE_NAME || "sessionid";

const OWNER_SNAPSHOT_SIZE = 20; // docs/contract.md: at least the owner's last 20 jobs
const MAX_CLIENT_FRAME = 4096; // a client frame over 4 KiB closes 1009, as daphne's limit
const DJANGO_TIMEOUT_MS = 30_000; // one connect's requests to Django; a slow Django fails the handshake's stream with 1011
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const JOB_ID = /^\/ws\/jobs\/([^/]{1,100})\/$/;
const UUID = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

const CLOSE = { normal: 1000, tooBig: 1009, error: 1011, noSession: 4401, notFound: 4404 };

// --- Django ------------------------------------------------------------------------------

// Sockets come by the thousand: requests to Django reuse connections.
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

function djangoGet(path, cookie) {
  return new Promise((resolve, reject) => {
    const request = http.get(
      `${DJANGO_URL}${path}`,
      { agent, headers: { cookie, accept: "application/json" }, timeout: DJANGO_TIMEOUT_MS },
      (response) => {
        const chunks = [];
        response.on("data", (chunk) => chunks.push(chunk));
        response.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          resolve({ status: response.statusCode, body: text ? JSON.parse(text) : null });
        });
        response.on("error", reject);
      },
    );
    request.on("timeout", () => request.destroy(new Error(`Django did not answer ${path} in time`)));
    request.on("error", reject);
  });
}

function djangoPost(path, cookie) {
  const csrf = /(?:^|;\s*)csrftoken=([^;]+)/.exec(cookie)?.[1] || "";
  return new Promise((resolve, reject) => {
    const request = http.request(
      `${DJANGO_URL}${path}`,
      {
        method: "POST",
        agent,
        headers: { cookie, "x-csrftoken": csrf, "content-type": "application/json", "content-length": 2 },
        timeout: DJANGO_TIMEOUT_MS,
      },
      (response) => {
        const chunks = [];
        response.on("data", (chunk) => chunks.push(chunk));
        response.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let body = null;
          try {
            body = text ? JSON.parse(text) : null;
          } catch {
            body = null;
          }
          resolve({ status: response.statusCode, body });
        });
      },
    );
    request.on("timeout", () => request.destroy(new Error(`Django did not answer ${path} in time`)));
    request.on("error", reject);
    request.end("{}");
  });
}

// --- Redis: one subscription per group for the whole process -------------------------------

const subscriber = createClient({ url: REDIS_URL });
subscriber.on("error", (error) => console.error(`redis: ${error.message}`));
const members = new Map(); // Redis channel -> Set of streams
const subscribing = new Map(); // Redis channel -> Promise of its SUBSCRIBE

function groupChannel(group) {
  return `${LAYER_PREFIX}__group__${group}`; // core/compat/channels_redis.py group_channel_name
}

function jobGroup(jobId) {
  return `job.${jobId.replace(/-/g, "").toLowerCase()}`; // notifications/groups.py job_group
}

function onMessage(data, channel) {
  const streams = members.get(channel.toString());
  if (!streams || streams.size === 0) return;
  let message;
  try {
    message = decode(data); // once per message, for every member (channels-redis's msgpack)
  } catch (error) {
    console.error(`undecodable message on ${channel}: ${error.message}`);
    return;
  }
  for (const stream of streams) stream.take(message);
}

async function join(group, stream) {
  const channel = groupChannel(group);
  let streams = members.get(channel);
  if (!streams) {
    streams = new Set();
    members.set(channel, streams);
  }
  streams.add(stream);
  if (!subscribing.has(channel)) subscribing.set(channel, subscriber.subscribe(channel, onMessage, true));
  await subscribing.get(channel); // a frame published from now on reaches the stream
}

function leave(group, stream) {
  const channel = groupChannel(group);
  const streams = members.get(channel);
  if (!streams) return;
  streams.delete(stream);
  if (streams.size > 0) return;
  members.delete(channel);
  const pending = subscribing.get(channel);
  subscribing.delete(channel);
  Promise.resolve(pending)
    .then(() => (members.has(channel) ? null : subscriber.unsubscribe(channel, onMessage, true)))
    .catch((error) => console.error(`unsubscribe ${channel}: ${error.message}`));
}

// --- one socket ------------------------------------------------------------------------------

class Stream {
  constructor(socket, cookie, jobId) {
    this.socket = socket;
    this.cookie = cookie;
    this.jobId = jobId; // null on the owner socket
    this.groups = [];
    this.lastSeq = new Map(); // job id -> highest seq shown
    this.closed = false;
  }

  async open() {
    if (!new RegExp(`(?:^|;\\s*)${SESSION_COOKIE}=`).test(this.cookie)) return this.close(CLOSE.noSession);
    const owner = await djangoGet("/sidecar/owner/", this.cookie);
    if (owner.status !== 200) return this.close(CLOSE.noSession);
    if (this.jobId !== null && !UUID.test(this.jobId)) return this.close(CLOSE.notFound);
    // Groups joined before the snapshot is read, so no change falls in between.
    const groups = [owner.body.session_group, this.jobId === null ? owner.body.owner_group : jobGroup(this.jobId)];
    for (const group of groups) {
      if (this.closed) return;
      this.groups.push(group);
      await join(group, this);
    }
    if (this.jobId === null) {
      const list = await djangoGet(`/api/jobs/?page_size=${OWNER_SNAPSHOT_SIZE}`, this.cookie);
      if (list.status !== 200) return this.close(CLOSE.error);
      for (const job of list.body.results) this.shown(job);
      this.send(JSON.stringify({ type: "snapshot", jobs: list.body.results }));
      return;
    }
    const job = await djangoGet(`/api/jobs/${this.jobId}/`, this.cookie);
    if (job.status === 404) return this.close(CLOSE.notFound);
    if (job.status !== 200) return this.close(CLOSE.error);
    this.shown(job.body);
    this.send(JSON.stringify({ type: "job", job: job.body }));
    if (TERMINAL.has(job.body.state)) this.close(CLOSE.normal);
  }

  shown(job) {
    this.lastSeq.set(job.id, Math.max(job.seq, this.lastSeq.get(job.id) ?? -1));
  }

  take(message) {
    if (this.closed) return;
    if (message.type === "session.end") return this.close(CLOSE.noSession);
    if (message.type !== "job.frame") return; // job.log: not shown by this side-car
    const jobId = message.job_id;
    if ((this.lastSeq.get(jobId) ?? -1) >= message.seq) return; // already shown (the snapshot was newer)
    this.lastSeq.set(jobId, message.seq);
    this.send(message.text); // the frame as the publisher encoded it, as daphne sends it
    if (message.terminal && this.jobId !== null) this.close(CLOSE.normal);
  }

  send(text) {
    if (!this.closed) this.socket.send(text);
  }

  error(text) {
    this.send(JSON.stringify({ type: "error", error: text }));
  }

  async receive(data, isBinary) {
    if (data.length > MAX_CLIENT_FRAME) return this.close(CLOSE.tooBig);
    if (isBinary) return this.error("Binary frames are not supported; send JSON text.");
    let frame;
    try {
      frame = JSON.parse(data.toString("utf8"));
    } catch {
      return this.error("Malformed JSON.");
    }
    if (frame === null || typeof frame !== "object" || frame.type !== "cancel") {
      const kind = frame !== null && typeof frame === "object" ? frame.type : undefined;
      return this.error(`Unknown frame type ${JSON.stringify(kind ?? null)}; the only client frame is cancel.`);
    }
    const target = this.jobId ?? frame.id;
    if (typeof target !== "string" || !UUID.test(target)) return this.error("No job with this id.");
    const answer = await djangoPost(`/api/jobs/${target}/cancel/`, this.cookie);
    if (answer.status === 404) this.error("No job with this id.");
    else if (answer.status === 409) this.error(answer.body?.errors ? "The job has already finished." : "Conflict.");
  }

  close(code) {
    if (this.closed) return;
    this.closed = true;
    this.socket.close(code);
    this.release();
  }

  release() {
    this.closed = true;
    for (const group of this.groups) leave(group, this);
    this.groups = [];
  }
}

// --- the server ------------------------------------------------------------------------------

const sockets = new WebSocketServer({ noServer: true, maxPayload: MAX_CLIENT_FRAME + 1024, perMessageDeflate: false });

const server = http.createServer((request, response) => {
  if (request.url === "/healthz") {
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify({ sockets: sockets.clients.size, channels: members.size }));
    return;
  }
  response.writeHead(404, { "content-type": "application/json" });
  response.end(JSON.stringify({ errors: { path: [`No route ${request.url}.`] } }));
});

server.on("upgrade", (request, socket, head) => {
  const origin = request.headers.origin;
  if (!origin || !ALLOWED_ORIGINS.has(origin)) {
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    return;
  }
  const path = (request.url || "").split("?")[0];
  const match = JOB_ID.exec(path);
  const jobId = match ? match[1] : path === "/ws/jobs/" ? null : undefined;
  sockets.handleUpgrade(request, socket, head, (ws) => {
    // Accepted first, as daphne's consumer does: a close before accept reaches a browser with no code.
    if (jobId === undefined) {
      ws.close(CLOSE.notFound);
      return;
    }
    const stream = new Stream(ws, request.headers.cookie || "", jobId);
    ws.on("message", (data, isBinary) =>
      stream.receive(data, isBinary).catch((error) => console.error(`client frame: ${error.message}`)),
    );
    ws.on("close", () => stream.release());
    ws.on("error", () => stream.release());
    stream.open().catch((error) => {
      console.error(`connect ${path}: ${error.message}`);
      stream.close(CLOSE.error);
    });
  });
});

await subscriber.connect();
server.listen(PORT, "127.0.0.1", () => console.log(`side-car listening on 127.0.0.1:${PORT}`));

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    for (const ws of sockets.clients) ws.terminate();
    server.close();
    subscriber.quit().finally(() => process.exit(0));
  });
}
