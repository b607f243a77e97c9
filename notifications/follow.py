"""The follow seam: what a stream of job changes needs, whatever carries it to the client.

A `Follow` joins the stream's groups before anything is read, so no change can fall
between the snapshot and the frames; it lets through only frames whose `seq` is above
the last one shown for their job; and after the channel layer was away from Redis it
re-reads what the stream shows (one read per job, owner or staff view for every stream
of the process, `SharedReads`) and passes on what is newer. It reads nothing while a
stream is quiet unless the stream asks (`heal`).

Two ways to take the changes:

- push (`push_to`): the layer's subscriber hands each new frame to the stream's sink
  itself, stream after stream, with no task woken per stream (the WebSocket consumers,
  where a frame reaches a thousand sockets);
- pull (`next`, or `async for`): a stream that has a task of its own waits for the next
  change (Server-Sent Events, the terminal client); a client of such a stream has no
  re-read of its own, so after a long quiet the stream may `heal()`.

A pull stream may also be told to end (`ends_with`, a session's group): once the session
signs out, `next` gives None and `ended` is true. A socket joins that group itself and
takes the word through its own consumer's channel.

A transport is a small module on top: open a Follow with the read of its first state,
send that, then send each change (notifications/consumers.py, notifications/sse.py,
jobs/cli.py). With a channel layer other than jobstream's (core/compat/channels_redis.py)
a Follow reads its channel in a task of its own and cannot tell when Redis came back:
pages then heal from their own re-reads (docs/architecture.md "Streams that heal").
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

from channels.layers import get_channel_layer

from core.compat.channels_redis import LatestWinsQueue, SharedReads, deliver_directly, fast_layer, stop_direct
from jobs.logs import LogFrame, LogLinePayload, log_frame_text
from jobs.models import TERMINAL_STATES, Job, JobState
from jobs.owners import Owner
from jobs.selectors import (
    job_count_by_state,
    job_list_active,
    job_list_recent_for_owner,
    job_queue_position,
    job_queue_positions,
)
from jobs.serializers import JobPayload, job_frame_text, job_payload
from notifications.groups import job_group, owner_group, staff_group
from notifications.messages import LayerJobMessage, LayerLogMessage
from notifications.socket_db import socket_db

T = TypeVar("T")
# Takes a newer change; what it returns, when not None, is awaited (a write that must wait).
Sink = Callable[[LayerJobMessage], Awaitable[None] | None]
LogSink = Callable[[LayerLogMessage], Awaitable[None] | None]  # takes a batch of log lines not shown
ReadJobs = Callable[[], list[JobPayload]]  # runs in the sockets' database thread
Resync = Callable[[SharedReads], Awaitable[None]]


def job_message(payload: JobPayload) -> LayerJobMessage:
    """A job's state as the layer carries it, for a state read from the database."""
    return {
        "type": "job.frame",
        "job_id": payload["id"],
        "seq": payload["seq"],
        "terminal": payload["state"] in TERMINAL_STATES,
        "text": job_frame_text(payload),
    }


