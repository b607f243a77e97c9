"""Streams that heal when Redis restarts (issue 5, fault 2).

The layer tests run jobstream's channel layer in this process against a Redis of
their own, stopped and started again on the same port. The end-to-end test runs a
daphne and a Celery worker (threads pool) on a Redis of its own too, restarts that
Redis while jobs run and WebSocket watchers listen, and checks that every watcher
ends on the job's true terminal state (the database's) within RECOVERY_SECONDS of
Redis being back, with seq never going backwards. None of it touches the session's
Redis, which the other tests share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import select
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
import redis.asyncio
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client, override_settings
from django.utils import timezone
from websockets.asyncio.client import ClientConnection, connect

from core.asgi import application
from core.compat.channels_redis import (
    JobStreamChannelLayer,
    SharedReads,
    deliver_directly,
    stop_direct,
    subscriber_reconnects,
)
from core.redis_local import redis_answers
from core.settings import channel_layers_for
from jobs.models import Job, JobState
from jobs.serializers import job_frame_text, job_payload
from notifications.groups import staff_group
from notifications.publish import PUBLISH_TIMEOUT, Publisher, ShardWriter, blocking_pool, packed_by_shard
from tests.accounts import VIEW_ALL_JOBS, user_with
from tests.live_daphne import DaphneProcess, start_celery_worker
from tests.processes import RestartableRedis, stop_process
from tests.waiting import async_wait_until, wait_until

RECOVERY_SECONDS = 5.0  # issue 5: every socket shows the true state this soon after Redis is back
FRAME_TIMEOUT = 5.0  # seconds for one frame to cross Redis on this machine
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def own_redis() -> Iterator[RestartableRedis]:
    server = RestartableRedis()
    yield server
    server.stop()


def frame(seq: int, *, job_id: str = "a", terminal: bool = False) -> dict[str, Any]:
    return {"type": "job.frame", "job_id": job_id, "seq": seq, "terminal": terminal, "text": "{}"}


@pytest.fixture
async def layer(own_redis: RestartableRedis) -> AsyncIterator[JobStreamChannelLayer]:
    layer = JobStreamChannelLayer(hosts=[{"address": own_redis.url}])
    yield layer
    await layer._get_layer().flush()


def publish(layer: JobStreamChannelLayer, batch: list[tuple[list[str], dict[str, Any]]]) -> None:
    """Publishes through a publisher of the layer's own, from a thread (as workers do)."""
    publisher = Publisher(layer=layer)
    for groups, message in batch:
        publisher.send_job_frame(groups, cast(Any, message))
    assert publisher.flush(timeout=FRAME_TIMEOUT)


async def direct_socket(layer: JobStreamChannelLayer, group: str) -> tuple[str, list[Any], list[SharedReads]]:
    """A channel in `group` fed directly, recording what it is pushed and each resync."""
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    pushed: list[Any] = []
    resyncs: list[SharedReads] = []

    async def push(message: Any) -> None:
        pushed.append(message)

    async def resync(reads: SharedReads) -> None:
        resyncs.append(reads)

    deliver_directly(channel, push, resync)
    return channel, pushed, resyncs


# --- the layer ---------------------------------------------------------------------


async def test_subscriber_resubscribes_and_resyncs_direct_sockets_once_redis_is_back(
    own_redis: RestartableRedis, layer: JobStreamChannelLayer
) -> None:
    channel, pushed, resyncs = await direct_socket(layer, "heal-a")
    try:
        await asyncio.to_thread(publish, layer, [(["heal-a"], frame(1))])
        assert await async_wait_until(lambda: _true(len(pushed) == 1), timeout=FRAME_TIMEOUT)
        assert resyncs == []  # the first connection is no reconnect
        reconnects = subscriber_reconnects()

        own_redis.stop()
        with pytest.raises(redis.ConnectionError):  # truly gone: nobody hears this one
            redis.Redis.from_url(own_redis.url).publish("asgi__group__heal-a", b"x")
        own_redis.start()
        back = time.monotonic()

        assert await async_wait_until(lambda: _true(len(resyncs) == 1), timeout=RECOVERY_SECONDS)
        assert time.monotonic() - back < RECOVERY_SECONDS
        assert subscriber_reconnects() == reconnects + 1
        # Re-subscribed: a frame published now arrives.
        await asyncio.to_thread(publish, layer, [(["heal-a"], frame(2))])
        assert await async_wait_until(lambda: _true(len(pushed) == 2), timeout=FRAME_TIMEOUT)
        assert pushed[-1]["seq"] == 2
    finally:
        stop_direct(channel)


