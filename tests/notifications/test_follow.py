"""The follow seam (notifications/follow.py) over the real Redis layer: join before the
read, the seq filter, push and pull, healing after Redis comes back, and nothing read
while a stream is quiet.

The jobs here are rows only (no task behind them); frames are published as workers
publish them, through the publisher.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.test import override_settings

from core.compat.channels_redis import JobStreamChannelLayer
from core.redis_local import RedisProcess
from core.settings import channel_layers_for
from jobs.models import Job, JobState
from jobs.serializers import JobPayload, job_payload
from notifications.follow import Follow, job_follow, job_message, read_job
from notifications.groups import job_group, job_groups
from notifications.messages import LayerJobMessage
from notifications.publish import Publisher
from tests.processes import RestartableRedis
from tests.waiting import async_wait_until

pytestmark = pytest.mark.django_db(transaction=True)

FRAME_TIMEOUT = 5.0  # seconds for a frame to cross Redis on this machine
RECOVERY_SECONDS = 5.0  # every stream shows the true state this soon after Redis is back


async def next_frame(follow: Follow) -> LayerJobMessage | None:
    """The follow's next job frame (these streams show no log)."""
    message = await follow.next(timeout=FRAME_TIMEOUT)
    assert message is None or message["type"] == "job.frame", message
    return message


@database_sync_to_async
def job_row(*, state: JobState = JobState.RUNNING, seq: int = 3) -> Job:
    now = datetime.now(UTC)
    return Job.objects.create(
        owner_token=secrets.token_hex(16), kind="sleep", params={}, state=state, seq=seq, created_at=now, updated_at=now
    )


def frame_of(job: Job, seq: int, *, state: JobState = JobState.RUNNING) -> LayerJobMessage:
    job.seq, job.state = seq, state
    return job_message(job_payload(job))


def publish(publisher: Publisher, job: Job, message: LayerJobMessage) -> None:
    publisher.send_job_frame(job_groups(job), message)
    assert publisher.flush(timeout=FRAME_TIMEOUT)


class Counted:
    """A re-read that counts its calls."""

    def __init__(self, job: Job) -> None:
        self.job_id = job.id
        self.calls = 0

    def __call__(self) -> list[JobPayload]:
        self.calls += 1
        return read_job(self.job_id, staff=False)


async def _true(value: bool) -> bool:
    return value


async def test_a_change_published_between_the_join_and_the_read_is_not_missed() -> None:
    job = await job_row(seq=3)
    publisher = Publisher()
    follow = job_follow(job.id, staff=False)

    def read_after_a_change() -> list[JobPayload]:
        snapshot = read_job(job.id, staff=False)  # the state before the change ...
        publish(publisher, job, frame_of(job, 4))  # ... which lands while the stream reads
        return snapshot

    try:
        (first,) = await follow.open(read_after_a_change)
        follow.shown([first])
        message = await next_frame(follow)
        assert (first["seq"], message and message["seq"]) == (3, 4)
    finally:
        await follow.close()


async def test_only_frames_newer_than_the_last_shown_pass_in_order() -> None:
    job = await job_row(seq=3)
    publisher = Publisher()
    follow = job_follow(job.id, staff=False)
    try:
        follow.shown(await follow.open(lambda: read_job(job.id, staff=False)))
        for seq in (2, 3, 5, 4, 6):  # older, equal, newer, late, newer
            await asyncio.to_thread(publish, publisher, job, frame_of(job, seq))
        seen: list[int] = []
        while not seen or seen[-1] != 6:
            message = await next_frame(follow)
            assert message is not None, seen
            seen.append(message["seq"])
        # Each one newer than the last; a stream read late may skip to the newest (latest wins).
        assert seen == sorted(set(seen)) and min(seen) >= 5
        assert await follow.next(timeout=0.2) is None
    finally:
        await follow.close()


async def test_push_mode_hands_over_what_came_during_the_snapshot_then_each_newer_frame() -> None:
    job = await job_row(seq=3)
    publisher = Publisher()
    follow = job_follow(job.id, staff=False)
    pushed: list[int] = []

    async def sink(message: LayerJobMessage) -> None:
        pushed.append(message["seq"])

    try:
        follow.shown(await follow.open(lambda: read_job(job.id, staff=False)))
        await asyncio.to_thread(publish, publisher, job, frame_of(job, 4))  # before the sink: held
        held = lambda: _true(follow._held is not None and not follow._held.empty())  # noqa: E731
        assert await async_wait_until(held, timeout=FRAME_TIMEOUT)
        await follow.push_to(sink)
        assert pushed == [4]
        await asyncio.to_thread(publish, publisher, job, frame_of(job, 5, state=JobState.SUCCEEDED))
        assert await async_wait_until(lambda: _true(pushed == [4, 5]), timeout=FRAME_TIMEOUT)
    finally:
        await follow.close()


