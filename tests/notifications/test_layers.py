"""jobstream's channel layer: bounded latest-wins queues and once-per-process decoding."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.layers import get_channel_layer

from notifications.layers import BEHIND, CONSUMER_QUEUE_LIMIT, JobStreamChannelLayer, LatestWinsQueue

FRAME_TIMEOUT = 5.0  # seconds for a frame to come back through the test Redis


def frame(seq: int, *, terminal: bool = False, job_id: str = "a") -> dict[str, Any]:
    return {"type": "job.frame", "job_id": job_id, "seq": seq, "terminal": terminal, "text": "{}"}


async def test_every_change_waits_its_turn_until_the_socket_is_behind() -> None:
    queue = LatestWinsQueue()
    for seq in range(1, BEHIND + 1):
        queue.put_nowait(frame(seq, job_id="a"))
    assert [queue.get_nowait()["seq"] for _ in range(queue.qsize())] == list(range(1, BEHIND + 1))


async def test_once_behind_a_progress_frame_replaces_the_waiting_one_of_its_job() -> None:
    queue = LatestWinsQueue()
    for seq in range(1, BEHIND + 6):
        queue.put_nowait(frame(seq, job_id="a"))
    queue.put_nowait(frame(1, job_id="b"))
    waiting = [(m["job_id"], m["seq"]) for m in (queue.get_nowait() for _ in range(queue.qsize()))]
    assert waiting == [("a", BEHIND + 5), *[("a", seq) for seq in range(2, BEHIND + 1)], ("b", 1)]


async def test_a_full_queue_drops_its_oldest_progress_frame_and_keeps_the_newest() -> None:
    queue = LatestWinsQueue()
    for seq in range(1, CONSUMER_QUEUE_LIMIT + 11):
        queue.put_nowait(frame(seq, job_id=f"job-{seq}"))
    seqs = [queue.get_nowait()["seq"] for _ in range(queue.qsize())]
    assert seqs == list(range(11, CONSUMER_QUEUE_LIMIT + 11))


async def test_a_full_queue_never_drops_a_terminal_frame() -> None:
    queue = LatestWinsQueue()
    queue.put_nowait(frame(1, terminal=True, job_id="done"))
    for seq in range(2, CONSUMER_QUEUE_LIMIT + 20):
        queue.put_nowait(frame(seq, job_id=f"job-{seq}"))
    first = queue.get_nowait()
    assert first["terminal"] and first["job_id"] == "done"


@pytest.mark.django_db
async def test_group_members_in_one_process_share_one_decoded_message(redis_server: Any) -> None:
    layer = get_channel_layer()
    assert isinstance(layer, JobStreamChannelLayer)
    channels = [await layer.new_channel() for _ in range(3)]
    for channel in channels:
        await layer.group_add("decode-once", channel)
    try:
        await layer.publish_group_messages([(["decode-once"], frame(7))])
        received = [await asyncio.wait_for(layer.receive(channel), FRAME_TIMEOUT) for channel in channels]
        assert all(message == frame(7) for message in received)
        assert received[0] is received[1] is received[2]
    finally:
        for channel in channels:
            await layer.group_discard("decode-once", channel)


@pytest.mark.django_db
async def test_publish_group_messages_keeps_order_and_reaches_every_group(redis_server: Any) -> None:
    layer = get_channel_layer()
    assert isinstance(layer, JobStreamChannelLayer)
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("order-a", first)
    await layer.group_add("order-b", second)
    try:
        count = BEHIND  # a burst a socket takes whole, before it counts as behind
        await layer.publish_group_messages([(["order-a", "order-b"], frame(seq)) for seq in range(1, count + 1)])
        for channel in (first, second):
            seqs = [(await asyncio.wait_for(layer.receive(channel), FRAME_TIMEOUT))["seq"] for _ in range(count)]
            assert seqs == list(range(1, count + 1))
    finally:
        await layer.group_discard("order-a", first)
        await layer.group_discard("order-b", second)
