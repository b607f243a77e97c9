"""The one path from a process to the channel layer: job frames, a session's end, and the
cancel signal.

Job frames. A frame is encoded once (jobs/serializers.py) and sent to its job's, its
owner's and the staff group. Each process keeps one connection per Redis shard of the
channel layer for its whole life, on which Redis sends no replies (`ShardWriter`). While
Redis takes writes and nothing older waits, the caller's own thread writes the frame: one
`send` of packed PUBLISH commands, nothing to read back. When a write fails, or older
frames still wait, the frame goes to one sender thread per process, which batches what
waits and hands writing back to the callers after its first success. A job waits for
Redis at most PUBLISH_TIMEOUT, once. Publishing never fails a job: the database keeps the
truth and every client heals from a snapshot. With a channel layer other than jobstream's
(core/compat/channels_redis.py), the sender thread sends each frame with `group_send`.

A session's end. A sign-out (notifications/sessions.py) publishes `session.end` to the
session's group like a job frame, through the same writer: its sockets close 4401 and its
event streams end.

The cancel signal. A cancel asked for in a web process reaches the worker running the job
through a Redis pub/sub channel on the channel layer's first host: the web process
publishes on its shard connection, and each worker process listens in one thread, so a
reporter learns of a cancel without asking the database (which it still does at each
persist, in case the signal is lost).

A fork (Celery's prefork pool) gets its own threads and connections on first use.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.sentinel
from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import get_channel_layer
from channels_redis.utils import decode_hosts
from django.conf import settings
from django.utils.module_loading import import_string
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.compat import channels_redis as layer_compat
from jobs.models import Job
from jobs.serializers import job_frame_text, job_payload
from notifications.groups import job_groups, session_group
from notifications.messages import LayerJobMessage, LayerLogMessage, LayerMessage, LayerSessionEndMessage
from notifications.publish_metrics import FRAMES_PUBLISHED, PUBLISHER_BACKLOG

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 1.0  # seconds a write (or its connect) may wait on Redis before it fails and is logged
MAX_BATCH = 500  # frames per write of the sender thread: bounds one Redis write at a few hundred KB
CANCEL_CHANNEL = "jobstream.cancel"  # Redis pub/sub channel of cancel requests: the payload is a job id
LISTENER_READY_TIMEOUT = 2.0  # seconds a job's start waits for the cancel listener to subscribe
RECONNECT_DELAY_MAX = 5.0  # seconds between the cancel listener's attempts to reach Redis again

Batch = list[tuple[list[str], LayerMessage]]


# --- writing to Redis ------------------------------------------------------------------


class ShardWriter:
    """A connection to one shard on which Redis sends no replies (`CLIENT REPLY OFF`,
    sent again on every reconnect): PUBLISH answers only with a count of receivers, which
    a publisher has no use for, and reading it costs a system call and a parse.

    A connection that Redis dropped (a restart) fails on a write; the write is tried once
    more on a new connection. Writes the kernel took before it learnt the connection was
    gone are lost, as anything published while Redis is away is: subscribers heal from
    snapshots when they reconnect."""

    REPLY_OFF = b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n"

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.connection = pool.make_connection()
        self.connection.register_connect_callback(self._replies_off)
        self._connected = False

    def _replies_off(self, connection: Any) -> None:
        connection.send_packed_command([self.REPLY_OFF], check_health=False)

    def send(self, packed: bytes) -> None:
        for attempt in (1, 2):
            try:
                if not self._connected:
                    # connect() first: a write on a connection not yet open connects to
                    # the pool's address without asking a Sentinel which Redis is the
                    # master (redis-py's SentinelManagedConnection overrides connect() only).
                    self.connection.connect()
                    self._connected = True
                self.connection.send_packed_command([packed], check_health=False)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError):
                self.connection.disconnect()
                self._connected = False
                if attempt == 2:
                    raise


def configured_hosts() -> list[dict[str, Any]]:
    """The default channel layer's Redis hosts (one per shard), from settings.CHANNEL_LAYERS."""
    layers: dict[str, Any] = settings.CHANNEL_LAYERS
    config = layers[DEFAULT_CHANNEL_LAYER].get("CONFIG") or {}
    return [dict(host) for host in decode_hosts(config.get("hosts"))]


