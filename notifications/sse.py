"""Server-Sent Events at `/api/jobs/<id>/events/`: the fallback when WebSockets fail.

`id: <seq>`, `event: job`, `data: <job JSON>`; honours `Last-Event-ID`; ends after the
terminal state (docs/contract.md#server-sent-events). A transport on the follow seam (notifications/follow.py),
like the sockets: the job's group is joined before its state is read, only newer changes
go out, and the job is read again after the layer was away from Redis, and after a minute
of quiet (a client such as `curl` has no re-read of its own). It ends when its session
signs out (notifications/sessions.py).
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from core.api_errors import errors_response, method_not_allowed_response
from core.client_address import UNKNOWN_ADDRESS, client_address
from core.whole_numbers import BIGINT_DIGITS, is_whole_number
from jobs.logs import frame_chunks, log_data_text
from jobs.models import TERMINAL_STATES
from jobs.owners import Owner, owner_from_request
from jobs.selectors import job_get_visible, job_log_tail
from jobs.serializers import payload_text
from notifications.follow import Follow, job_follow, read_job
from notifications.log_after import log_after_of
from notifications.sessions import session_group_of
from notifications.socket_quota import stream_slots_acquire, stream_slots_release
from notifications.stream_metrics import EVENT_STREAM, STREAMS

KEEPALIVE_SECONDS = 15.0  # a comment line this often keeps proxies from closing a quiet stream
HEAL_EVERY = 4  # quiet keep-alives (a minute) before the stream reads its job again, for a frame lost on the way
OVER_QUOTA_RETRY_AFTER = 10  # seconds: a stream slot frees when another stream of the visitor ends
STREAM_START_SECONDS = 10.0  # from a stream's slot taken to its first step, at the most (StreamSlot)
_watchdogs: set[asyncio.Task[None]] = set()  # held so that a running one is not collected


def _event(seq: int, job_json: str) -> bytes:
    return f"id: {seq}\nevent: job\ndata: {job_json}\n\n".encode()


@csrf_exempt  # GET only (any other method gets 405), so there is nothing to forge
async def job_events(request: HttpRequest, job_id: str) -> HttpResponseBase:
    if request.method != "GET":
        return method_not_allowed_response(request.method, ["GET"])
    owner: Owner = await sync_to_async(owner_from_request)(request)
    job = await database_sync_to_async(job_get_visible)(owner=owner, job_id=job_id)
    if job is None:
        return errors_response(404, "id", "No job with this id.")
    raw_last = request.headers.get("Last-Event-ID", "").strip()
    # ASCII digits only ("²" passes isdigit() and fails int()), and few enough for int().
    if raw_last and not is_whole_number(raw_last):
        return errors_response(
            400,
            "Last-Event-ID",
            f"Must be a whole number of at most {BIGINT_DIGITS} digits: the seq of the last event seen.",
        )
    last_seq = int(raw_last) if raw_last else -1
    raw_log_after = request.GET.get("log_after")
    log_after, problem = log_after_of(raw_log_after)
    if problem is not None:
        return errors_response(400, "log_after", problem)
    # A resume of an ended job sends the lines it lacks only when it says which it has
    # (without `log_after` such a resume sends nothing, as before logs); a running job's
    # stream always carries its log (an EventSource resumes with the URL it first had).
    with_log = raw_log_after is not None or not raw_last or not job.is_terminal
    slot = StreamSlot(
        owner=owner, address=client_address(request) or UNKNOWN_ADDRESS, stream_id=f"sse.{uuid.uuid4().hex}"
    )
    # A finished job's stream is one event and the end, so it takes no slot (as its socket does not).
    try:
        refused_slot = not job.is_terminal and not await slot.acquire()
    except asyncio.CancelledError:  # the client left while the slot was being taken
        await slot.release()
        raise
    if refused_slot:
        refused = errors_response(
            429,
            "__all__",
            f"Too many live streams open: at most {settings.JOB_QUOTA_SOCKETS} per visitor and "
            f"{settings.STREAM_QUOTA_PER_IP} per address (sockets and event streams); close one and retry.",
        )
        refused["Retry-After"] = str(OVER_QUOTA_RETRY_AFTER)
        return refused
    stream = _stream(
        job.id,
        last_seq=last_seq,
        log_after=log_after if with_log else None,
        staff=owner.views_all,
        session=request.session,
        slot=slot,
    )
    response = EventStreamResponse(stream, slot=slot)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass events through at once
    return response


class EventStreamResponse(StreamingHttpResponse):
    """An event stream that gives its quota slot back when Django closes the response,
    whether or not its stream ever ran: a client gone before the first event leaves a
    stream that never started, whose own `finally` never runs."""

    def __init__(self, stream: AsyncIterator[bytes], *, slot: StreamSlot) -> None:
        super().__init__(stream, content_type="text/event-stream")
        self.slot = slot

    def close(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # daphne: Django calls close() in a worker thread
            loop = None
        try:
            if loop is None:
                async_to_sync(self.slot.release)()
            else:  # closed on the event loop's own thread (Django's test clients)
                _watchdogs.add(task := loop.create_task(self.slot.release()))
                task.add_done_callback(_watchdogs.discard)
        finally:
            super().close()


@dataclass
class StreamSlot:
    """The quota slots an event stream holds (notifications/socket_quota.py) until it ends.

    A stream that has not started STREAM_START_SECONDS after its slot was taken gives it
    back: Django drops a response whose client left while the middleware still ran, and
    neither its stream's `finally` nor the response's `close()` runs then.
    """

    owner: Owner
    address: str
    stream_id: str
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def acquire(self) -> bool:
        taken = await stream_slots_acquire(owner=self.owner, address=self.address, stream_id=self.stream_id)
        if taken:
            _watchdogs.add(task := asyncio.get_running_loop().create_task(self._released_unless_started()))
            task.add_done_callback(_watchdogs.discard)
        return taken

    async def _released_unless_started(self) -> None:
        try:
            await asyncio.wait_for(self.started.wait(), STREAM_START_SECONDS)
        except TimeoutError:
            await self.release()

    async def release(self) -> None:
        """Gives back what it holds (nothing, when it took nothing)."""
        await stream_slots_release(owner=self.owner, address=self.address, stream_id=self.stream_id)


def _log_event(text: str) -> bytes:
    """An `event: log` from a socket's `log` frame: the same object without its `type`."""
    frame = json.loads(text)
    data = log_data_text(frame["lines"], total=frame["total"], dropped=frame["dropped"])
    return f"event: log\ndata: {data}\n\n".encode()


