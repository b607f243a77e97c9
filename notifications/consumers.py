"""WebSocket consumers: `/ws/jobs/<id>/` (one job) and `/ws/jobs/` (all of an owner's jobs).

Both join their groups before they read the snapshot, so no change can fall between
the two; frames carry the full job and a `seq`, and a consumer never forwards a frame
whose `seq` is not above the last one it sent for that job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from core.compat.autobahn import FrameCache, write_frame
from core.compat.channels import FastPathConsumer
from core.compat.channels_redis import SharedReads, deliver_directly, stop_direct, subscriber_reconnects
from core.compat.daphne import daphne_protocol
from jobs.exceptions import JobAlreadyFinished, JobNotFound
from jobs.models import TERMINAL_STATES, Job, JobState
from jobs.owners import Owner, owner_from_scope
from jobs.selectors import (
    job_count_by_state,
    job_get_visible,
    job_list_active,
    job_list_recent_for_owner,
    job_queue_position,
    parse_job_id,
)
from jobs.serializers import (
    JobFrame,
    JobPayload,
    error_frame_text,
    job_frame_text,
    job_payload,
    snapshot_frame_text,
)
from jobs.services import job_cancel
from notifications.db import socket_db
from notifications.groups import job_group, owner_group, staff_group
from notifications.messages import LayerJobMessage
from notifications.quotas import socket_slot_acquire, socket_slot_release

logger = logging.getLogger(__name__)
FRAMES = FrameCache()  # one wire frame per job frame, shared by every socket of this process

MAX_FRAME_BYTES = 4096  # DESIGN.md: a client frame over 4 KiB closes with 1009
FLOOD_BURST = 20  # client frames allowed at once ...
FLOOD_RATE = 5.0  # ... refilled per second; past that the socket closes with 4429

CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_NOT_FOUND = 4404
CLOSE_FLOOD = 4429
CLOSE_OVER_QUOTA = 4429  # DESIGN.md: a socket over the owner's quota (notifications/quotas.py)


class JobStreamConsumer(FastPathConsumer):
    """What both sockets share: owner lookup, client-frame checks, seq filtering."""

    owner: Owner | None
    last_seq: dict[str, int]
    groups_joined: list[str]

    async def connect(self) -> None:
        self.last_seq = {}
        self.groups_joined = []
        self.tokens = float(FLOOD_BURST)
        self.tokens_at = time.monotonic()
        self.owner = None
        self.closed = False
        self.daphne_protocol: Any = None  # set once accepted, when daphne serves the socket
        self.reconnects_at_join = subscriber_reconnects()  # see go_direct
        # Accept first: a close before accept reaches browsers as a failed handshake
        # with no code, and the client could not tell "not found" from "try again".
        await self.accept()
        self.send_past_session_middleware()
        self.daphne_protocol = daphne_protocol(self.base_send)
        await self.start_stream()

    async def start_stream(self) -> None:
        raise NotImplementedError

    async def admit(self) -> bool:
        """Takes one of the owner's socket slots; when none is free, closes 4429 and says False."""
        if await socket_slot_acquire(owner=self.owner, socket_id=self.channel_name):
            return True
        await self.close(code=CLOSE_OVER_QUOTA)
        return False

    async def join(self, group: str) -> None:
        assert self.channel_layer is not None
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined.append(group)

    def go_direct(self) -> None:
        """Called once the snapshot is sent: later job frames come straight from the
        layer's subscriber (core/compat/channels_redis.py), not through this consumer's
        queue and dispatch loop. Frames already queued still pass the seq filter."""
        deliver_directly(self.channel_name, self.job_frame, self.resync)
        if subscriber_reconnects() != self.reconnects_at_join:
            # The layer lost Redis after this socket joined its groups and resynced the
            # direct sockets before this one was among them: catch up on our own.
            self.resync_task = asyncio.ensure_future(self.resync(SharedReads()))

    # --- healing after Redis came back (core/compat/channels_redis.py) --------------------

    async def resync(self, reads: SharedReads) -> None:
        """Frames published while the layer was away from Redis are lost: re-read the
        snapshot (one read per job or owner, shared with the process's other sockets)
        and send each job whose seq is above the last one sent."""
        if self.closed:
            return
        for payload, terminal in await self.resync_read(reads):
            message: LayerJobMessage = {
                "type": "job.frame",
                "job_id": payload["id"],
                "seq": payload["seq"],
                "terminal": terminal,
                "text": job_frame_text(payload),
            }
            await self.job_frame(message)

    async def resync_read(self, reads: SharedReads) -> list[tuple[JobPayload, bool]]:
        """The jobs this socket's snapshot would show now, with whether each is terminal,
        read through `reads`. A socket class that does not say re-reads nothing."""
        return []

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        self.closed = True
        stop_direct(self.channel_name)
        await super().close(code=code, reason=reason)

    async def disconnect(self, code: int) -> None:
        self.closed = True
        stop_direct(self.channel_name)
        await socket_slot_release(owner=self.owner, socket_id=self.channel_name)
        if self.channel_layer is None:
            return
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    # --- server → client ---------------------------------------------------------

    def payload(self, job: Job) -> JobPayload:
        """The job's JSON for this socket (sync: may count the queue)."""
        staff = bool(self.owner and self.owner.is_staff)
        return job_payload(job, staff=staff, queue_position=job_queue_position(job=job))

    async def job_frame(self, event: LayerJobMessage) -> None:
        """A change published by a worker or a web process (type `job.frame`)."""
        if self.closed or event["seq"] <= self.last_seq.get(event["job_id"], 0):
            return
        self.last_seq[event["job_id"]] = event["seq"]
        protocol = self.daphne_protocol
        if protocol is None or not write_frame(protocol, FRAMES.frame_of(event)):
            await self.send(text_data=event["text"])
        await self.after_frame(event)

    async def after_frame(self, event: LayerJobMessage) -> None:
        pass

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

    job_id: str

    async def start_stream(self) -> None:
        parsed = parse_job_id(self.scope["url_route"]["kwargs"]["job_id"])
        if parsed is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.job_id = str(parsed)
        # Join first, then read: a change made before the read is in the snapshot; any
        # later one arrives as a frame with a higher seq. (Joining a group of a job that
        # turns out not to be visible costs nothing: disconnect leaves it.)
        await self.join(job_group(parsed))
        snapshot = await socket_db(self._snapshot)
        if snapshot is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        payload, terminal = snapshot
        if not terminal and not await self.admit():  # a finished job's socket closes at once
            return
        self.last_seq[self.job_id] = payload["seq"]
        await self.send(text_data=job_frame_text(payload))
        if terminal:
            await self.close(code=CLOSE_NORMAL)
        else:
            self.go_direct()

    def _snapshot(self) -> tuple[JobPayload, bool] | None:
        """One trip to the database thread: the owner, the visibility check, the job."""
        self.owner = owner_from_scope(self.scope)
        job = job_get_visible(owner=self.owner, job_id=self.job_id)
        return None if job is None else (self.payload(job), job.is_terminal)

    async def after_frame(self, event: LayerJobMessage) -> None:
        if event["terminal"]:
            await self.close(code=CLOSE_NORMAL)

    async def resync_read(self, reads: SharedReads) -> list[tuple[JobPayload, bool]]:
        # By id alone: visibility was settled at connect. Keyed by staff, whose JSON differs.
        staff = bool(self.owner and self.owner.is_staff)
        found = await reads.get(("job", self.job_id, staff), lambda: socket_db(self._resync_job))
        return [] if found is None else [found]

    def _resync_job(self) -> tuple[JobPayload, bool] | None:
        job = Job.objects.filter(pk=self.job_id).first()
        return None if job is None else (self.payload(job), job.is_terminal)

    async def on_cancel(self, frame: dict[str, Any]) -> None:
        await self.cancel(self.job_id)