class Follow:
    """The changes of the jobs one stream shows (see the module docstring).

    `reread` is what the stream would show now (its snapshot), read again after the layer
    came back to Redis; streams with the same `reread_key` share one read. A stream whose
    healing is not "each newer job" gives its own `on_resync` instead (the staff view
    sends a whole new snapshot)."""

    # One per open stream, ten thousand to a daphne: no per-instance dict.
    __slots__ = (
        "_channel",
        "_end_groups",
        "_held",
        "_joined",
        "_layer",
        "_log_sink",
        "_on_resync",
        "_reader",
        "_reread",
        "_reread_key",
        "_sink",
        "closed",
        "ended",
        "groups",
        "last_seq",
        "log_n",
    )

    def __init__(
        self,
        groups: Sequence[str],
        *,
        reread: ReadJobs | None = None,
        reread_key: Hashable = None,
        on_resync: Resync | None = None,
    ) -> None:
        self.groups = list(groups)
        self.last_seq: dict[str, int] = {}
        self.closed = False
        self.ended = False
        self._end_groups: list[str] = []
        self._reread = reread
        self._reread_key = reread_key
        self._on_resync = on_resync
        self._joined: list[str] = []
        self._channel: str | None = None
        self._layer: Any = None
        self._reader: asyncio.Future[None] | None = None
        self._held: LatestWinsQueue | None = None  # frames before the sink is set, and all in pull mode
        self._sink: Sink | None = None
        self._log_sink: LogSink | None = None
        # The highest log line shown (`shows_log`); None for a stream that shows no log.
        self.log_n: int | None = None

    # --- opening and closing -------------------------------------------------------------

    async def open(self, read: Callable[[], T], *, channel: str | None = None) -> T:
        """Joins the groups, then runs `read` in the sockets' database thread and returns
        what it gives (the stream's first state). Nothing published from the join on is
        missed: it waits for `push_to` or `next`. A consumer gives its own `channel` (a
        local one, core/compat/channels.py), which the layer then feeds this stream through."""
        layer = get_channel_layer()
        assert layer is not None, "CHANNEL_LAYERS must define a default layer"
        self._layer = layer
        fast = fast_layer(layer)
        if fast is not None:
            self._channel = channel or await fast.new_local_channel()
            deliver_directly(self._channel, self._offer, self._resync, self._offer_log)
        else:
            self._channel = await layer.new_channel()  # a consumer's own is read by Channels' loop
            self._reader = asyncio.ensure_future(self._read_channel())
        for group in [*self.groups, *self._end_groups]:
            await layer.group_add(group, self._channel)
            self._joined.append(group)
        if fast is not None and self._end_groups and channel is None:
            self._reader = asyncio.ensure_future(self._read_ends(fast))
        return await socket_db(read)

    def ends_with(self, group: str | None) -> None:
        """Before `open`: a word on `group` (a session's end) ends the stream (pull only)."""
        if group is not None:
            self._end_groups.append(group)

    def end(self) -> None:
        """The stream ends: `next` gives None from now on, at once if it is waiting."""
        self.ended = True
        self.stop()
        self._hold().put_nowait(None)  # wakes a waiting `next`

    def stop(self) -> None:
        """No more frames for this stream (it is closing)."""
        self.closed = True
        if self._channel is not None:
            stop_direct(self._channel)
        if self._reader is not None:
            self._reader.cancel()

    async def close(self) -> None:
        """Stops, and leaves the groups."""
        self.stop()
        while self._joined:
            await self._layer.group_discard(self._joined.pop(), self._channel)

    def heals_with(self, reread: ReadJobs, key: Hashable) -> None:
        """After the layer came back to Redis, `reread` gives what the stream shows now
        (a stream that learns who reads it only from its first read sets it then)."""
        self._reread, self._reread_key = reread, key

    # --- the seq filter ----------------------------------------------------------------------

    def shown(self, payloads: Iterable[JobPayload]) -> None:
        """The stream showed these states: only newer ones pass from now on."""
        for payload in payloads:
            self.shown_seq(payload["id"], payload["seq"])

    def shown_seq(self, job_id: str, seq: int) -> None:
        if seq > self.last_seq.get(job_id, 0):
            self.last_seq[job_id] = seq

    def shows_log(self, after: int, backfill: Sequence[LogLinePayload] = ()) -> None:
        """The stream shows the job's log above line `after`, and has sent `backfill` (its
        kept lines above it): only lines above both pass from now on."""
        self.log_n = max(after, backfill[-1]["n"] if backfill else 0, self.log_n or 0)

    def newer_log(self, message: LayerLogMessage) -> LayerLogMessage | None:
        """The lines of a batch this stream has not shown (cut when it showed some of
        them), which count as shown from now on; None when it has shown them all."""
        shown = self.log_n
        if shown is None or message["last"] <= shown:
            return None
        self.log_n = message["last"]
        if message["first"] > shown:
            return message
        frame: LogFrame = json.loads(message["text"])
        lines = [line for line in frame["lines"] if line["n"] > shown]
        text = log_frame_text(lines, total=frame["total"], dropped=frame["dropped"])
        return {**message, "first": lines[0]["n"], "text": text}

    def newer(self, message: LayerJobMessage) -> bool:
        """Whether the stream has not shown this change yet; if so, it counts as shown."""
        if message["seq"] <= self.last_seq.get(message["job_id"], 0):
            return False
        self.last_seq[message["job_id"]] = message["seq"]
        return True

    # --- taking the changes ----------------------------------------------------------------------

    async def push_to(self, sink: Sink, *, log_sink: LogSink | None = None) -> None:
        """From now on each newer change goes to `sink` (and each batch of log lines not
        shown to `log_sink`), first those that came while the snapshot was read, in order."""
        held = self._held
        while held is not None and not held.empty():
            message = held.get_nowait()
            if self.closed:
                continue
            pending: Awaitable[None] | None = None
            if message["type"] == "job.log":
                batch = self.newer_log(message)
                if batch is not None and log_sink is not None:
                    pending = log_sink(batch)
            elif self.newer(message):
                pending = sink(message)
            if pending is not None:
                await pending
        self._held = None
        self._log_sink = log_sink
        self._sink = sink

    async def next(self, timeout: float | None = None) -> LayerJobMessage | LayerLogMessage | None:
        """The next newer change, or batch of log lines not shown (once `shows_log` was
        called); None when `timeout` seconds pass without one."""
        held = self._hold()
        while True:
            if self.ended:
                return None
            try:
                message = await asyncio.wait_for(held.get(), timeout)
            except TimeoutError:
                return None
            if message is None:
                continue
            if message["type"] == "job.log":
                batch = self.newer_log(message)
                if batch is not None:
                    return batch
            elif self.newer(message):
                return message

    def __aiter__(self) -> Follow:
        return self

    async def __anext__(self) -> LayerJobMessage | LayerLogMessage:
        message = await self.next()
        if message is None:  # no timeout: only an end gives None
            raise StopAsyncIteration
        return message

    # --- from the layer ----------------------------------------------------------------------

    def _offer(self, message: LayerJobMessage) -> Awaitable[None] | None:
        """A frame for the stream's groups, from the layer's subscriber (or the reader):
        to the sink when newer, held until there is one. Called once per stream per
        frame, so it creates no coroutine of its own."""
        if self.closed:
            return None
        sink = self._sink
        if sink is None:
            self._hold().put_nowait(message)
            return None
        job_id, seq = message["job_id"], message["seq"]
        if seq <= self.last_seq.get(job_id, 0):
            return None
        self.last_seq[job_id] = seq
        return sink(message)

    def _offer_log(self, message: LayerLogMessage) -> Awaitable[None] | None:
        """A batch of the job's log lines, from the layer's subscriber: held in order with
        the job's frames until there is a sink, then to the log sink when not shown."""
        if self.closed:
            return None
        if self._sink is None:
            self._hold().put_nowait(message)
            return None
        log_sink = self._log_sink
        if log_sink is None:
            return None
        batch = self.newer_log(message)
        return None if batch is None else log_sink(batch)

    async def _pass_on(self, message: LayerJobMessage) -> None:
        pending = self._offer(message)
        if pending is not None:
            await pending

    def _hold(self) -> LatestWinsQueue:
        if self._held is None:
            self._held = LatestWinsQueue()
        return self._held

    async def _read_channel(self) -> None:
        """With a layer that is not jobstream's: its frames, one at a time."""
        while True:
            message = await self._layer.receive(self._channel)
            if message.get("type") == "session.end":
                self.end()
                return
            if message.get("type") == "job.log":
                pending = self._offer_log(message)
                if pending is not None:
                    await pending
                continue
            await self._pass_on(message)

    async def _read_ends(self, fast: Any) -> None:
        """With jobstream's layer: job frames come straight to `_offer`, and any other word
        to the stream's channel (a session's end) waits here."""
        while True:
            message = await fast.receive_local(self._channel)
            if isinstance(message, dict) and message.get("type") == "session.end":
                self.end()
                return

    async def heal(self) -> None:
        """Reads what the stream shows now and passes on what is newer: for a pull stream
        whose client has no re-read of its own, after a long quiet (a frame lost on the
        way while Redis stayed up is never resent)."""
        if not self.closed and self._reread is not None:
            for payload in await socket_db(self._reread):
                await self._pass_on(job_message(payload))

    async def _resync(self, reads: SharedReads) -> None:
        """The layer is back on Redis and what it carried meanwhile is lost: read again."""
        if self.closed:
            return
        if self._on_resync is not None:
            await self._on_resync(reads)
            return
        if self._reread is None:
            return
        reread = self._reread
        for payload in await reads.get(self._reread_key, lambda: socket_db(reread)):
            await self._pass_on(job_message(payload))


