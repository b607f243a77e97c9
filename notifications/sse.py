"""Server-Sent Events at `/api/jobs/<id>/events/`: the fallback when WebSockets fail.

`id: <seq>`, `event: job`, `data: <job JSON>`; honours `Last-Event-ID`; ends after the
terminal state. Like the sockets, it joins the job's group before it reads the
snapshot. A quiet stream re-reads the job now and then, so a frame dropped by the
layer cannot leave it waiting forever.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from core.api_errors import errors_response, method_not_allowed_response
from jobs.models import Job
from jobs.owners import Owner, owner_from_request
from jobs.selectors import job_get_visible, job_queue_position
from jobs.serializers import job_payload, payload_text
from notifications.groups import job_group
from notifications.messages import LayerJobMessage

KEEPALIVE_SECONDS = 15.0  # a comment line this often keeps proxies from closing a quiet stream
RESYNC_EVERY = 4  # keep-alives between database re-reads (about a minute)
LAST_EVENT_ID_DIGITS = 19  # a seq is a PositiveBigIntegerField: 19 digits hold every one


def _event(seq: int, job_json: str) -> bytes:
    return f"id: {seq}\nevent: job\ndata: {job_json}\n\n".encode()


def _job_event(job: Job, *, staff: bool, queue_position: int | None) -> bytes:
    return _event(job.seq, payload_text(job_payload(job, staff=staff, queue_position=queue_position)))


async def _read(job_id: Any) -> tuple[Job, int | None]:
    job = await database_sync_to_async(Job.objects.get)(pk=job_id)
    return job, await database_sync_to_async(job_queue_position)(job=job)


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
    if raw_last and not (raw_last.isascii() and raw_last.isdigit() and len(raw_last) <= LAST_EVENT_ID_DIGITS):
        return errors_response(
            400,
            "Last-Event-ID",
            f"Must be a whole number of at most {LAST_EVENT_ID_DIGITS} digits: the seq of the last event seen.",
        )
    last_seq = int(raw_last) if raw_last else -1
    response = StreamingHttpResponse(
        _stream(job.id, last_seq=last_seq, staff=owner.is_staff), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass events through at once
    return response


async def _stream(job_id: Any, *, last_seq: int, staff: bool) -> AsyncIterator[bytes]:
    layer = get_channel_layer()
    assert layer is not None
    channel = await layer.new_channel()
    group = job_group(job_id)
    await layer.group_add(group, channel)
    receiving: asyncio.Future[Any] | None = None
    try:
        job, position = await _read(job_id)
        if job.seq > last_seq:
            last_seq = job.seq
            yield _job_event(job, staff=staff, queue_position=position)
        if job.is_terminal:
            return
        yield b"retry: 2000\n\n"
        quiet = 0
        while True:
            if receiving is None:
                # One receive in flight across keep-alives: cancelling it would make
                # the pub/sub layer unsubscribe the channel.
                receiving = asyncio.ensure_future(layer.receive(channel))
            done, _ = await asyncio.wait({receiving}, timeout=KEEPALIVE_SECONDS)
            if done:
                message: LayerJobMessage = receiving.result()
                receiving = None
                if message["seq"] > last_seq:
                    last_seq = message["seq"]
                    yield _event(last_seq, json.dumps(json.loads(message["text"])["job"]))
                if message["terminal"]:
                    return
                continue
            quiet += 1
            if quiet % RESYNC_EVERY:
                yield b": keep-alive\n\n"
                continue
            job, position = await _read(job_id)  # heals a frame the layer dropped
            if job.seq > last_seq:
                last_seq = job.seq
                yield _job_event(job, staff=staff, queue_position=position)
            if job.is_terminal:
                return
    finally:
        if receiving is not None:
            receiving.cancel()
        await layer.group_discard(group, channel)