async def test_a_group_left_while_redis_is_away_is_unsubscribed_once_it_is_back(
    own_redis: RestartableRedis, layer: JobStreamChannelLayer
) -> None:
    staying, _, resyncs = await direct_socket(layer, "heal-stay")
    leaving = await layer.new_channel()
    await layer.group_add("heal-leave", leaving)
    try:
        own_redis.stop()
        await layer.group_discard("heal-leave", leaving)  # logged, not raised
        own_redis.start()
        assert await async_wait_until(lambda: _true(len(resyncs) == 1), timeout=RECOVERY_SECONDS)

        client = redis.asyncio.Redis.from_url(own_redis.url)

        async def subscribed() -> set[str]:
            return {name.decode() for name in await client.pubsub_channels("asgi__group__heal-*")}

        async def only_staying() -> bool:
            return await subscribed() == {"asgi__group__heal-stay"}

        assert await async_wait_until(only_staying, timeout=FRAME_TIMEOUT), await subscribed()
        await client.aclose()
    finally:
        stop_direct(staying)


async def _true(value: bool) -> bool:
    return value


async def test_shared_reads_run_each_key_once_for_every_socket_asking() -> None:
    reads = SharedReads()
    calls: list[str] = []

    async def read(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0.01)
        return key.upper()

    results = await asyncio.gather(
        *(reads.get(key, lambda key=key: read(key)) for key in ["job-1", "job-1", "job-2", "job-1"])  # type: ignore[misc]
    )
    assert results == ["JOB-1", "JOB-1", "JOB-2", "JOB-1"]
    assert sorted(calls) == ["job-1", "job-2"]
    assert reads.count == 2


# --- the staff live view: a fresh snapshot once Redis is back ----------------------


@pytest.fixture
async def layer_on_own_redis(own_redis: RestartableRedis) -> AsyncIterator[None]:
    """This process's channel layer (the one consumers use) on the test's own Redis."""
    with override_settings(CHANNEL_LAYERS=channel_layers_for(own_redis.url)):
        yield
        layer = get_channel_layer()
        assert isinstance(layer, JobStreamChannelLayer)
        await layer._get_layer().flush()


async def staff_socket() -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        application,
        "/ws/staff/jobs/",
        headers=[
            (b"host", b"127.0.0.1"),
            (b"origin", b"http://127.0.0.1"),
            (b"cookie", f"sessionid={await staff_session()}".encode()),
        ],
    )
    connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert connected, "the staff socket's handshake was refused"
    return communicator


@database_sync_to_async
def staff_session() -> str:
    client = Client()
    client.force_login(user_with("clerk", VIEW_ALL_JOBS, is_staff=True))
    return client.cookies[settings.SESSION_COOKIE_NAME].value


@database_sync_to_async
def job_row(*, state: JobState, seq: int) -> Job:
    """A job row with no task behind it: no worker of the session may pick it up."""
    now = timezone.now()
    return Job.objects.create(
        owner_token=secrets.token_hex(16), kind="sleep", params={}, state=state, seq=seq, created_at=now, updated_at=now
    )


async def next_frame(communicator: WebsocketCommunicator, timeout: float) -> dict[str, Any]:
    """The next job or snapshot frame, past the job's log frames."""
    while True:
        output = await communicator.receive_output(timeout=timeout)
        assert output["type"] == "websocket.send", f"expected a frame, got {output}"
        frame: dict[str, Any] = json.loads(output["text"])
        if frame["type"] != "log":
            return frame