class OwnerJobsConsumer(JobStreamConsumer):
    """`/ws/jobs/`: a snapshot of the owner's recent jobs, then every change to any of them."""

    async def start_stream(self) -> None:
        # One trip to the database for the owner, a second one for the snapshot: the
        # group to join before the snapshot is read depends on the owner.
        self.owner = await socket_db(owner_from_scope, self.scope)
        payloads: list[JobPayload] = []
        if not await self.admit():
            return
        if self.owner is not None:
            await self.join(owner_group(self.owner.key))
            payloads = await socket_db(self._snapshot)
        for payload in payloads:
            self.last_seq[payload["id"]] = payload["seq"]
        await self.send(text_data=snapshot_frame_text(payloads))
        self.go_direct()

    def _snapshot(self) -> list[JobPayload]:
        assert self.owner is not None
        return [self.payload(job) for job in job_list_recent_for_owner(owner=self.owner)]

    async def resync_read(self, reads: SharedReads) -> list[tuple[JobPayload, bool]]:
        if self.owner is None:
            return []
        key = ("owner", self.owner.key, self.owner.is_staff)
        payloads = await reads.get(key, lambda: socket_db(self._snapshot))
        return [(payload, payload["state"] in TERMINAL_STATES) for payload in reversed(payloads)]  # oldest first

    async def on_cancel(self, frame: dict[str, Any]) -> None:
        if "id" not in frame:
            await self.send_error("A cancel frame on this socket needs the job's id.")
            return
        await self.cancel(frame["id"])


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """Any other socket path (`/ws/jobs/x/y/`, an id over 100 characters, `/ws/nothing/`):
    accepted, then closed 4404 like an unknown job. Unrouted, it failed the handshake with
    a 500 and a traceback in the log."""

    async def connect(self) -> None:
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)