async def _backfill(job_id: uuid.UUID, follow: Follow, log_after: int) -> AsyncIterator[bytes]:
    """As a socket's: the kept lines above `log_after` (the last 500), at least one event."""
    tail = await database_sync_to_async(job_log_tail)(job_id=job_id, after=log_after)
    for lines in frame_chunks(tail["lines"]):
        data = log_data_text(lines, total=tail["total"], dropped=tail["dropped"])
        STREAMS.sent()
        yield f"event: log\ndata: {data}\n\n".encode()
    follow.shows_log(log_after, tail["lines"])


async def _stream(
    job_id: uuid.UUID, *, last_seq: int, log_after: int | None, staff: bool, session: Any, slot: StreamSlot
) -> AsyncIterator[bytes]:
    slot.started.set()
    follow = job_follow(job_id, staff=staff)
    # Read here, not in the view: a session new with this request has its key only once
    # the response's headers (and the session) are saved.
    follow.ends_with(session_group_of(session))
    STREAMS.opened(EVENT_STREAM)
    try:
        payloads = await follow.open(functools.partial(read_job, job_id, staff=staff))
        if not payloads:
            return  # deleted since the request was checked
        (payload,) = payloads
        if payload["seq"] > last_seq:
            STREAMS.sent()
            yield _event(payload["seq"], payload_text(payload))
        follow.shown_seq(payload["id"], max(payload["seq"], last_seq))
        if log_after is not None:
            async for event in _backfill(job_id, follow, log_after):
                yield event
        if payload["state"] in TERMINAL_STATES:
            return
        yield b"retry: 2000\n\n"
        quiet = 0
        while True:
            message = await follow.next(timeout=KEEPALIVE_SECONDS)
            if follow.ended:
                return  # the session signed out
            if message is None:
                quiet += 1
                if quiet % HEAL_EVERY == 0:
                    await follow.heal()  # the event stream's clients have no re-read of their own
                yield b": keep-alive\n\n"
                continue
            STREAMS.pushed(message)
            if message["type"] == "job.log":
                yield _log_event(message["text"])
                continue
            yield _event(message["seq"], json.dumps(json.loads(message["text"])["job"], separators=(",", ":")))
            if message["terminal"]:
                return
    finally:
        STREAMS.closed(EVENT_STREAM)
        try:
            await follow.close()
        finally:
            await slot.release()
