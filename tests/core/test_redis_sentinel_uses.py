"""Every use of Redis works through a Sentinel, as REDIS_SENTINELS configures it
(core/redis_topology.py): the publisher's shard writer and cancel signal, the channel
layer, the socket quotas, health, the broker (kombu's Sentinel transport, and the
lost-message search on its pool) and the result backend. One real Redis master with a
password, one real Sentinel with a password of its own; a database other than 0, so a
use that ignored REDIS_DB would show. (Failover is tested on its own.)"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from django.test import override_settings
from kombu import Connection

from core.health import check_redis, run_check
from core.redis_local import free_port, redis_server_binary
from core.redis_topology import RedisTopology, redis_topology_from_env
from core.settings import channel_layers_for
from jobs.broker import broker_task_ids_absent
from notifications.publish import Publisher, ShardWriter, blocking_pool, packed_publish
from tests.processes import stop_process
from tests.waiting import wait_until

MASTER_NAME = "topology-master"
MASTER_PASSWORD = "master:pw@/x"  # characters a URL must quote
SENTINEL_PASSWORD = "sentinel-pw"
DB = 5
START_TIMEOUT = 10.0  # seconds for the master and the Sentinel to answer
RECEIVE_TIMEOUT = 5.0


@dataclass
class SentinelSetup:
    master_port: int
    topology: RedisTopology

    def master(self) -> redis.Redis:
        return redis.Redis(port=self.master_port, password=MASTER_PASSWORD, db=DB)


@pytest.fixture(scope="module")
def sentinel_setup() -> Iterator[SentinelSetup]:
    workdir = Path(tempfile.mkdtemp(prefix="jobstream-sentinel-"))
    master_port, sentinel_port = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    master = subprocess.Popen(
        [redis_server_binary(), "--port", str(master_port), "--requirepass", MASTER_PASSWORD, *common],
        stdout=subprocess.DEVNULL,
    )
    config = workdir / "sentinel.conf"  # a Sentinel rewrites its file: one of its own
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\nrequirepass {SENTINEL_PASSWORD}\n"
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1\n"
        f'sentinel auth-pass {MASTER_NAME} "{MASTER_PASSWORD}"\n'
    )
    sentinel = subprocess.Popen([redis_server_binary(), str(config), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        ask = redis.Redis(port=sentinel_port, password=SENTINEL_PASSWORD, socket_timeout=1)

        def knows_master() -> bool:
            try:
                return bool(ask.sentinel_get_master_addr_by_name(MASTER_NAME))
            except redis.RedisError:
                return False

        assert wait_until(knows_master, timeout=START_TIMEOUT), "the Sentinel never named the master"
        env = {
            "REDIS_SENTINELS": f"127.0.0.1:{sentinel_port}",
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
            "REDIS_PASSWORD": MASTER_PASSWORD,
            "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
            "REDIS_DB": str(DB),
        }
        setup = SentinelSetup(master_port=master_port, topology=redis_topology_from_env(env))
        assert wait_until(lambda: bool(setup.master().ping()), timeout=START_TIMEOUT)
        yield setup
    finally:
        stop_process(sentinel)
        stop_process(master)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def sentinel_settings(sentinel_setup: SentinelSetup) -> Iterator[SentinelSetup]:
    """This process's Redis settings as REDIS_SENTINELS makes them."""
    topology = sentinel_setup.topology
    layers = channel_layers_for(topology.channel_hosts())
    with override_settings(REDIS_HOST=topology.main_host(), CHANNEL_LAYERS=layers):
        yield sentinel_setup


def test_the_shard_writer_publishes_on_the_master(sentinel_setup: SentinelSetup) -> None:
    # A write on a connection not yet open once went to the pool's default address
    # (localhost:6379), not to the master the Sentinel names.
    pubsub = sentinel_setup.master().pubsub()
    pubsub.subscribe("topology.probe")
    assert pubsub.get_message(timeout=RECEIVE_TIMEOUT) is not None  # the subscribe reply
    writer = ShardWriter(blocking_pool(sentinel_setup.topology.channel_hosts()[0]))

    writer.send(packed_publish("topology.probe", b"hello"))

    message = pubsub.get_message(timeout=RECEIVE_TIMEOUT)
    assert message is not None and message["data"] == b"hello"
    pubsub.close()