def blocking_pool(host: dict[str, Any]) -> redis.ConnectionPool:
    """A blocking connection pool for a channel-layer host, as channels-redis builds an
    asyncio one (an address, a Sentinel master, or connection keywords). An operation that
    Redis does not answer within PUBLISH_TIMEOUT fails rather than stalling its thread."""
    host = {"socket_timeout": PUBLISH_TIMEOUT, "socket_connect_timeout": PUBLISH_TIMEOUT, **host}
    if "address" in host:
        return redis.ConnectionPool.from_url(host.pop("address"), **host)
    master_name = host.pop("master_name", None)
    if master_name is not None:
        sentinel = redis.sentinel.Sentinel(host.pop("sentinels"), sentinel_kwargs=host.pop("sentinel_kwargs", None))
        return redis.sentinel.SentinelConnectionPool(master_name, sentinel, **host)
    return redis.ConnectionPool(**host)


def packed_publish(channel: str, data: bytes) -> bytes:
    """`PUBLISH channel data` in Redis's wire protocol (RESP)."""
    name = channel.encode()
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(name), name, len(data), data)


def packed_by_shard(
    layer: layer_compat.JobStreamChannelLayer, batch: Iterable[tuple[list[str], dict[str, Any]]], shards: int
) -> dict[int, bytes]:
    """The PUBLISH commands of a batch, per shard; each message serialized once for all its groups."""
    prefix = layer_compat.layer_prefix(layer)
    commands: dict[int, list[bytes]] = {}
    for groups, message in batch:
        data = layer.serialize(message)
        for group in groups:
            channel = layer_compat.group_channel_name(prefix, group)
            commands.setdefault(layer_compat.shard_index(channel, shards), []).append(packed_publish(channel, data))
    return {index: b"".join(packed) for index, packed in commands.items()}


# --- the publisher ---------------------------------------------------------------------


