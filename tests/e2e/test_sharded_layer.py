"""A sharded channel layer by environment alone: 3 Redis shards (CHANNEL_REDIS_URLS, the
same order in every process), 2 daphnes, 2 workers. Every frame of every job reaches
every watcher, and the groups really spread over the shards.

The broker, results and quotas stay on REDIS_URL (the session's Redis, database 1, so the
session's in-process worker cannot take these jobs). A tap PSUBSCRIBEs to every group
channel on each shard before the first job: it sees every frame published, and on which
shard. The watchers (an owner socket on each daphne, and a single-job socket on each
daphne for every job) are all open before the workers start, so no frame can fall before
a watcher's first one: then the product's guarantee is that each watcher gets every
published frame whose seq is above the last it showed, in order, to the terminal one
(docs/contract.md, `seq` rules). So each watcher's seqs for a job must equal the tap's.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import asyncio as aioredis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from core.compat.channels_redis import JobStreamChannelLayer, group_channel_name, shard_index
from core.daphne_limits import daphne_command
from core.redis_local import RedisProcess, free_port, start_redis
from notifications.groups import job_group
from tests.conftest import ROOT
from tests.e2e.test_scale_out import TERMINAL, open_socket
from tests.processes import stop_process
from tests.waiting import async_wait_until, wait_until

SHARDS = 3
WORKERS = ("w1", "w2")
MIN_JOBS = 9
MAX_JOBS = 20  # 2 sockets a job + 2 owner sockets stay under JOB_QUOTA_SOCKETS' 50
JOB_PARAMS = {"steps": 8, "step_seconds": 0.1}  # under a second a job, several progress frames
START_TIMEOUT = 40.0  # seconds for both daphnes to answer
FRAME_TIMEOUT = 15.0  # seconds for an answer that needs no worker (a first frame, a close)
# Seconds from the workers' start to every job's end on every socket; a queued job's socket
# may wait that long for its next frame (workers take seconds to start on a busy machine).
RUN_TIMEOUT = 90.0
REDIS_DB = 1  # the broker's database on the session's Redis: see the module docstring
PREFIX = "asgi"  # the layer's channel prefix (channels-redis's default)


# --- the processes ---------------------------------------------------------------


@dataclass
class ShardedCluster:
    shards: list[RedisProcess]
    web_urls: list[str]
    env: dict[str, str]
    log_dir: Path
    logs: dict[str, Path] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_workers(self) -> None:
        celery = str(Path(sys.executable).parent / "celery")
        for name in WORKERS:
            command = [celery, "-A", "celery_app", "worker", "-P", "solo", "-n", f"{name}@%h", "-l", "INFO"]
            self._spawn(name, command)

    def _spawn(self, name: str, command: list[str]) -> None:
        self.logs[name] = self.log_dir / f"{name}.log"
        with self.logs[name].open("wb") as out:
            self.processes[name] = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.logs[name].read_text(errors='replace')[-3000:]}")

    def tails(self) -> str:
        return "\n".join(f"--- {name}\n{path.read_text(errors='replace')[-1500:]}" for name, path in self.logs.items())


@pytest.fixture
def sharded_cluster(
    live_server_env: dict[str, str], redis_server: RedisProcess, transactional_db: None, tmp_path: Path
) -> Iterator[ShardedCluster]:
    """3 Redis shards and 2 daphnes sharing them; the workers start when the test says."""
    shards: list[RedisProcess] = []
    cluster: ShardedCluster | None = None
    try:
        shards = [start_redis() for _ in range(SHARDS)]
        env = {
            **live_server_env,
            "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}",
            "CHANNEL_REDIS_URLS": ",".join(shard.url for shard in shards),
            "LOG_LEVEL": "INFO",
            # Every job posted at once, one owner: the job quotas off (the socket quota stays on).
            "JOB_QUOTA_ACTIVE": "0",
            "JOB_QUOTA_PER_IP": "0",
            "JOB_QUOTA_PER_MINUTE": "0",
            "JOB_QUOTA_RUNNING": "0",
        }
        cluster = ShardedCluster(shards=shards, web_urls=[], env=env, log_dir=tmp_path)
        for name in ("daphne-a", "daphne-b"):
            port = free_port()
            cluster.web_urls.append(f"http://127.0.0.1:{port}")
            cluster._spawn(name, daphne_command("core.asgi:application", port=port))

        def all_answer() -> bool:
            assert cluster is not None
            cluster.check_alive()
            try:
                return all(httpx.get(f"{url}/api/job-kinds/", timeout=2).status_code == 200 for url in cluster.web_urls)
            except httpx.HTTPError:
                return False

        if not wait_until(all_answer, timeout=START_TIMEOUT, interval=0.2):
            raise RuntimeError(f"2 daphnes did not answer within {START_TIMEOUT:.0f} s:\n{cluster.tails()}")
        yield cluster
    finally:
        if cluster is not None:
            for process in cluster.processes.values():
                if process.poll() is None:
                    process.terminate()  # all at once, so they stop in parallel
            for process in cluster.processes.values():
                stop_process(process)
        for shard in shards:
            shard.stop()


# --- the tap: every frame published, and the shard it went to ----------------------------


@dataclass
class Tap:
    """Job frames as each shard carried them: (shard, group channel, job id, seq), in order."""

    layer: JobStreamChannelLayer  # for its deserializer only; it never connects
    frames: list[tuple[int, str, str, int]] = field(default_factory=list)
    other_messages: int = 0

    def seqs(self, channel: str, job_id: str) -> list[int]:
        return [seq for _, ch, job, seq in self.frames if ch == channel and job == job_id]

    async def listen(self, index: int, pubsub: aioredis.client.PubSub) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            decoded = self.layer.deserialize(message["data"])
            if decoded.get("type") != "job.frame":
                self.other_messages += 1  # log lines, a session's end
                continue
            channel = message["channel"].decode()
            self.frames.append((index, channel, decoded["job_id"], decoded["seq"]))


def seq_rule(seqs: list[int]) -> list[int]:
    """What a watcher shows of frames arriving in this order: each above the last shown."""
    shown: list[int] = []
    for seq in seqs:
        if not shown or seq > shown[-1]:
            shown.append(seq)
    return shown


# --- watchers ------------------------------------------------------------------------


async def next_frame(socket: ClientConnection, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), timeout))
    return frame


@dataclass
class Watcher:
    name: str
    seqs: dict[str, list[int]] = field(default_factory=dict)  # job id -> seqs, in arrival order
    states: dict[str, str] = field(default_factory=dict)  # job id -> last state
    close_code: int | None = None

    def take(self, job: dict[str, Any]) -> None:
        self.seqs.setdefault(job["id"], []).append(job["seq"])
        self.states[job["id"]] = job["state"]

    def ended(self) -> set[str]:
        return {job_id for job_id, state in self.states.items() if state in TERMINAL}


async def follow_owner(socket: ClientConnection, watcher: Watcher, expected: set[str]) -> None:
    while not expected <= watcher.ended():
        frame = await next_frame(socket, RUN_TIMEOUT)
        if frame["type"] == "job":
            watcher.take(frame["job"])


async def follow_job(socket: ClientConnection, watcher: Watcher, job_id: str) -> None:
    while job_id not in watcher.ended():
        frame = await next_frame(socket, RUN_TIMEOUT)
        if frame["type"] == "job":
            watcher.take(frame["job"])
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT)
    watcher.close_code = socket.close_code


def group_shard(group: str) -> int:
    return shard_index(group_channel_name(PREFIX, group), SHARDS)


async def pubsub_channels(shards: list[RedisProcess]) -> list[set[str]]:
    """The group channels each shard has subscribers for (`PUBSUB CHANNELS`)."""
    found = []
    for shard in shards:
        client = aioredis.Redis.from_url(shard.url)
        try:
            found.append({name.decode() for name in await client.pubsub_channels(f"{PREFIX}__group__*")})
        finally:
            await client.aclose()
    return found


# --- the test ------------------------------------------------------------------------


async def test_every_frame_of_every_job_reaches_every_watcher_over_three_shards(
    sharded_cluster: ShardedCluster,
) -> None:
    cluster = sharded_cluster
    web_a, web_b = cluster.web_urls
    tap = Tap(layer=JobStreamChannelLayer(hosts=[shard.url for shard in cluster.shards]))
    clients = [aioredis.Redis.from_url(shard.url) for shard in cluster.shards]
    pubsubs = [client.pubsub() for client in clients]
    for pubsub in pubsubs:
        await pubsub.psubscribe(f"{PREFIX}__group__*")
    listeners = [asyncio.create_task(tap.listen(index, pubsub)) for index, pubsub in enumerate(pubsubs)]
    sockets: list[ClientConnection] = []
    try:
        async with httpx.AsyncClient(timeout=FRAME_TIMEOUT) as client:
            assert (await client.get(f"{web_a}/")).status_code == 200  # the session, valid on both daphnes
            sessionid, csrf = client.cookies["sessionid"], client.cookies["csrftoken"]
            owners = {web: Watcher(f"owner socket on {name}") for web, name in ((web_a, "A"), (web_b, "B"))}
            for web in owners:
                socket = await open_socket(web, "/ws/jobs/", sessionid)
                sockets.append(socket)
                assert (await next_frame(socket))["type"] == "snapshot"

            # Jobs through both daphnes alternately, until their groups hash onto every shard.
            created: list[str] = []
            while len(created) < MIN_JOBS or {group_shard(job_group(j)) for j in created} != set(range(SHARDS)):
                assert len(created) < MAX_JOBS, "job groups never covered every shard"
                via = web_a if len(created) % 2 == 0 else web_b
                response = await client.post(
                    f"{via}/api/jobs/", json={"kind": "sleep", "params": JOB_PARAMS}, headers={"X-CSRFToken": csrf}
                )
                assert response.status_code == 201, response.text
                created.append(response.json()["id"])

            # A single-job socket on each daphne for every job, each past its first frame
            # (joined to its group) before any worker runs.
            per_job: dict[tuple[str, str], Watcher] = {}
            followers = []
            for job_id in created:
                for web, name in ((web_a, "A"), (web_b, "B")):
                    socket = await open_socket(web, f"/ws/jobs/{job_id}/", sessionid)
                    sockets.append(socket)
                    watcher = per_job[(web, job_id)] = Watcher(f"job socket on {name}")
                    first = await next_frame(socket)
                    assert first["type"] == "job" and first["job"]["state"] == "queued", first
                    watcher.take(first["job"])
                    followers.append(asyncio.create_task(follow_job(socket, watcher, job_id)))
            owner_tasks = [
                asyncio.create_task(follow_owner(socket, watcher, set(created)))
                for socket, watcher in zip(sockets[:2], owners.values(), strict=True)
            ]

            # Every job group is subscribed on the shard its hash names, and on no other.
            expected = [
                {group_channel_name(PREFIX, job_group(j)) for j in created if group_shard(job_group(j)) == i}
                for i in range(SHARDS)
            ]
            subscribed = await pubsub_channels(cluster.shards)
            for index in range(SHARDS):
                assert expected[index] <= subscribed[index], f"shard {index}"
                assert all(shard_index(name, SHARDS) == index for name in subscribed[index]), f"shard {index}"

            cluster.start_workers()

            async def one_runs() -> bool:
                cluster.check_alive()
                return any(state != "queued" for owner in owners.values() for state in owner.states.values())

            assert await async_wait_until(one_runs, timeout=RUN_TIMEOUT, interval=0.05), cluster.tails()
            # While jobs run: channels on all three shards, each where the hash says.
            running = await pubsub_channels(cluster.shards)
            assert all(running), f"a shard has no group channel while jobs run: {running}"
            for index, names in enumerate(running):
                assert all(shard_index(name, SHARDS) == index for name in names), f"shard {index}: {names}"

            done, pending = await asyncio.wait([*owner_tasks, *followers], timeout=RUN_TIMEOUT)
            for task in pending:
                task.cancel()
            failed = [task.exception() for task in done if task.exception() is not None]
            if pending or failed:
                pytest.fail(
                    f"{len(pending)} watcher(s) did not see their jobs end within {RUN_TIMEOUT:.0f} s, "
                    f"{len(failed)} failed ({failed[:3]!r}):\n{cluster.tails()}"
                )
        # The tap reads on connections of its own: let it catch up with the watchers.
        final = {job_id: owners[web_a].seqs[job_id][-1] for job_id in created}

        async def tap_saw_the_ends() -> bool:
            ends = {(channel, job_id) for _, channel, job_id, seq in tap.frames if seq == final[job_id]}
            return all((group_channel_name(PREFIX, job_group(j)), j) in ends for j in created) and (
                sum(1 for channel, _ in ends if "__group__owner." in channel) == len(created)
            )

        assert await async_wait_until(tap_saw_the_ends, timeout=FRAME_TIMEOUT, interval=0.05)
    finally:
        for socket in sockets:
            await socket.close()
        for listener in listeners:
            listener.cancel()
        for pubsub in pubsubs:
            await pubsub.aclose()
        for redis_client in clients:
            await redis_client.aclose()

    # Every frame went to the shard the layer's hash names for its group.
    assert tap.frames
    misplaced = [(shard, channel) for shard, channel, _, _ in tap.frames if shard_index(channel, SHARDS) != shard]
    assert not misplaced, misplaced
    assert {shard for shard, _, _, _ in tap.frames} == set(range(SHARDS))

    owner_channels = {channel for _, channel, _, _ in tap.frames if channel.startswith(f"{PREFIX}__group__owner.")}
    assert len(owner_channels) == 1, owner_channels
    (owner_channel,) = owner_channels
    for job_id in created:
        published = seq_rule(tap.seqs(group_channel_name(PREFIX, job_group(job_id)), job_id))
        assert published == seq_rule(tap.seqs(owner_channel, job_id)), f"job {job_id}: its groups got other frames"
        assert len(published) >= 4, f"job {job_id}: too few frames to tell anything: {published}"
        watchers = [*owners.values(), per_job[(web_a, job_id)], per_job[(web_b, job_id)]]
        for watcher in watchers:
            assert watcher.seqs[job_id] == published, f"job {job_id}, {watcher.name}"
            assert watcher.states[job_id] == "succeeded", f"job {job_id}, {watcher.name}"
        assert per_job[(web_a, job_id)].close_code == per_job[(web_b, job_id)].close_code == 1000
