"""A job's event stream served the WSGI way: the request's thread (or greenlet) is held
for the stream's whole life, as a sync Django SSE view holds it.

For bench/alternatives/compare.py, served by gunicorn `gthread` and by uWSGI (gevent):

- `GET /sse/jobs/<id>/`: `text/event-stream`, the same events as the product's
  `/api/jobs/<id>/events/` (`id: <seq>`, `event: job`, `data: <job>`), ending after the
  terminal state. The owner check and the first event are the product's own
  `GET /api/jobs/<id>/` (Django's WSGI application, called in process with the request's
  cookies), read after the stream joined the job's channel, so no change falls between.
- `GET /sse/active`: `{"active": N}`, the streams being served now.
- anything else: Django's WSGI application (core.wsgi), so sessions and jobs can be made here too.

The job's frames come from the Redis channel the workers PUBLISH on
(core/compat/channels_redis.py's names and encoding), through one subscription per job
for the whole process (`Subscriber`, one thread) that hands each stream its events in a
queue: the fairest a thread-per-request server can do, one Redis connection, not one per stream.
Log lines, `Last-Event-ID` and quotas are left out: the comparison does not exercise them.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from channels.layers import get_channel_layer

from core.compat import channels_redis as layer_compat
from core.wsgi import application as django_application
from jobs.serializers import payload_text
from notifications.groups import job_group

logger = logging.getLogger(__name__)

# Subscribed at start: redis-py's get_message reads nothing until the connection has a subscription.
IDLE_CHANNEL = "jobstream.alternatives.idle"
KEEPALIVE_SECONDS = 15.0  # a comment line this often, as the product's stream sends (notifications/sse.py)
STREAM_PATH = re.compile(r"^/sse/jobs/(?P<job_id>[0-9a-fA-F-]{32,36})/$")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

StartResponse = Callable[..., Any]
Event = tuple[int, bool, bytes]  # (seq, terminal, the event's bytes)


def _event(seq: int, job_json: str) -> bytes:
    return f"id: {seq}\nevent: job\ndata: {job_json}\n\n".encode()


# --- Redis ---------------------------------------------------------------------------------


class Subscriber:
    """One pub/sub connection for the process; each Redis channel fans out to its streams' queues."""

    def __init__(self) -> None:
        layer = get_channel_layer()
        host = layer_compat.layer_hosts(layer)[0]  # one shard: the benchmarks' Redis
        self.layer = layer
        self.prefix = layer_compat.layer_prefix(layer)
        self.client = redis.Redis.from_url(host["address"]) if "address" in host else redis.Redis(**host)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.lock = threading.Lock()
        self.members: dict[str, set[queue.SimpleQueue[Event]]] = {}
        self.pubsub.subscribe(IDLE_CHANNEL)
        threading.Thread(target=self._run, name="sse-subscriber", daemon=True).start()

    def channel(self, job_id: str) -> str:
        return layer_compat.group_channel_name(self.prefix, job_group(job_id))

    def join(self, channel: str, inbox: queue.SimpleQueue[Event]) -> None:
        with self.lock:
            members = self.members.setdefault(channel, set())
            members.add(inbox)
            if len(members) == 1:
                self.pubsub.subscribe(channel)

    def leave(self, channel: str, inbox: queue.SimpleQueue[Event]) -> None:
        with self.lock:
            members = self.members.get(channel)
            if members is None:
                return
            members.discard(inbox)
            if not members:
                del self.members[channel]
                self.pubsub.unsubscribe(channel)

    def _run(self) -> None:
        while True:
            try:
                message = self.pubsub.get_message(timeout=1.0)
            except Exception:
                logger.exception("the stream subscriber lost Redis")
                continue
            if message is None or message["type"] != "message":
                continue
            channel = message["channel"].decode()
            decoded = self.layer.deserialize(message["data"])  # once, for every stream of the job
            if decoded.get("type") != "job.frame":
                continue
            job = json.loads(decoded["text"])["job"]
            event: Event = (decoded["seq"], decoded["terminal"], _event(decoded["seq"], payload_text(job)))
            with self.lock:
                inboxes = list(self.members.get(channel, ()))
            for inbox in inboxes:
                inbox.put(event)


_subscriber: Subscriber | None = None
_subscriber_lock = threading.Lock()
_active = 0


def subscriber() -> Subscriber:
    global _subscriber
    with _subscriber_lock:
        if _subscriber is None:
            _subscriber = Subscriber()
        return _subscriber


# --- the stream ------------------------------------------------------------------------------


def _django_get(environ: dict[str, Any], path: str) -> tuple[str, bytes]:
    """GET `path` from Django in this thread, with the request's headers (its cookies)."""
    inner = {**environ, "PATH_INFO": path, "QUERY_STRING": "", "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    inner["HTTP_ACCEPT"] = "application/json"
    status: list[str] = []

    def start(line: str, headers: list[tuple[str, str]], exc_info: Any = None, /) -> Callable[[bytes], object]:
        status.append(line)
        return lambda data: None

    body = django_application(inner, start)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return status[0], data


def _stream(environ: dict[str, Any], job_id: str, start_response: StartResponse) -> Iterable[bytes]:
    source = subscriber()
    channel = source.channel(job_id)
    inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
    source.join(channel, inbox)  # before the read: no change falls in between
    try:
        status, body = _django_get(environ, f"/api/jobs/{job_id}/")
    except BaseException:
        source.leave(channel, inbox)
        raise
    if not status.startswith("200"):
        source.leave(channel, inbox)
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    job = json.loads(body)
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
    return _events(source, channel, inbox, job)


def _events(source: Subscriber, channel: str, inbox: queue.SimpleQueue[Event], job: dict[str, Any]) -> Iterator[bytes]:
    global _active
    with _subscriber_lock:
        _active += 1
    try:
        shown = int(job["seq"])
        yield _event(shown, payload_text(job))  # type: ignore[arg-type]
        if job["state"] in TERMINAL:
            return
        while True:
            try:
                seq, terminal, event = inbox.get(timeout=KEEPALIVE_SECONDS)
            except queue.Empty:
                yield b": keep-alive\n\n"
                continue
            if seq <= shown:
                continue
            shown = seq
            yield event
            if terminal:
                return
    finally:  # also on a closed client: the server closes the iterator when a write fails
        source.leave(channel, inbox)
        with _subscriber_lock:
            _active -= 1


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/sse/active":
        return _json(start_response, "200 OK", {"active": _active})
    match = STREAM_PATH.match(path)
    if match is not None and environ.get("REQUEST_METHOD") == "GET":
        return _stream(environ, match["job_id"], start_response)
    result: Iterable[bytes] = django_application(environ, start_response)
    return result
