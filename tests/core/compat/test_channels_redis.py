"""core/compat/channels_redis.py: jobstream's channel layer on the real channels-redis.

Bounded latest-wins queues, once-per-process decoding, the group names and shards the
publisher writes to (checked against the stock layer's own methods), and the canaries of
the internals the layer overrides. Streams healing after Redis restarts are in
tests/notifications/test_healing.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from channels.layers import get_channel_layer
from channels_redis import utils
from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection

from core.compat import channels_redis as compat_layer
from core.compat.channels_redis import BEHIND, CONSUMER_QUEUE_LIMIT, JobStreamChannelLayer, LatestWinsQueue
from notifications.messages import LayerJobMessage
from notifications.publish import Publisher
from tests.core.compat.upstream import changed_sources

# The channels-redis code the layer overrides, repeats or calls, as it was when it was written.
UPSTREAM = {
    "RedisPubSubChannelLayer.__init__": (RedisPubSubChannelLayer.__init__, "b0e717765373b2f6"),
    "RedisPubSubChannelLayer._get_layer": (RedisPubSubChannelLayer._get_layer, "1862b87a25ac72b2"),
    "RedisPubSubLoopLayer.__init__": (RedisPubSubLoopLayer.__init__, "fd9d37e275298a58"),
    "RedisPubSubLoopLayer._get_group_channel_name": (RedisPubSubLoopLayer._get_group_channel_name, "c3139bae61c673aa"),
    "RedisPubSubLoopLayer._get_shard": (RedisPubSubLoopLayer._get_shard, "9c655ee12ccbc91e"),
    "RedisPubSubLoopLayer._subscribe_to_channel": (RedisPubSubLoopLayer._subscribe_to_channel, "3da2e955db06450f"),
    "RedisPubSubLoopLayer.receive": (RedisPubSubLoopLayer.receive, "2d3fa7938ba6e0a6"),
    "RedisPubSubLoopLayer.group_discard": (RedisPubSubLoopLayer.group_discard, "420c784f63b0fa9d"),
    "RedisSingleShardConnection.__init__": (RedisSingleShardConnection.__init__, "9c8f408acb4c2d7b"),
    "RedisSingleShardConnection._ensure_redis": (RedisSingleShardConnection._ensure_redis, "ba228d3cee7116dc"),
    "RedisSingleShardConnection._do_receiving": (RedisSingleShardConnection._do_receiving, "a822736dcb875e43"),
    "RedisSingleShardConnection._receive_message": (RedisSingleShardConnection._receive_message, "2f5f46af28e8ed76"),
    "utils._consistent_hash": (utils._consistent_hash, "a67f87dec0b0b75d"),
    "utils._wrap_close": (utils._wrap_close, "3d610af1683772a9"),
    "utils.create_pool": (utils.create_pool, "c706feb32b834078"),
}


def test_the_channels_redis_code_the_layer_relies_on_is_as_it_was_written_against() -> None:
    assert not changed_sources(UPSTREAM), "re-read core/compat/channels_redis.py against this channels-redis"


def test_the_layer_is_active_with_the_pinned_version_and_builds_its_own_loop_layer() -> None:
    assert compat_layer.LAYER.apply()
    layer = get_channel_layer()
    assert compat_layer.fast_layer(layer) is layer


async def test_the_layers_loop_layer_and_shards_are_jobstreams() -> None:
    layer = JobStreamChannelLayer(hosts=["redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0"])
    loop_layer = layer._get_layer()
    assert isinstance(loop_layer, compat_layer.JobStreamLoopLayer)
    assert [type(shard) for shard in loop_layer._shards] == [compat_layer.JobStreamShardConnection] * 2
    await loop_layer.flush()


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
async def test_the_publishers_group_channel_and_shard_are_the_stock_layers(shards: int) -> None:
    hosts = [f"redis://127.0.0.1:{port}/0" for port in range(1, shards + 1)]
    stock = RedisPubSubLoopLayer(hosts=hosts, prefix="pre")
    ours = JobStreamChannelLayer(hosts=hosts, prefix="pre")
    assert compat_layer.layer_prefix(ours) == "pre"
    assert [host["address"] for host in compat_layer.layer_hosts(ours)] == hosts
    for group in ("job.0123abcd", "owner.s.deadbeef", "jobs.staff", *(f"g{n}" for n in range(50))):
        channel = compat_layer.group_channel_name("pre", group)
        assert channel == stock._get_group_channel_name(group)
        assert stock._shards[compat_layer.shard_index(channel, shards)] is stock._get_shard(channel)


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


def publish(layer: JobStreamChannelLayer, batch: list[tuple[list[str], dict[str, Any]]]) -> None:
    publisher = Publisher(layer=layer)
    for groups, message in batch:
        publisher.send_job_frame(groups, cast(LayerJobMessage, message))
    assert publisher.flush(timeout=FRAME_TIMEOUT)


@pytest.mark.django_db
async def test_group_members_in_one_process_share_one_decoded_message(redis_server: Any) -> None:
    layer = get_channel_layer()
    assert isinstance(layer, JobStreamChannelLayer)
    channels = [await layer.new_channel() for _ in range(3)]
    for channel in channels:
        await layer.group_add("decode-once", channel)
    try:
        await asyncio.to_thread(publish, layer, [(["decode-once"], frame(7))])
        received = [await asyncio.wait_for(layer.receive(channel), FRAME_TIMEOUT) for channel in channels]
        assert all(message == frame(7) for message in received)
        assert received[0] is received[1] is received[2]
    finally:
        for channel in channels:
            await layer.group_discard("decode-once", channel)


@pytest.mark.django_db
async def test_published_frames_keep_their_order_and_reach_every_group(redis_server: Any) -> None:
    layer = get_channel_layer()
    assert isinstance(layer, JobStreamChannelLayer)
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("order-a", first)
    await layer.group_add("order-b", second)
    try:
        count = BEHIND  # a burst a socket takes whole, before it counts as behind
        await asyncio.to_thread(publish, layer, [(["order-a", "order-b"], frame(seq)) for seq in range(1, count + 1)])
        for channel in (first, second):
            seqs = [(await asyncio.wait_for(layer.receive(channel), FRAME_TIMEOUT))["seq"] for _ in range(count)]
            assert seqs == list(range(1, count + 1))
    finally:
        await layer.group_discard("order-a", first)
        await layer.group_discard("order-b", second)


async def test_a_waiting_get_takes_the_next_message_put() -> None:
    queue = LatestWinsQueue()
    getting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not getting.done()
    queue.put_nowait(frame(1))
    assert (await asyncio.wait_for(getting, FRAME_TIMEOUT))["seq"] == 1


async def test_a_cancelled_get_leaves_the_message_to_the_next_getter() -> None:
    queue = LatestWinsQueue()
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(frame(1))  # wakes the first getter ...
    first.cancel()  # ... which goes away before it takes it
    assert (await asyncio.wait_for(second, FRAME_TIMEOUT))["seq"] == 1
    assert queue.empty()