async def test_a_closed_follow_takes_nothing_more_and_leaves_its_groups(redis_server: RedisProcess) -> None:
    job = await job_row()
    follow = job_follow(job.id, staff=False)
    await follow.open(lambda: read_job(job.id, staff=False))
    client = redis.Redis.from_url(redis_server.url)
    channel = f"asgi__group__{job_group(job.id)}"
    assert client.pubsub_channels(channel) == [channel.encode()]
    await follow.close()
    assert await async_wait_until(lambda: _true(client.pubsub_channels(channel) == []), timeout=FRAME_TIMEOUT)
    client.close()


async def test_a_quiet_stream_reads_nothing_from_the_database() -> None:
    job = await job_row()
    reread = Counted(job)
    follow = Follow([job_group(job.id)], reread=reread, reread_key=("job", str(job.id), False))
    try:
        await follow.open(lambda: read_job(job.id, staff=False))
        for _ in range(4):  # four quiet intervals of a pull stream
            assert await follow.next(timeout=0.25) is None
        assert reread.calls == 0
    finally:
        await follow.close()


async def test_a_follow_on_a_stock_layer_gets_its_frames_through_its_channel(redis_server: RedisProcess) -> None:
    job = await job_row(seq=3)
    with override_settings(CHANNEL_LAYERS=channel_layers_for(redis_server.url, backend="stock-pubsub")):
        assert type(get_channel_layer()).__name__ == "RedisPubSubChannelLayer"
        publisher = Publisher()
        follow = job_follow(job.id, staff=False)
        try:
            follow.shown(await follow.open(lambda: read_job(job.id, staff=False)))
            await asyncio.to_thread(publish, publisher, job, frame_of(job, 4))
            message = await next_frame(follow)
            assert message is not None and message["seq"] == 4
        finally:
            await follow.close()


# --- healing: a layer of the test's own, on a Redis it restarts ------------------------------


@pytest.fixture
def own_redis() -> Iterator[RestartableRedis]:
    server = RestartableRedis()
    yield server
    server.stop()


@pytest.fixture
async def own_layer(own_redis: RestartableRedis) -> AsyncIterator[RestartableRedis]:
    with override_settings(CHANNEL_LAYERS=channel_layers_for(own_redis.url)):
        yield own_redis
        layer: Any = get_channel_layer()
        assert isinstance(layer, JobStreamChannelLayer)
        await layer._get_layer().flush()


async def test_after_redis_came_back_every_stream_of_a_job_shows_its_true_state_from_one_read(
    own_layer: RestartableRedis,
) -> None:
    job = await job_row(seq=3)
    reread = Counted(job)
    follows = [Follow([job_group(job.id)], reread=reread, reread_key=("job", str(job.id), False)) for _ in range(3)]
    pushed: list[list[int]] = [[] for _ in follows]

    def sink_for(seqs: list[int]) -> Any:
        async def sink(message: LayerJobMessage) -> None:
            seqs.append(message["seq"])

        return sink

    try:
        for follow, seqs in zip(follows, pushed, strict=True):
            follow.shown(await follow.open(lambda: read_job(job.id, staff=False)))
            await follow.push_to(sink_for(seqs))
        await asyncio.to_thread(own_layer.stop)
        # The job ends while Redis is away: its terminal frame is lost, the row holds it.
        await database_sync_to_async(Job.objects.filter(pk=job.pk).update)(state=JobState.SUCCEEDED, seq=9)
        await asyncio.to_thread(own_layer.start)  # the same port
        assert await async_wait_until(lambda: _true(all(seqs == [9] for seqs in pushed)), timeout=RECOVERY_SECONDS), (
            pushed
        )
        assert reread.calls == 1  # one read for the three streams
    finally:
        for follow in follows:
            await follow.close()


async def test_heal_passes_on_the_state_read_now_only_when_it_is_newer() -> None:
    job = await job_row(seq=3)
    follow = job_follow(job.id, staff=False)
    try:
        follow.shown(await follow.open(lambda: read_job(job.id, staff=False)))
        await follow.heal()  # nothing changed: nothing passes
        assert await follow.next(timeout=0.2) is None
        # The job ended and its terminal frame was lost on the way (Redis stayed up).
        await database_sync_to_async(Job.objects.filter(pk=job.pk).update)(state=JobState.SUCCEEDED, seq=7)
        await follow.heal()
        message = await next_frame(follow)
        assert message is not None and (message["seq"], message["terminal"]) == (7, True)
    finally:
        await follow.close()