class StaffJobsConsumer(JobStreamConsumer):
    """`/ws/staff/jobs/`: every queued and running job and the counts per state, then
    every change to any job (the staff group). For anyone but staff it does not exist."""

    live_frames: dict[str, str]  # job id -> the newest frame sent, for jobs not yet ended

    async def start_stream(self) -> None:
        self.live_frames = {}
        self.owner = await socket_db(owner_from_scope, self.scope)
        if self.owner is None or not self.owner.is_staff:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.join(staff_group())
        payloads, counts = await socket_db(self._snapshot)
        await self.send_snapshot(payloads, counts)
        self.go_direct()

    async def send_snapshot(self, payloads: list[JobPayload], counts: dict[str, int]) -> None:
        for payload in payloads:
            self.last_seq[payload["id"]] = max(payload["seq"], self.last_seq.get(payload["id"], 0))
        await self.send(text_data=snapshot_frame_text(payloads, counts=counts))

    async def job_frame(self, event: LayerJobMessage) -> None:
        if not self.closed and event["seq"] > self.last_seq.get(event["job_id"], 0):
            if event["terminal"]:
                self.live_frames.pop(event["job_id"], None)
            else:
                self.live_frames[event["job_id"]] = event["text"]
        await super().job_frame(event)

    # --- healing after Redis came back (core/compat/channels_redis.py) --------------------

    async def resync(self, reads: SharedReads) -> None:
        """A whole fresh snapshot, not job frames: a job that ended while the layer was
        away from Redis must leave the view and the counts must be right again, which no
        job frame says. One read, shared by every staff socket of the process."""
        if self.closed:
            return
        payloads, counts = await reads.get(("staff",), lambda: socket_db(self._snapshot))
        if self.closed:
            return
        await self.send_snapshot(self._not_older_than_sent(payloads), counts)

    def _not_older_than_sent(self, payloads: list[JobPayload]) -> list[JobPayload]:
        """The read, minus what this socket has already shown newer: a running worker's
        progress frames run ahead of its row (jobs/services/transitions.py, SEQ_WINDOW), and the
        client replaces its whole list with a snapshot, so an older row would move a
        bar back, or bring back a job whose terminal frame went out after the read."""
        shown: list[JobPayload] = []
        for payload in payloads:
            job_id = payload["id"]
            if payload["seq"] >= self.last_seq.get(job_id, 0):
                shown.append(payload)
            elif job_id in self.live_frames:
                frame: JobFrame = json.loads(self.live_frames[job_id])
                shown.append(frame["job"])
            # else: the newest frame sent for it was terminal, so it has left the view
        live = {payload["id"] for payload in shown}
        self.live_frames = {job_id: text for job_id, text in self.live_frames.items() if job_id in live}
        return shown

    def _snapshot(self) -> tuple[list[JobPayload], dict[str, int]]:
        active = job_list_active()
        queued = [job for job in active if job.state == JobState.QUEUED]
        # One count for the whole line: the snapshot is oldest first, so a job's place
        # is the number of queued jobs created before it, plus one.
        ahead = {job.id: index + 1 for index, job in enumerate(queued)}
        payloads = [job_payload(job, staff=True, queue_position=ahead.get(job.id)) for job in active]
        return payloads, job_count_by_state()

    async def on_cancel(self, frame: dict[str, Any]) -> None:
        if "id" not in frame:
            await self.send_error("A cancel frame on this socket needs the job's id.")
            return
        await self.cancel(frame["id"])