class Publisher:
    """Per process: job frames written by their callers or the sender thread; cancel
    requests published and heard. It publishes through the default channel layer, or
    through `layer` (tests give one of their own)."""

    def __init__(self, layer: object = None) -> None:
        self._layer = layer
        self._reset()
        # A forked child (Celery's prefork pool) inherits none of the parent's threads or
        # connections, and possibly a lock held by a thread that no longer exists.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._writers: tuple[object, list[ShardWriter]] | None = None  # (the layer, a writer per shard)
        self._cancel_shard: ShardWriter | None = None
        self._outbox: queue.SimpleQueue[tuple[list[str], LayerMessage]] = queue.SimpleQueue()
        self._handed = 0  # frames handed to the sender thread ...
        self._settled = 0  # ... and sent (or given up on) by it
        self._settled_changed = threading.Condition()
        self._direct = True  # callers write their own frames (see send_job_frame)
        self._write_lock = threading.Lock()  # one writer at a time on the shard connections
        self._sender_started = False
        self._cancel_watchers: dict[str, Callable[[], None]] = {}
        self._listener_started = False
        self._listener_ready = threading.Event()
        self._stopping = threading.Event()

    def _channel_layer(self) -> Any:
        return self._layer if self._layer is not None else get_channel_layer()

    def _shard_writers(self, layer: layer_compat.JobStreamChannelLayer) -> list[ShardWriter]:
        """A connection per shard of `layer`, kept while it is the layer (a change of
        CHANNEL_LAYERS makes Channels build a new one)."""
        owned = self._writers
        if owned is None or owned[0] is not layer:
            writers = [ShardWriter(blocking_pool(host)) for host in layer_compat.layer_hosts(layer)]
            owned = self._writers = (layer, writers)
        return owned[1]

    def _cancel_host(self) -> dict[str, Any]:
        """The Redis of the cancel signal: the channel layer's first host."""
        layer = layer_compat.fast_layer(self._channel_layer())
        return layer_compat.layer_hosts(layer)[0] if layer is not None else configured_hosts()[0]

    def _cancel_writer(self) -> ShardWriter:
        if self._cancel_shard is None:
            self._cancel_shard = ShardWriter(blocking_pool(self._cancel_host()))
        return self._cancel_shard

    # --- job frames ------------------------------------------------------------------

    def send_job_frame(self, groups: list[str], message: LayerMessage) -> None:
        """Sends a frame (or a session's end); the frames of one caller leave in the order of its calls.

        A thread wake-up per frame costs more than the write itself, so the caller writes
        it while it can (docs/performance.md, "Long-lived publishers")."""
        if not self._sender_started:
            self._start_sender()
        layer = layer_compat.fast_layer(self._channel_layer())
        if layer is not None and self._direct and self._write_lock.acquire(blocking=False):
            try:
                if self._direct and self._settled == self._handed:  # nothing older left to send first
                    self._write(layer, [(groups, message)])
                    return
            except Exception as exc:
                self._direct = False
                logger.warning("publishing from the job's thread failed (%r): the sender thread takes over", exc)
            finally:
                self._write_lock.release()
        with self._lock:
            self._handed += 1
            self._outbox.put((groups, message))
        PUBLISHER_BACKLOG.inc()

    def _write(
        self, layer: layer_compat.JobStreamChannelLayer, batch: Iterable[tuple[list[str], LayerMessage]]
    ) -> None:
        writers = self._shard_writers(layer)
        frames = ((groups, dict(message)) for groups, message in batch)
        for index, packed in packed_by_shard(layer, frames, len(writers)).items():
            writers[index].send(packed)

    def flush(self, timeout: float = 5.0) -> bool:
        """Waits until every frame handed to the sender thread so far was sent; True if it was."""
        target = self._handed
        with self._settled_changed:
            return self._settled_changed.wait_for(lambda: self._settled >= target, timeout)

    def _start_sender(self) -> None:
        with self._lock:
            if self._sender_started:
                return
            outbox = self._outbox
            threading.Thread(target=self._send_frames, args=(outbox,), name="jobstream-sender", daemon=True).start()
            self._sender_started = True

    def _send_frames(self, outbox: queue.SimpleQueue[tuple[list[str], LayerMessage]]) -> None:
        """The sender thread: takes every frame waiting and sends them in one write.

        A plain thread with blocking writes: in a worker whose job threads report hundreds
        of times a second, each step of an event loop (wake-up, write, every reply) would
        wait for the GIL again. An event loop serves only a layer that is not jobstream's."""
        loop: asyncio.AbstractEventLoop | None = None
        while True:
            batch: Batch = [outbox.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(outbox.get_nowait())
                except queue.Empty:
                    break
            try:
                layer = self._channel_layer()
                fast = layer_compat.fast_layer(layer)
                if fast is not None:
                    with self._write_lock:
                        self._write(fast, batch)
                    self._direct = True  # Redis takes writes: callers write their own again
                else:
                    loop = loop or asyncio.new_event_loop()
                    loop.run_until_complete(_group_send_each(layer, batch))
            except Exception as exc:
                logger.warning("publishing %d frame(s) failed: %r", len(batch), exc)
            with self._settled_changed:
                self._settled += len(batch)
                self._settled_changed.notify_all()
            PUBLISHER_BACKLOG.dec(len(batch))

    # --- the cancel signal ---------------------------------------------------------

    def send_cancel(self, job_id: str) -> None:
        """Tells whichever worker runs the job to stop it (logged, never raised, on failure)."""
        try:
            with self._lock:
                self._cancel_writer().send(packed_publish(CANCEL_CHANNEL, job_id.encode()))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            logger.warning(
                "cancel signal of job %s not sent (%r); its worker sees the cancel at its next persist", job_id, exc
            )

    def watch_cancel(self, job_id: str, on_cancel: Callable[[], None]) -> None:
        """Calls `on_cancel` (from the listener thread) when a cancel for the job arrives."""
        self._cancel_watchers[job_id] = on_cancel
        if not self._listener_started:
            with self._lock:
                if not self._listener_started:
                    ready = self._listener_ready
                    threading.Thread(
                        target=self._listen, args=(ready,), name="jobstream-cancel-listener", daemon=True
                    ).start()
                    self._listener_started = True
        self._listener_ready.wait(timeout=LISTENER_READY_TIMEOUT)  # so a cancel sent right after start is heard

    def unwatch_cancel(self, job_id: str) -> None:
        self._cancel_watchers.pop(job_id, None)

    def close(self) -> None:
        """Stops the cancel listener (a process that is shutting down, or a test session)."""
        self._stopping.set()

    def _listen(self, ready: threading.Event) -> None:
        """The listener thread: one subscription for the process's life, resumed when Redis comes back."""
        pool = blocking_pool({**self._cancel_host(), "socket_timeout": None})
        delay = 0.1
        stopping = self._stopping
        while not stopping.is_set():
            pubsub = redis.Redis(connection_pool=pool).pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CANCEL_CHANNEL)
                ready.set()
                delay = 0.1
                while not stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    data = message["data"]
                    callback = self._cancel_watchers.get(data.decode() if isinstance(data, bytes) else str(data))
                    if callback is not None:
                        callback()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if not stopping.is_set():
                    logger.warning("the cancel listener lost Redis (%r); retrying in %.1f s", exc, delay)
            except Exception:
                logger.exception("the cancel listener failed; retrying in %.1f s", delay)
            finally:
                pubsub.close()
            stopping.wait(delay)
            delay = min(delay * 2, RECONNECT_DELAY_MAX)