@pytest.mark.django_db(transaction=True)
async def test_staff_socket_gets_a_fresh_snapshot_once_redis_is_back(
    own_redis: RestartableRedis, layer_on_own_redis: None
) -> None:
    ends_while_down = await job_row(state=JobState.QUEUED, seq=1)
    runs_on = await job_row(state=JobState.RUNNING, seq=3)
    communicator = await staff_socket()
    try:
        first = await next_frame(communicator, FRAME_TIMEOUT)
        assert first["type"] == "snapshot"
        assert {job["id"] for job in first["jobs"]} == {str(ends_while_down.id), str(runs_on.id)}

        await asyncio.to_thread(own_redis.stop)
        # Changes made while Redis is away: whatever was published about them is lost.
        ended = timezone.now()
        await database_sync_to_async(Job.objects.filter(pk=ends_while_down.pk).update)(
            state=JobState.CANCELLED, seq=2, finished_at=ended, updated_at=ended
        )
        await database_sync_to_async(Job.objects.filter(pk=runs_on.pk).update)(
            seq=9, has_progress=True, progress_current=4, progress_total=10, progress_message="step 4"
        )
        started_while_down = await job_row(state=JobState.QUEUED, seq=1)
        await asyncio.to_thread(own_redis.start)

        fresh = await next_frame(communicator, RECOVERY_SECONDS)

        assert fresh["type"] == "snapshot"
        shown = {job["id"]: job for job in fresh["jobs"]}
        assert set(shown) == {str(runs_on.id), str(started_while_down.id)}  # the cancelled job has left
        assert shown[str(runs_on.id)]["seq"] == 9
        assert shown[str(runs_on.id)]["progress"]["percent"] == 40.0
        assert fresh["counts"] == {"queued": 1, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 1}
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_staff_resync_snapshot_keeps_progress_sent_ahead_of_the_row(
    own_redis: RestartableRedis, layer_on_own_redis: None
) -> None:
    job = await job_row(state=JobState.RUNNING, seq=3)
    communicator = await staff_socket()
    try:
        assert (await next_frame(communicator, FRAME_TIMEOUT))["type"] == "snapshot"
        # A worker publishes progress at once and writes its row only now and then
        # (jobs/services/transitions.py, SEQ_WINDOW): the screen is ahead of the database.
        job.seq, job.has_progress, job.progress_current, job.progress_total = 7, True, 6, 10
        message = {
            "type": "job.frame",
            "job_id": str(job.id),
            "seq": 7,
            "terminal": False,
            "text": job_frame_text(job_payload(job)),
        }
        layer = get_channel_layer()
        assert isinstance(layer, JobStreamChannelLayer)
        await asyncio.to_thread(publish, layer, [([staff_group()], message)])
        assert (await next_frame(communicator, FRAME_TIMEOUT))["job"]["seq"] == 7

        await asyncio.to_thread(own_redis.restart)
        fresh = await next_frame(communicator, RECOVERY_SECONDS)

        assert fresh["type"] == "snapshot"
        [shown] = fresh["jobs"]
        assert (shown["seq"], shown["progress"]["percent"]) == (7, 60.0)  # not the row's seq 3
    finally:
        await communicator.disconnect()


# --- end to end: daphne, a worker, watchers, and Redis restarted under them ----------


@dataclass
class Watch:
    """What one socket showed, in arrival order, with the time each frame came."""

    frames: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def jobs(self, job_id: str) -> list[dict[str, Any]]:
        return [job for _, job in self.frames if job["id"] == job_id]

    def ended_at(self, job_id: str) -> float | None:
        return next((at for at, job in self.frames if job["id"] == job_id and job["state"] in TERMINAL), None)


def open_socket(web_url: str, path: str, sessionid: str) -> Any:
    return connect(
        f"{web_url.replace('http://', 'ws://')}{path}",
        origin=web_url,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={sessionid}"},
        open_timeout=FRAME_TIMEOUT,
    )


