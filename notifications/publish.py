"""Publishing job changes to the channel layer: the one sync → async crossing.

The usual pattern, `async_to_sync(channel_layer.group_send)(...)` on every update,
starts a thread, an event loop and a Redis connection per call (3-5 ms of CPU), so a
worker process tops out near 200 updates a second. Here each process keeps its
connections for its whole life: a frame is packed once and written by the job's own
thread on a connection whose replies are off (nothing to wait for), or, when Redis
does not take writes or older frames still wait, handed to one sender thread that
batches them. A job waits for Redis only until a write fails (PUBLISH_TIMEOUT in
notifications/layers.py), once. A fork (Celery's prefork pool) gets its own sender
and connections on first use.

An event loop in a daemon thread listens for cancel requests aimed at jobs running in
this process, so a reporter learns of a cancel without asking the database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from jobs.models import Job
from notifications.events import LayerJobMessage, job_frame_text, job_payload, progress_payload, timestamp
from notifications.groups import job_group, owner_group, staff_group
from notifications.layers import JobStreamChannelLayer

logger = logging.getLogger(__name__)

CANCEL_CHANNEL = "jobstream.cancel"  # Redis pub/sub channel: payload is a job id
RECONNECT_DELAY_MAX = 5.0  # seconds between attempts to re-subscribe after Redis went away
MAX_BATCH = 500  # frames per pipelined round trip: bounds one Redis write at a few hundred KB


class Publisher:
    """Per process: frames written by their callers or a sender thread, and an event
    loop that hears cancels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._cancel_watchers: dict[str, Callable[[], None]] = {}
        self._cancel_listener: concurrent.futures.Future[Any] | None = None
        self._listener_ready = threading.Event()
        self._sender_pid: int | None = None
        self._outbox: queue.SimpleQueue[tuple[list[str], LayerJobMessage]] = queue.SimpleQueue()
        self._handed = 0  # frames handed to the sender thread ...
        self._settled = 0  # ... and sent (or given up on) by it
        self._direct = True  # callers write their own frames (see send_job_frame)
        self._write_lock = threading.Lock()  # one writer at a time on the layer's connections
        self._settled_changed = threading.Condition()

    # --- the loop ----------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        pid = os.getpid()
        if self._loop is not None and self._pid == pid:
            return self._loop
        with self._lock:
            if self._loop is None or self._pid != pid:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="jobstream-publisher", daemon=True)
                thread.start()
                self._loop, self._pid = loop, pid
                self._pending = set()
                self._cancel_listener = None
                self._listener_ready = threading.Event()
            return self._loop

    def _submit(self, coro: Coroutine[Any, Any, Any], what: str) -> concurrent.futures.Future[Any]:
        future = asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())
        self._pending.add(future)

        def done(f: concurrent.futures.Future[Any]) -> None:
            self._pending.discard(f)
            if not f.cancelled() and f.exception() is not None:
                # Publishing never fails a job: the database keeps the truth and every
                # client heals from a snapshot.
                logger.warning("publishing %s failed: %r", what, f.exception())

        future.add_done_callback(done)
        return future

    def flush(self, timeout: float = 5.0) -> bool:
        """Waits until everything handed over so far has been sent; True if it was."""
        deadline = time.monotonic() + timeout
        target = self._handed
        with self._settled_changed:
            frames_sent = self._settled_changed.wait_for(lambda: self._settled >= target, timeout)
        pending = list(self._pending)
        if pending:
            _, not_done = concurrent.futures.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
            return frames_sent and not not_done
        return frames_sent

    # --- job frames --------------------------------------------------------------

    def send_job_frame(self, groups: list[str], message: LayerJobMessage) -> None:
        """Sends a frame; frames of one caller leave in the order of its calls.

        While Redis takes writes and nothing waits for the sender thread, the caller's
        own thread writes the frame (one `send` on a connection whose replies are off:
        no reply to wait for). Otherwise, or when that write fails, the frame goes to
        the sender thread, which never holds up the job: it batches what waits, and
        its first success hands writing back to the callers. Handing every frame to a
        thread cost a thread wake-up per frame: in a worker whose 100 job threads report
        10 times a second, 15-20 % of its CPU and 0.2 ms of each frame's latency."""
        if self._sender_pid != os.getpid():
            self._start_sender()
        layer = get_channel_layer()
        if isinstance(layer, JobStreamChannelLayer) and self._direct and self._write_lock.acquire(blocking=False):
            try:
                if self._direct and self._settled == self._handed:  # nothing older left to send first
                    layer.publish_group_messages_blocking([(groups, dict(message))])
                    return
            except Exception as exc:
                self._direct = False
                logger.warning("publishing from the job's thread failed (%r): the sender thread takes over", exc)
            finally:
                self._write_lock.release()
        with self._lock:
            self._handed += 1
            self._outbox.put((groups, message))

    def _start_sender(self) -> None:
        with self._lock:
            if self._sender_pid == os.getpid():
                return
            # A fork (Celery's prefork pool) starts its own sender; what the parent had
            # waiting is the parent's.
            self._outbox = queue.SimpleQueue()
            self._handed = self._settled = 0
            self._direct = True
            self._write_lock = threading.Lock()
            self._settled_changed = threading.Condition()
            threading.Thread(
                target=self._send_frames, args=(self._outbox,), name="jobstream-sender", daemon=True
            ).start()
            self._sender_pid = os.getpid()

    def _send_frames(self, outbox: queue.SimpleQueue[tuple[list[str], LayerJobMessage]]) -> None:
        """The sender thread: takes every frame waiting and sends them in one write.

        A plain thread with blocking writes, not a coroutine on the event loop: in a
        worker whose job threads report hundreds of times a second, each step of an
        event loop (wake-up, write, every reply) waits for the GIL again."""
        while True:
            batch = [outbox.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(outbox.get_nowait())
                except queue.Empty:
                    break
            try:
                with self._write_lock:
                    self._send_batch(batch)
                self._direct = True  # Redis takes writes: callers write their own again
            except Exception as exc:
                # Publishing never fails a job: the database keeps the truth and every
                # client heals from a snapshot.
                logger.warning("publishing %d frame(s) failed: %r", len(batch), exc)
            with self._settled_changed:
                self._settled += len(batch)
                self._settled_changed.notify_all()

    def _send_batch(self, batch: list[tuple[list[str], LayerJobMessage]]) -> None:
        layer = get_channel_layer()
        assert layer is not None, "CHANNEL_LAYERS must define a default layer"
        if isinstance(layer, JobStreamChannelLayer):
            layer.publish_group_messages_blocking([(groups, dict(message)) for groups, message in batch])
            return
        # Another layer: one group_send at a time, in order, on the event loop.
        asyncio.run_coroutine_threadsafe(_group_send_each(layer, batch), self._ensure_loop()).result()

    # --- cancel requests -----------------------------------------------------------

    def send_cancel(self, job_id: str) -> None:
        self._submit(self._publish_cancel(job_id), f"cancel of job {job_id}")

    @staticmethod
    async def _publish_cancel(job_id: str) -> None:
        client = _redis_client()
        try:
            await client.publish(CANCEL_CHANNEL, job_id)
        finally:
            await client.aclose()

    def watch_cancel(self, job_id: str, on_cancel: Callable[[], None]) -> None:
        """Calls `on_cancel` (from the publisher thread) when a cancel for the job arrives."""
        self._cancel_watchers[job_id] = on_cancel
        loop = self._ensure_loop()
        with self._lock:
            if self._cancel_listener is None:
                self._cancel_listener = asyncio.run_coroutine_threadsafe(self._listen(), loop)
        self._listener_ready.wait(timeout=2.0)  # so a cancel sent right after start is heard

    def unwatch_cancel(self, job_id: str) -> None:
        self._cancel_watchers.pop(job_id, None)

    async def _listen(self) -> None:
        ready = self._listener_ready
        delay = 0.1
        while True:
            client = _redis_client()
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(CANCEL_CHANNEL)
                ready.set()
                delay = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    data = message["data"]
                    job_id = data.decode() if isinstance(data, bytes) else str(data)
                    callback = self._cancel_watchers.get(job_id)
                    if callback is not None:
                        callback()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the database check still catches cancels
                logger.warning("cancel listener lost Redis (%r); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_DELAY_MAX)
            finally:
                await client.aclose()


async def _group_send_each(layer: Any, batch: list[tuple[list[str], LayerJobMessage]]) -> None:
    for groups, message in batch:
        for group in groups:
            await layer.group_send(group, dict(message))


def _redis_client() -> Any:
    import redis.asyncio

    return redis.asyncio.Redis.from_url(settings.REDIS_URL)


publisher = Publisher()


def job_groups(job: Job) -> list[str]:
    """Where a job's frames go: its job group, its owner's group and the staff group."""
    return [job_group(job.id), owner_group(job.owner_key), staff_group()]


def publish_job_change(job: Job, *, queue_position: int | None = None) -> None:
    """Sends a job's new state to its job group, its owner's group and the staff group.

    The frame is encoded once here; consumers forward the text as it is.
    """
    text = job_frame_text(job_payload(job, queue_position=queue_position))
    publish_frame(job_groups(job), str(job.id), job.seq, job.is_terminal, text)


class ProgressFrames:
    """The progress frames of one running job, built from what does not change while it
    runs (id, kind, params, times, groups) and the three fields that do (seq, progress,
    updated_at): the same text as `job_payload` gives, for a fraction of its work, on
    the path every report takes (`RunningJob.report`)."""

    def __init__(self, job: Job) -> None:
        self.base = job_payload(job)
        self.job_id = str(job.id)
        self.groups = job_groups(job)

    def publish(self, job: Job) -> None:
        payload = self.base.copy()
        payload["seq"] = job.seq
        payload["progress"] = progress_payload(job)
        payload["updated_at"] = timestamp(job.updated_at) or ""
        publish_frame(self.groups, self.job_id, job.seq, False, job_frame_text(payload))


def publish_frame(groups: list[str], job_id: str, seq: int, terminal: bool, text: str) -> None:
    message: LayerJobMessage = {"type": "job.frame", "job_id": job_id, "seq": seq, "terminal": terminal, "text": text}
    if settings.JOBSTREAM_PUBLISHER == "naive":
        # The benchmarks' baseline keeps the two groups it was measured with: a third
        # group_send per update would make the usual pattern look worse than it is.
        _naive_group_send(groups[:2], message)
    else:
        publisher.send_job_frame(groups, message)


def _naive_group_send(groups: list[str], message: LayerJobMessage) -> None:
    """The usual pattern, for the benchmarks' baseline: a new event loop per call."""
    from asgiref.sync import async_to_sync

    layer = get_channel_layer()
    assert layer is not None
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, dict(message))
        except Exception as exc:
            logger.warning("publishing job %s seq %s failed: %r", message["job_id"], message["seq"], exc)