def test_the_shard_writer_reconnects_after_the_master_drops_it(sentinel_setup: SentinelSetup) -> None:
    writer = ShardWriter(blocking_pool(sentinel_setup.topology.channel_hosts()[0]))
    writer.send(packed_publish("topology.probe", b"first"))
    sentinel_setup.master().client_kill_filter(_type="normal", skipme=True)
    pubsub = sentinel_setup.master().pubsub()
    pubsub.subscribe("topology.probe")
    assert pubsub.get_message(timeout=RECEIVE_TIMEOUT) is not None

    def arrives() -> bool:
        writer.send(packed_publish("topology.probe", b"again"))
        return pubsub.get_message(timeout=0.2) is not None

    assert wait_until(arrives, timeout=RECEIVE_TIMEOUT)
    pubsub.close()


@pytest.mark.django_db(transaction=True)
async def test_a_frame_crosses_the_channel_layer_through_the_sentinel(sentinel_settings: SentinelSetup) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    assert layer is not None
    channel = await layer.new_channel()
    await layer.group_add("topology-group", channel)
    message = {"type": "job.frame", "job_id": "j", "seq": 1, "terminal": False, "text": "{}"}

    await asyncio.to_thread(Publisher().send_job_frame, ["topology-group"], message)  # type: ignore[arg-type]

    assert await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT) == message
    await layer.group_discard("topology-group", channel)


def test_the_cancel_signal_crosses_the_sentinel_master(sentinel_settings: SentinelSetup) -> None:
    publisher = Publisher()
    job_id = str(uuid.uuid4())
    heard = threading.Event()
    try:
        publisher.watch_cancel(job_id, heard.set)
        publisher.send_cancel(job_id)
        assert heard.wait(timeout=RECEIVE_TIMEOUT), "the cancel never crossed the master"
    finally:
        publisher.close()


async def test_socket_slots_are_counted_on_the_master(sentinel_settings: SentinelSetup) -> None:
    from notifications import socket_quota

    slots = socket_quota._slots()
    key = f"jobstream.sockets.topology-{uuid.uuid4().hex}"

    assert await slots.acquire(key, "socket-1", 1)
    assert not await slots.acquire(key, "socket-2", 1)
    assert sentinel_settings.master().zcard(key) == 1
    await slots.release(key, "socket-1")
    assert sentinel_settings.master().zcard(key) == 0


def test_health_pings_the_sentinel_master(sentinel_settings: SentinelSetup) -> None:
    before = _pings(sentinel_settings)

    assert run_check(check_redis)["ok"]
    assert _pings(sentinel_settings) > before


def test_the_broker_goes_through_the_sentinel_and_the_lost_message_search_reads_it(
    sentinel_setup: SentinelSetup,
) -> None:
    broker = sentinel_setup.topology.celery(None)
    queue = f"topology-{uuid.uuid4().hex}"
    with Connection(broker.url, transport_options=broker.transport_options) as connection:
        with connection.Producer() as producer:
            producer.publish({"x": 1}, routing_key=queue, headers={"id": "sent-task"}, declare=[])

        absent = broker_task_ids_absent(connection=connection, queues=[queue], task_ids=["sent-task", "never-sent"])

    assert absent == {"never-sent"}
    assert sentinel_setup.master().llen(queue) == 1  # on the master, in REDIS_DB


def test_results_go_through_the_sentinel(sentinel_setup: SentinelSetup) -> None:
    results = sentinel_setup.topology.celery(None)
    app = Celery(set_as_current=False)
    app.conf.update(result_backend=results.url, result_backend_transport_options=results.transport_options)
    task_id = str(uuid.uuid4())

    app.backend.store_result(task_id, {"count": 3}, "SUCCESS")

    assert app.backend.get_task_meta(task_id)["result"] == {"count": 3}
    assert sentinel_setup.master().exists(f"celery-task-meta-{task_id}")


def _pings(setup: SentinelSetup) -> int:
    stats: dict[str, Any] = setup.master().info("commandstats")  # type: ignore[assignment]
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))