async def watch_job(socket: ClientConnection, job_id: str, watch: Watch) -> None:
    """Reads a single-job socket until its terminal frame."""
    async for text in socket:
        message = json.loads(text)
        if message["type"] == "log":  # the job's log lines, between its frames
            continue
        assert message["type"] == "job", message
        watch.frames.append((time.time(), message["job"]))
        if message["job"]["state"] in TERMINAL:
            return


async def watch_owner(socket: ClientConnection, job_ids: set[str], watch: Watch) -> None:
    """Reads the owner socket until every job in `job_ids` has shown a terminal state."""
    async for text in socket:
        message = json.loads(text)
        jobs = message["jobs"] if message["type"] == "snapshot" else [message["job"]]
        for job in jobs:
            watch.frames.append((time.time(), job))
        if all(watch.ended_at(job_id) is not None for job_id in job_ids):
            return


def assert_seq_never_goes_back(watch: Watch, job_id: str) -> None:
    seqs = [job["seq"] for job in watch.jobs(job_id)]
    assert seqs == sorted(set(seqs)), f"job {job_id}: seq went backwards or repeated: {seqs}"


@pytest.fixture
def stack(
    own_redis: RestartableRedis, live_server_env: dict[str, str], transactional_db: None, tmp_path: Path
) -> Iterator[tuple[DaphneProcess, RestartableRedis]]:
    """daphne and a Celery worker (threads) on the test database and a Redis of their own."""
    env = {**live_server_env, "REDIS_URL": own_redis.url, "LOG_LEVEL": "INFO"}
    daphne = DaphneProcess(env=env, log=tmp_path / "daphne.log")
    worker = start_celery_worker(env=env, log=tmp_path / "worker.log", pool="threads", concurrency=8)
    try:
        daphne.start()
        if not wait_until(lambda: " ready." in (tmp_path / "worker.log").read_text(errors="replace"), timeout=30):
            raise RuntimeError(f"the worker did not start:\n{(tmp_path / 'worker.log').read_text()[-3000:]}")
        yield daphne, own_redis
    finally:
        stop_process(worker)
        daphne.stop()


# Three jobs: one ends while Redis is down (its terminal frame is never published
# anywhere), one ends soon after it is back, one runs on well past that.
JOBS = {
    "ends-while-down": {"steps": 12, "step_seconds": 0.25},
    "ends-soon-after": {"steps": 24, "step_seconds": 0.25},
    "runs-on": {"steps": 48, "step_seconds": 0.25},
}
DOWN_SECONDS_MAX = 10.0  # the first job ends within this while Redis is down
WATCH_TIMEOUT = 30.0  # seconds from Redis's return for every watcher to be done (the last job runs ~12 s)