# --- what each stream shows ------------------------------------------------------------------


def read_job(job_id: uuid.UUID | str, *, staff: bool) -> list[JobPayload]:
    """One job's state as a job stream shows it (a list of one; empty once it is gone)."""
    job = Job.objects.filter(pk=job_id).first()
    return [] if job is None else [job_payload(job, staff=staff, queue_position=job_queue_position(job=job))]


def read_owner_jobs(owner: Owner) -> list[JobPayload]:
    """An owner's recent jobs, newest first, as the owner stream's snapshot shows them."""
    return [
        job_payload(job, staff=owner.views_all, queue_position=job_queue_position(job=job))
        for job in job_list_recent_for_owner(owner=owner)
    ]


def read_active_jobs() -> tuple[list[JobPayload], dict[str, int]]:
    """Every queued and running job, oldest first, and the counts per state (the staff view)."""
    active = job_list_active()
    # The list is oldest first: its queued jobs are the start of the line, counted in one pass.
    ahead = job_queue_positions(queued=[job for job in active if job.state == JobState.QUEUED])
    return [job_payload(job, staff=True, queue_position=ahead.get(job.id)) for job in active], job_count_by_state()


def job_follow(job_id: uuid.UUID | str, *, staff: bool) -> Follow:
    """The changes of one job."""
    return Follow(
        [job_group(job_id)],
        reread=lambda: read_job(job_id, staff=staff),
        reread_key=("job", str(job_id), staff),  # staff streams carry error_detail
    )


def owner_follow(owner: Owner) -> Follow:
    """The changes of every job of an owner, new ones included."""
    return Follow(
        [owner_group(owner.key)],
        reread=lambda: list(reversed(read_owner_jobs(owner))),  # oldest first, as they happened
        reread_key=("owner", owner.key, owner.views_all),
    )


def staff_follow(on_resync: Resync) -> Follow:
    """The changes of every job, for the staff view (which heals with a whole snapshot)."""
    return Follow([staff_group()], on_resync=on_resync)
