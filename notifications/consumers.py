"""The WebSocket transports: `/ws/jobs/<id>/` (one job), `/ws/jobs/` (an owner's jobs) and
`/ws/staff/jobs/` (every queued and running job, for staff).

Each socket follows its jobs through the follow seam (notifications/follow.py): groups
joined before the snapshot is read, only frames newer than what it showed, and a fresh
read after the layer was away from Redis. Frames are pushed to the socket by the layer's
subscriber and written to daphne's socket framed once per process (core/compat). The
contract of the frames and close codes: docs/contract.md#websocket and #close-codes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any

from autobahn.exception import Disconnected
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from core.client_address import UNKNOWN_ADDRESS, client_address
from core.compat.autobahn import FrameCache, is_open, write_frame
from core.compat.channels import FastPathConsumer
from core.compat.channels_redis import SharedReads
from core.compat.daphne import daphne_protocol
from core.daphne_limits import CLIENT_FRAME_MAX_BYTES
from jobs.exceptions import JobAlreadyFinished, JobNotFound
from jobs.logs import LogPage, frame_chunks, log_frame_text
from jobs.models import TERMINAL_STATES
from jobs.owners import Owner, owner_from_scope, views_all_now
from jobs.selectors import job_get_visible, job_log_tail, job_queue_position, parse_job_id
from jobs.serializers import JobFrame, JobPayload, error_frame_text, job_frame_text, job_payload, snapshot_frame_text
from jobs.services import job_cancel
from notifications.follow import Follow, owner_follow, read_active_jobs, read_job, read_owner_jobs, staff_follow
from notifications.groups import job_group
from notifications.log_after import log_after_of, query_value
from notifications.messages import LayerJobMessage, LayerLogMessage, LayerSessionEndMessage
from notifications.sessions import session_group_of
from notifications.socket_db import socket_db
from notifications.socket_quota import stream_slots_acquire, stream_slots_release
from notifications.stream_metrics import JOB_SOCKET, OWNER_SOCKET, STAFF_SOCKET, STREAMS

logger = logging.getLogger(__name__)


def has_session_cookie(scope: dict[str, Any]) -> bool:
    """Whether the handshake carries a session cookie at all (no database trip)."""
    return bool(scope.get("cookies", {}).get(settings.SESSION_COOKIE_NAME))


FRAMES = FrameCache()  # one wire frame per job frame, shared by every socket of this process

MAX_FRAME_BYTES = CLIENT_FRAME_MAX_BYTES  # docs/contract.md#close-codes: a client frame over 4 KiB closes with 1009
FLOOD_BURST = 20  # client frames allowed at once ...
FLOOD_RATE = 5.0  # ... refilled per second; past that the socket closes with 4429

CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_NO_SESSION = 4401  # docs/contract.md#close-codes: a socket without a session; checked before 4404
CLOSE_NOT_FOUND = 4404
CLOSE_FLOOD = 4429
CLOSE_OVER_QUOTA = 4429  # docs/contract.md#quotas: over the owner's or the address's quota (socket_quota.py)
CLOSE_SIGNED_OUT = 4401  # the socket's session signed out (notifications/sessions.py)
RIGHTS_RECHECK_SECONDS = 2.5  # how often the staff feed reads its user's jobs.view_all_jobs again


class JobStreamConsumer(FastPathConsumer):
    """What every socket shares: accept, owner, client-frame checks, and writing frames."""

    owner: Owner | None
    follow: Follow | None
    stream_path: str  # its route in jobstream_sockets_open (notifications/stream_metrics.py)
    counted = False  # in jobstream_sockets_open, from the accept until it leaves

    async def connect(self) -> None:
        self.tokens = float(FLOOD_BURST)
        self.tokens_at = time.monotonic()
        self.owner = None
        self.follow = None
        self.closed = False
        self.left = False
        self.session_group = session_group_of(self.scope.get("session"))
        self.address = client_address(self.scope) or UNKNOWN_ADDRESS
        # Accept first: a close before accept reaches browsers as a failed handshake
        # with no code, and the client could not tell "not found" from "try again".
        await self.accept()
        STREAMS.opened(self.stream_path)
        self.counted = True
        self.send_past_session_middleware()
        self.daphne_protocol: Any = daphne_protocol(self.base_send)  # None unless daphne serves the socket
        if not has_session_cookie(self.scope):  # refused before any database or Redis trip
            await self.close(code=CLOSE_NO_SESSION)
            return
        if self.session_group is not None:  # joined before the session is read: no sign-out falls between
            await self.channel_layer.group_add(self.session_group, self.channel_name)
        await self.start_stream()

    async def start_stream(self) -> None:
        raise NotImplementedError

    async def admit(self) -> bool:
        """Takes a slot of the owner and of the client address; when either is full, closes 4429 and says False."""
        if await stream_slots_acquire(owner=self.owner, address=self.address, stream_id=self.channel_name):
            return True
        await self.close(code=CLOSE_OVER_QUOTA)
        return False

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        self.closed = True
        if self.follow is not None:
            self.follow.stop()
        await super().close(code=code, reason=reason)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # However the socket ends (a client gone while `connect` still sends makes the
        # send raise, and Channels then never calls `disconnect`), its groups are left and
        # its slots given back: a slot kept would be refreshed for the life of the process.
        try:
            await super().__call__(scope, receive, send)
        except Disconnected:  # a send once the client had gone (autobahn closing, daphne not told yet)
            pass
        finally:
            await self.leave()

    async def disconnect(self, code: int) -> None:
        await self.leave()

    async def leave(self) -> None:
        """Leaves the socket's groups and gives its quota slots back; once."""
        self.closed = True
        if getattr(self, "left", True):  # never connected, or already left
            return
        self.left = True
        try:
            if self.follow is not None:
                await self.follow.close()
            if self.session_group is not None:
                await self.channel_layer.group_discard(self.session_group, self.channel_name)
        finally:
            if self.counted:
                STREAMS.closed(self.stream_path)
            await stream_slots_release(owner=self.owner, address=self.address, stream_id=self.channel_name)

    async def session_end(self, message: LayerSessionEndMessage) -> None:
        """The socket's session signed out (notifications/sessions.py)."""
        if not self.closed:
            await self.close(code=CLOSE_SIGNED_OUT)

    # --- server → client ---------------------------------------------------------

    def send_job_frame(self, message: LayerJobMessage) -> Awaitable[None] | None:
        """A newer change of a job this socket shows (the follow's sink). Written straight
        to daphne's socket when it can be; otherwise the send to await."""
        if self.closed:
            return None
        protocol = self.daphne_protocol
        if protocol is not None:
            if write_frame(protocol, FRAMES.frame_of(message)):
                STREAMS.pushed(message)
                return None
            if not is_open(protocol):  # closing: the frame would only raise
                return None
        STREAMS.pushed(message)
        return self.send(text_data=message["text"])

    async def send_error(self, message: str) -> None:
        await self.send(text_data=error_frame_text(message))

    # --- client → server ---------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self._take_token():
            await self.close(code=CLOSE_FLOOD)
            return
        size = len(bytes_data) if bytes_data is not None else len((text_data or "").encode())
        if size > MAX_FRAME_BYTES:
            await self.close(code=CLOSE_TOO_BIG)
            return
        if bytes_data is not None:
            await self.send_error("Binary frames are not supported; send JSON text.")
            return
        try:
            frame = json.loads(text_data or "")
        except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested deeper than the parser goes
            await self.send_error("Malformed JSON.")
            return
        if not isinstance(frame, dict) or frame.get("type") != "cancel":
            kind = frame.get("type") if isinstance(frame, dict) else None
            await self.send_error(f"Unknown frame type {kind!r}; the only client frame is cancel.")
            return
        await self.on_cancel(frame)

    def _take_token(self) -> bool:
        now = time.monotonic()
        self.tokens = min(FLOOD_BURST, self.tokens + (now - self.tokens_at) * FLOOD_RATE)
        self.tokens_at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    async def on_cancel(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError

    async def cancel(self, job_id: object) -> None:
        if self.owner is None:
            await self.send_error("No job with this id.")
            return
        try:
            await database_sync_to_async(job_cancel)(owner=self.owner, job_id=job_id)
        except JobNotFound:
            await self.send_error("No job with this id.")
        except JobAlreadyFinished as exc:
            await self.send_error(str(exc))


class JobConsumer(JobStreamConsumer):
    """`/ws/jobs/<id>/`: the job's state now, then each change; closes after the end."""

    stream_path = JOB_SOCKET
    job_id: str
    log_after: int  # the `log_after` of the socket's URL: its backfill starts above it
    log_tail: LogPage  # the backfill, read with the snapshot

    async def start_stream(self) -> None:
        parsed = parse_job_id(self.scope["url_route"]["kwargs"]["job_id"])
        if parsed is None:
            self.owner = await socket_db(owner_from_scope, self.scope)
            await self.close(code=CLOSE_NO_SESSION if self.owner is None else CLOSE_NOT_FOUND)
            return
        self.job_id = str(parsed)
        self.log_after, log_after_problem = log_after_of(query_value(self.scope, "log_after"))
        # Joining the group of a job that turns out not to be visible costs nothing:
        # the close leaves it.
        self.follow = Follow([job_group(parsed)])
        payload = await self.follow.open(self._snapshot, channel=self.local_channel)
        if self.owner is None:  # a cookie of a session that is gone or holds no owner
            await self.close(code=CLOSE_NO_SESSION)
            return
        if payload is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        staff = bool(self.owner and self.owner.views_all)
        self.follow.heals_with(functools.partial(read_job, parsed, staff=staff), key=("job", self.job_id, staff))
        terminal = payload["state"] in TERMINAL_STATES
        if not terminal and not await self.admit():  # a finished job's socket closes at once
            return
        self.follow.shown([payload])
        await self.send(text_data=job_frame_text(payload))
        STREAMS.sent()
        if log_after_problem is not None:
            await self.send_error(log_after_problem)
        await self.send_backfill()
        if terminal:
            await self.close(code=CLOSE_NORMAL)
        else:
            await self.follow.push_to(self.send_job_frame, log_sink=self.send_log_frame)

    async def send_backfill(self) -> None:
        """The kept log lines above `log_after` (the last BACKFILL_MAX_LINES of them, read
        with the snapshot, after the groups were joined: a line published since comes as a
        `log` frame and is dropped there if this already sent it), in frames of at most
        64 KiB, at least one."""
        assert self.follow is not None
        tail = self.log_tail
        for lines in frame_chunks(tail["lines"]):
            await self.send(text_data=log_frame_text(lines, total=tail["total"], dropped=tail["dropped"]))
            STREAMS.sent()
        self.follow.shows_log(self.log_after, tail["lines"])

    def send_log_frame(self, message: LayerLogMessage) -> Awaitable[None] | None:
        """A batch of new log lines (the follow's log sink), written as job frames are."""
        return JobStreamConsumer.send_job_frame(self, message)  # type: ignore[arg-type]

    def _snapshot(self) -> JobPayload | None:
        """One trip to the database thread: the owner, the visibility check, the job, and
        its log's backfill (no query of its own for a job with no line above `log_after`)."""
        self.owner = owner_from_scope(self.scope)
        if self.owner is None:
            return None
        job = job_get_visible(owner=self.owner, job_id=self.job_id)
        if job is None:
            return None
        staff = self.owner is not None and self.owner.views_all
        payload = job_payload(job, staff=staff, queue_position=job_queue_position(job=job))
        self.log_tail = job_log_tail(job_id=job.id, after=self.log_after, counts=(job.log_total, job.log_dropped))
        return payload

    def send_job_frame(self, message: LayerJobMessage) -> Awaitable[None] | None:
        pending = super().send_job_frame(message)
        return self._close_after(pending) if message["terminal"] else pending

    async def _close_after(self, pending: Awaitable[None] | None) -> None:
        if pending is not None:
            await pending
        await self.close(code=CLOSE_NORMAL)

    async def on_cancel(self, frame: dict[str, Any]) -> None:
        await self.cancel(self.job_id)


class OwnerJobsConsumer(JobStreamConsumer):
    """`/ws/jobs/`: a snapshot of the owner's recent jobs, then every change to any of them."""

    stream_path = OWNER_SOCKET

    async def start_stream(self) -> None:
        # One trip to the database for the owner, a second one for the snapshot: the
        # group to join before the snapshot is read depends on the owner.
        self.owner = await socket_db(owner_from_scope, self.scope)
        if self.owner is None:
            await self.close(code=CLOSE_NO_SESSION)
            return
        if not await self.admit():
            return
        self.follow = owner_follow(self.owner)
        payloads = await self.follow.open(functools.partial(read_owner_jobs, self.owner), channel=self.local_channel)
        self.follow.shown(payloads)
        await self.send(text_data=snapshot_frame_text(payloads))
        STREAMS.sent()
        await self.follow.push_to(self.send_job_frame)

    async def on_cancel(self, frame: dict[str, Any]) -> None:
        if "id" not in frame:
            await self.send_error("A cancel frame on this socket needs the job's id.")
            return
        await self.cancel(frame["id"])


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """Any other socket path (`/ws/jobs/x/y/`, an id over 100 characters, `/ws/nothing/`):
    accepted, then closed 4404 like an unknown job. Unrouted, such a path would fail the
    handshake with a 500 and a traceback in the log."""

    async def connect(self) -> None:
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND if has_session_cookie(self.scope) else CLOSE_NO_SESSION)


