"""The Publisher (notifications.publish): the one sync → async crossing, over the real Redis layer."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from channels.layers import get_channel_layer
from django.test import override_settings

from core.settings import channel_layers_for
from jobs.models import Job, JobState
from notifications.groups import job_group, job_groups, owner_group
from notifications.publish import Publisher, publish_job_change, publisher

RECEIVE_TIMEOUT = 5.0  # seconds for one frame to cross Redis on this machine


def unsaved_job(*, seq: int, token: str = "p" * 32, job_id: uuid.UUID | None = None) -> Job:
    """A Job instance as the services hand it over; publishing needs no row."""
    now = datetime.now(UTC)
    return Job(
        id=job_id or uuid.uuid4(),
        owner_token=token,
        kind="sleep",
        params={"steps": 1, "step_seconds": 0},
        state=JobState.RUNNING,
        seq=seq,
        created_at=now,
        updated_at=now,
    )


async def subscribe(group: str) -> tuple[Any, str]:
    layer = get_channel_layer()
    assert layer is not None
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    return layer, channel


async def test_publish_job_change_reaches_job_group_member() -> None:
    job = unsaved_job(seq=7)
    layer, channel = await subscribe(job_group(job.id))

    publish_job_change(job)
    message = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)

    assert message["type"] == "job.frame"
    assert message["job_id"] == str(job.id)
    assert message["seq"] == 7
    assert message["terminal"] is False
    frame = json.loads(message["text"])
    assert frame["type"] == "job"
    assert frame["job"]["id"] == str(job.id)
    assert frame["job"]["seq"] == 7


async def test_publish_job_change_reaches_owner_group_member() -> None:
    job = unsaved_job(seq=3, token="o" * 32)
    layer, channel = await subscribe(owner_group(job.owner_key))

    publish_job_change(job)
    message = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)

    assert message["job_id"] == str(job.id)
    assert message["seq"] == 3


async def test_terminal_job_change_is_marked_terminal() -> None:
    job = unsaved_job(seq=9)
    job.state = JobState.SUCCEEDED
    layer, channel = await subscribe(job_group(job.id))

    publish_job_change(job)
    message = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)

    assert message["terminal"] is True


async def test_frames_from_one_process_arrive_in_seq_order() -> None:
    job_id = uuid.uuid4()
    layer, channel = await subscribe(job_group(job_id))

    for seq in range(1, 51):
        publish_job_change(unsaved_job(seq=seq, job_id=job_id))
    received: list[int] = []
    while not received or received[-1] < 50:
        received.append((await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT))["seq"])

    # A burst larger than a socket's queue keeps its newest frames (latest wins), in order.
    assert received == sorted(set(received))
    assert received[-1] == 50


def test_send_cancel_reaches_the_cancel_watcher() -> None:
    job_id = str(uuid.uuid4())
    heard = threading.Event()
    publisher.watch_cancel(job_id, heard.set)
    try:
        publisher.send_cancel(job_id)
        assert heard.wait(timeout=RECEIVE_TIMEOUT), "the watcher never heard the cancel"
    finally:
        publisher.unwatch_cancel(job_id)


def test_send_cancel_does_not_call_another_jobs_watcher() -> None:
    watched, other = str(uuid.uuid4()), str(uuid.uuid4())
    calls: list[str] = []
    heard_other = threading.Event()
    publisher.watch_cancel(watched, lambda: calls.append(watched))
    publisher.watch_cancel(other, heard_other.set)
    try:
        publisher.send_cancel(other)
        assert heard_other.wait(timeout=RECEIVE_TIMEOUT)
        assert calls == []
    finally:
        publisher.unwatch_cancel(watched)
        publisher.unwatch_cancel(other)


def test_flush_returns_true_once_everything_handed_over_was_sent() -> None:
    for seq in range(1, 21):
        publish_job_change(unsaved_job(seq=seq))

    assert publisher.flush(timeout=RECEIVE_TIMEOUT) is True


def test_flush_with_nothing_pending_returns_true_at_once() -> None:
    publisher.flush(timeout=RECEIVE_TIMEOUT)

    assert publisher.flush(timeout=0) is True


def test_cancel_signals_share_one_connection_for_the_process(redis_client: Any) -> None:
    publisher.send_cancel(str(uuid.uuid4()))  # the connection is opened once, here
    before = len(redis_client.client_list())
    for _ in range(20):
        publisher.send_cancel(str(uuid.uuid4()))
    assert len(redis_client.client_list()) == before


def test_the_cancel_signal_goes_through_the_channel_layers_redis_not_redis_url(redis_server: Any) -> None:
    dead = {"address": "redis://127.0.0.1:1/0"}
    with override_settings(
        REDIS_URL=dead["address"], REDIS_HOST=dead, CHANNEL_LAYERS=channel_layers_for(redis_server.url)
    ):
        own = Publisher()
        job_id = str(uuid.uuid4())
        heard = threading.Event()
        own.watch_cancel(job_id, heard.set)
        own.send_cancel(job_id)
        assert heard.wait(timeout=RECEIVE_TIMEOUT), "the cancel never crossed the layer's Redis"


async def test_frames_reach_subscribers_through_a_stock_channel_layer_too(redis_server: Any) -> None:
    # jobstream's layer off (another layer configured, or its patch out of range): the
    # sender thread sends each frame with group_send.
    with override_settings(CHANNEL_LAYERS=channel_layers_for(redis_server.url, backend="stock-pubsub")):
        own = Publisher()
        job = unsaved_job(seq=5)
        layer, channel = await subscribe(job_group(job.id))
        assert type(layer).__name__ == "RedisPubSubChannelLayer"
        own.send_job_frame(
            job_groups(job), {"type": "job.frame", "job_id": str(job.id), "seq": 5, "terminal": False, "text": "{}"}
        )
        message = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)
        assert message["seq"] == 5