async def _group_send_each(layer: Any, batch: Batch) -> None:
    for groups, message in batch:
        for group in groups:
            await layer.group_send(group, dict(message))


publisher = Publisher()


# --- what the services call ------------------------------------------------------------

FrameSender = Callable[[list[str], LayerJobMessage], None]


@functools.cache
def _frame_sender(path: str) -> FrameSender:
    sender: FrameSender = import_string(path)
    return sender


def publish_frame(groups: list[str], job_id: str, seq: int, terminal: bool, text: str) -> None:
    """Sends one frame through the publisher, or through JOBSTREAM_PUBLISHER's callable
    (a dotted path: the benchmarks' baseline publishes the usual way through it)."""
    message: LayerJobMessage = {
        "type": "job.frame",
        "job_id": job_id,
        "seq": seq,
        "terminal": terminal,
        "text": text,
        "published_at": time.time(),  # the daphnes' delivery lag counts from it (notifications/stream_metrics.py)
    }
    FRAMES_PUBLISHED.inc()
    if settings.JOBSTREAM_PUBLISHER:
        _frame_sender(settings.JOBSTREAM_PUBLISHER)(groups, message)
    else:
        publisher.send_job_frame(groups, message)


def publish_log(groups: list[str], job_id: str, *, first: int, last: int, text: str) -> None:
    """Sends a batch of a job's log lines (jobs/log_writer.py) the way its frames go: on the
    same channel as the job's frames, so a batch sent before the job's end arrives before it."""
    message: LayerLogMessage = {"type": "job.log", "job_id": job_id, "first": first, "last": last, "text": text}
    FRAMES_PUBLISHED.inc()
    publisher.send_job_frame(groups, message)


def publish_job_change(job: Job, *, queue_position: int | None = None) -> None:
    """Sends a job's new state to its job group, its owner's group and the staff group."""
    text = job_frame_text(job_payload(job, queue_position=queue_position))
    publish_frame(job_groups(job), str(job.id), job.seq, job.is_terminal, text)


def publish_session_end(session_key: str) -> None:
    """Tells every stream opened with this session that it signed out: its sockets
    close 4401 and its event streams end (notifications/sessions.py calls it)."""
    message: LayerSessionEndMessage = {"type": "session.end"}
    publisher.send_job_frame([session_group(session_key)], message)