async def test_every_watcher_ends_on_the_true_state_within_5_s_of_redis_coming_back(
    stack: tuple[DaphneProcess, RestartableRedis],
) -> None:
    daphne, own_redis = stack
    async with httpx.AsyncClient(base_url=daphne.url, timeout=FRAME_TIMEOUT) as client:
        assert (await client.get("/")).status_code == 200
        sessionid, csrf = client.cookies["sessionid"], client.cookies["csrftoken"]
        ids: dict[str, str] = {}
        for name, params in JOBS.items():
            response = await client.post(
                "/api/jobs/", json={"kind": "sleep", "params": params}, headers={"X-CSRFToken": csrf}
            )
            assert response.status_code == 201, response.text
            ids[name] = response.json()["id"]

    job_watches = {name: Watch() for name in JOBS}
    owner_watch = Watch()
    second_watch = Watch()  # a second socket on the job that ends while Redis is down
    async with (
        open_socket(daphne.url, "/ws/jobs/", sessionid) as owner_socket,
        open_socket(daphne.url, f"/ws/jobs/{ids['ends-while-down']}/", sessionid) as socket_a,
        open_socket(daphne.url, f"/ws/jobs/{ids['ends-soon-after']}/", sessionid) as socket_b,
        open_socket(daphne.url, f"/ws/jobs/{ids['runs-on']}/", sessionid) as socket_c,
        open_socket(daphne.url, f"/ws/jobs/{ids['ends-while-down']}/", sessionid) as socket_a2,
    ):
        sockets = dict(zip(JOBS, (socket_a, socket_b, socket_c), strict=True))
        tasks = [asyncio.create_task(watch_job(sockets[name], ids[name], job_watches[name])) for name in JOBS]
        tasks.append(asyncio.create_task(watch_owner(owner_socket, set(ids.values()), owner_watch)))
        tasks.append(asyncio.create_task(watch_job(socket_a2, ids["ends-while-down"], second_watch)))

        # Redis goes away once every job runs and its watcher has shown that live.
        def all_running_on_screen() -> bool:
            return all(any(job["state"] == "running" for job in job_watches[name].jobs(ids[name])) for name in JOBS)

        assert await async_wait_until(lambda: _true(all_running_on_screen()), timeout=30, interval=0.05)
        await asyncio.to_thread(own_redis.stop)
        down_at = time.time()

        def first_job_ended() -> bool:
            return Job.objects.get(pk=ids["ends-while-down"]).is_terminal

        assert await asyncio.to_thread(wait_until, first_job_ended, timeout=DOWN_SECONDS_MAX, interval=0.05)
        assert job_watches["ends-while-down"].ended_at(ids["ends-while-down"]) is None  # it cannot know yet
        await asyncio.to_thread(own_redis.start)
        back_at = time.time()

        # Every watcher should be done RECOVERY_SECONDS after the last job ends; the
        # assertions below say which one was not.
        _, pending = await asyncio.wait(tasks, timeout=WATCH_TIMEOUT)
        for task in pending:
            task.cancel()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    truth = {name: Job.objects.get(pk=ids[name]) for name in JOBS}
    for name, job in truth.items():
        assert job.is_terminal, f"{name} is still {job.state} in the database"
        assert job.finished_at is not None
        # A job that ended before Redis was back is due RECOVERY_SECONDS after that;
        # one that ended later, that long after its end.
        due = max(back_at, job.finished_at.timestamp()) + RECOVERY_SECONDS
        watches = [(job_watches[name], f"job socket of {name}"), (owner_watch, f"owner socket, {name}")]
        if name == "ends-while-down":
            watches.append((second_watch, f"second job socket of {name}"))
        for watch, label in watches:
            last = watch.jobs(ids[name])[-1]
            assert (last["state"], last["seq"]) == (job.state, job.seq), f"{label} ended on {last}"
            ended_at = watch.ended_at(ids[name])
            assert ended_at is not None
            delay = ended_at - (due - RECOVERY_SECONDS)
            # The figures (pytest -s): how long after Redis was back (or the job ended).
            print(f"{label}: true terminal state shown {delay:.2f} s after Redis was back or the job ended")
            assert ended_at <= due, f"{label}: terminal state shown {delay:.2f} s after it was due"
            assert_seq_never_goes_back(watch, ids[name])
    first_end = truth["ends-while-down"].finished_at
    assert first_end is not None and first_end.timestamp() < back_at, "the first job did not end while Redis was down"
    assert down_at < back_at
    log = daphne.log.read_text(errors="replace")
    # Five sockets, four reads: the two sockets of one job shared theirs.
    assert "resynced 5 socket(s) after Redis came back: 4 database read(s)" in log, log[-3000:]
    assert redis_answers(own_redis.url)


# --- the worker's blocking publisher -------------------------------------------------


def subscribed(url: str, channel: str) -> Any:
    pubsub = redis.Redis.from_url(url).pubsub()
    pubsub.subscribe(channel)
    assert wait_until(lambda: pubsub.get_message(timeout=0.1) is not None, timeout=FRAME_TIMEOUT)  # the confirmation
    return pubsub