class StaffJobsConsumer(JobStreamConsumer):
    """`/ws/staff/jobs/`: every queued and running job and the counts per state, then
    every change to any job (the staff group). For anyone but staff it does not exist."""

    stream_path = STAFF_SOCKET

    live_frames: dict[str, str]  # job id -> the newest frame sent, for jobs not yet ended
    recheck: asyncio.Future[None] | None = None  # the re-reads of the user's right, while the feed runs

    async def start_stream(self) -> None:
        self.live_frames = {}
        self.owner = await socket_db(owner_from_scope, self.scope)
        if self.owner is None:
            await self.close(code=CLOSE_NO_SESSION)
            return
        if not self.owner.views_all:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.follow = staff_follow(self.resync)
        payloads, counts = await self.follow.open(read_active_jobs, channel=self.local_channel)
        await self.send_snapshot(payloads, counts)
        await self.follow.push_to(self.send_job_frame)
        self.recheck = asyncio.ensure_future(self.recheck_rights(self.owner.user_id))

    async def recheck_rights(self, user_id: int | None) -> None:
        """Closes 4404 once the user no longer holds jobs.view_all_jobs: the close a new
        socket would get, after which the client does not retry."""
        while not self.closed:
            await asyncio.sleep(RIGHTS_RECHECK_SECONDS)
            try:
                still = await socket_db(views_all_now, user_id)
            except Exception:
                logger.exception("re-reading the staff feed's rights failed; trying again")
                continue
            if not still and not self.closed:
                await self.close(code=CLOSE_NOT_FOUND)

    async def leave(self) -> None:
        if self.recheck is not None:
            self.recheck.cancel()
        await super().leave()

    async def send_snapshot(self, payloads: list[JobPayload], counts: dict[str, int]) -> None:
        assert self.follow is not None
        self.follow.shown(payloads)
        await self.send(text_data=snapshot_frame_text(payloads, counts=counts))
        STREAMS.sent()

    def send_job_frame(self, message: LayerJobMessage) -> Awaitable[None] | None:
        if message["terminal"]:
            self.live_frames.pop(message["job_id"], None)
        else:
            self.live_frames[message["job_id"]] = message["text"]
        return super().send_job_frame(message)

    # --- healing after Redis came back ---------------------------------------------------

    async def resync(self, reads: SharedReads) -> None:
        """A whole fresh snapshot, not job frames: a job that ended while the layer was
        away from Redis must leave the view and the counts must be right again, which no
        job frame says. One read, shared by every staff socket of the process."""
        if self.closed:
            return
        payloads, counts = await reads.get(("staff",), lambda: socket_db(read_active_jobs))
        if self.closed:
            return
        await self.send_snapshot(self._not_older_than_sent(payloads), counts)

    def _not_older_than_sent(self, payloads: list[JobPayload]) -> list[JobPayload]:
        """The read, minus what this socket has already shown newer: a running worker's
        progress frames run ahead of its row (jobs/services/transitions.py, SEQ_WINDOW), and
        the client replaces its whole list with a snapshot, so an older row would move a
        bar back, or bring back a job whose terminal frame went out after the read."""
        assert self.follow is not None
        shown: list[JobPayload] = []
        for payload in payloads:
            job_id = payload["id"]
            if payload["seq"] >= self.follow.last_seq.get(job_id, 0):
                shown.append(payload)
            elif job_id in self.live_frames:
                frame: JobFrame = json.loads(self.live_frames[job_id])
                shown.append(frame["job"])
            # else: the newest frame sent for it was terminal, so it has left the view
        live = {payload["id"] for payload in shown}
        self.live_frames = {job_id: text for job_id, text in self.live_frames.items() if job_id in live}
        return shown

    async def on_cancel(self, frame: dict[str, Any]) -> None:
        if "id" not in frame:
            await self.send_error("A cancel frame on this socket needs the job's id.")
            return
        await self.cancel(frame["id"])
