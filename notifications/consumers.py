"""WebSocket consumers: `/ws/jobs/<id>/` (one job) and `/ws/jobs/` (all of an owner's jobs).

Both join their groups before they read the snapshot, so no change can fall between
the two; frames carry the full job and a `seq`, and a consumer never forwards a frame
whose `seq` is not above the last one it sent for that job.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from jobs.exceptions import JobAlreadyFinished, JobNotFound
from jobs.models import Job
from jobs.owners import Owner, owner_from_scope
from jobs.selectors import job_get_visible, job_list_recent_for_owner, job_queue_position, parse_job_id
from jobs.services import job_cancel
from notifications.db import socket_db
from notifications.events import (
    JobPayload,
    LayerJobMessage,
    encode,
    error_frame_text,
    job_frame_text,
    job_payload,
)
from notifications.groups import job_group, owner_group
from notifications.layers import deliver_directly, stop_direct

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 4096  # DESIGN.md: a client frame over 4 KiB closes with 1009
FLOOD_BURST = 20  # client frames allowed at once ...
FLOOD_RATE = 5.0  # ... refilled per second; past that the socket closes with 4429

CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_NOT_FOUND = 4404
CLOSE_FLOOD = 4429


class JobStreamConsumer(AsyncWebsocketConsumer):
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
        # Accept first: a close before accept reaches browsers as a failed handshake
        # with no code, and the client could not tell "not found" from "try again".
        await self.accept()
        await self.start_stream()

    async def start_stream(self) -> None:
        raise NotImplementedError

    async def join(self, group: str) -> None:
        assert self.channel_layer is not None
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined.append(group)

    def go_direct(self) -> None:
        """Called once the snapshot is sent: later job frames come straight from the
        layer's subscriber (notifications/layers.py), not through this consumer's
        queue and dispatch loop. Frames already queued still pass the seq filter."""
        deliver_directly(self.channel_name, self.push)

    async def push(self, message: LayerJobMessage) -> None:
        if not self.closed:
            await self.job_frame(message)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        self.closed = True
        stop_direct(self.channel_name)
        await super().close(code=code, reason=reason)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        # As Channels' own, minus its close_old_connections() in a worker thread: when
        # the sockets of finished jobs closed together, those thread hops queued up
        # behind each other and held up frames for the jobs still running.
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def disconnect(self, code: int) -> None:
        self.closed = True
        stop_direct(self.channel_name)
        if self.channel_layer is None:
            return
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    # --- server → client ---------------------------------------------------------

    def payload(self, job: Job) -> JobPayload:
        """The job's JSON for this socket (sync: may count the queue)."""
        staff = bool(self.owner and self.owner.is_staff)
        return job_payload(job, staff=staff, queue_position=job_queue_position(job=job))

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels 4.2+ runs close_old_connections() in a worker thread before every
        # handler: a thread round trip per message, once most of daphne's cost per
        # frame sent and, when many sockets close together, per disconnect. Handlers
        # here that touch the database go through socket_db (notifications/db.py) or
        # database_sync_to_async, which look after connections themselves.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def job_frame(self, event: LayerJobMessage) -> None:
        """A change published by a worker or a web process (type `job.frame`)."""
        if self.closed or event["seq"] <= self.last_seq.get(event["job_id"], 0):
            return
        self.last_seq[event["job_id"]] = event["seq"]
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
        except ValueError:
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

    async def on_cancel(self, frame: dict[str, Any]) -> None:
        await self.cancel(self.job_id)


class OwnerJobsConsumer(JobStreamConsumer):
    """`/ws/jobs/`: a snapshot of the owner's recent jobs, then every change to any of them."""

    async def start_stream(self) -> None:
        # One trip to the database for the owner, a second one for the snapshot: the
        # group to join before the snapshot is read depends on the owner.
        self.owner = await socket_db(owner_from_scope, self.scope)
        payloads: list[JobPayload] = []
        if self.owner is not None:
            await self.join(owner_group(self.owner.key))
            payloads = await socket_db(self._snapshot)
        for payload in payloads:
            self.last_seq[payload["id"]] = payload["seq"]
        await self.send(text_data=encode({"type": "snapshot", "jobs": payloads}))
        self.go_direct()

    def _snapshot(self) -> list[JobPayload]:
        assert self.owner is not None
        return [self.payload(job) for job in job_list_recent_for_owner(owner=self.owner)]

    async def on_cancel(self, frame: dict[str, Any]) -> None:
        if "id" not in frame:
            await self.send_error("A cancel frame on this socket needs the job's id.")
            return
        await self.cancel(frame["id"])