def next_data(pubsub: Any) -> bytes | None:
    deadline = time.monotonic() + FRAME_TIMEOUT
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message is not None and message["type"] == "message":
            return bytes(message["data"])
    return None


def writer_socket(writer: ShardWriter) -> Any:
    connection: Any = writer.connection
    return connection._sock


def packed(layer: JobStreamChannelLayer, group: str, message: dict[str, Any]) -> bytes:
    return packed_by_shard(layer, [([group], message)], 1)[0]


def test_a_shard_writer_reaches_subscribers_and_redis_sends_it_no_replies(own_redis: RestartableRedis) -> None:
    layer = JobStreamChannelLayer(hosts=[{"address": own_redis.url}])
    writer = ShardWriter(blocking_pool({"address": own_redis.url}))
    pubsub = subscribed(own_redis.url, "asgi__group__quiet")
    writer.send(b"".join(packed(layer, "quiet", frame(seq)) for seq in range(1, 51)))
    seqs = [layer.deserialize(next_data(pubsub))["seq"] for _ in range(50)]
    assert seqs == list(range(1, 51))
    readable, _, _ = select.select([writer_socket(writer)], [], [], 0.5)
    assert readable == []  # 50 PUBLISHes and not a byte back: CLIENT REPLY OFF holds


def test_a_shard_writer_reconnects_with_replies_off_after_a_redis_restart(own_redis: RestartableRedis) -> None:
    layer = JobStreamChannelLayer(hosts=[{"address": own_redis.url}])
    writer = ShardWriter(blocking_pool({"address": own_redis.url}))
    writer.send(packed(layer, "restart", frame(1)))
    own_redis.restart()
    pubsub = subscribed(own_redis.url, "asgi__group__restart")
    # The first write after the restart may go into the dead connection's kernel buffer
    # (lost, as anything published while Redis is away); within a few it fails, and the
    # writer reconnects and turns replies off again.
    received: bytes | None = None
    for seq in range(2, 12):
        with contextlib.suppress(redis.ConnectionError):
            writer.send(packed(layer, "restart", frame(seq)))
        received = next_data(pubsub) if seq >= 3 else None
        if received is not None:
            break
    assert received is not None and layer.deserialize(received)["type"] == "job.frame"
    readable, _, _ = select.select([writer_socket(writer)], [], [], 0.5)
    assert readable == []


def test_a_publisher_writes_from_the_callers_thread_and_survives_a_redis_restart(own_redis: RestartableRedis) -> None:
    with override_settings(CHANNEL_LAYERS=channel_layers_for(own_redis.url)):
        publisher = Publisher()
        pubsub = subscribed(own_redis.url, "asgi__group__pub-restart")
        publisher.send_job_frame(["pub-restart"], cast(Any, frame(1)))
        assert publisher._handed == 0  # written by this thread: nothing went to the sender
        data = next_data(pubsub)
        assert data is not None and get_channel_layer().deserialize(data)["seq"] == 1

        own_redis.stop()
        started = time.monotonic()
        for seq in range(2, 6):  # Redis away: frames are given up on, the caller is not held
            publisher.send_job_frame(["pub-restart"], cast(Any, frame(seq)))
        assert time.monotonic() - started < 3 * PUBLISH_TIMEOUT
        assert publisher.flush(timeout=10 * PUBLISH_TIMEOUT)
        assert publisher._handed >= 1  # the failed write went to the sender thread

        own_redis.start()
        pubsub = subscribed(own_redis.url, "asgi__group__pub-restart")
        arrived: list[int] = []
        for seq in range(6, 20):
            publisher.send_job_frame(["pub-restart"], cast(Any, frame(seq)))
            publisher.flush(timeout=FRAME_TIMEOUT)
            message = pubsub.get_message(timeout=0.5)
            if message is not None and message["type"] == "message":
                arrived.append(get_channel_layer().deserialize(message["data"])["seq"])
                break
        assert arrived, "no frame arrived after Redis came back"
        assert wait_until(lambda: publisher._direct, timeout=FRAME_TIMEOUT)  # callers write their own again
