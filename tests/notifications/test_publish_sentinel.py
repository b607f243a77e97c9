"""The Publisher on a Sentinel-managed Redis (notifications.publish): frames and cancel
signals reach the master the Sentinels name, and the promoted replica after a failover."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import redis

from core.compat.channels_redis import JobStreamChannelLayer, group_channel_name
from notifications.publish import Publisher
from tests.sentinel import MASTER_NAME, SentinelSet
from tests.waiting import wait_until

RECEIVE_TIMEOUT = 5.0  # seconds for one frame to cross Redis on this machine
RECOVER_TIMEOUT = 10.0  # seconds after the promotion for the publisher to reach the new master
GROUP = "job.sentinel-test"


def sentinel_host(sentinels: SentinelSet) -> dict[str, Any]:
    """The master as a channels-redis host, the form the settings give it (docs/deploy.md)."""
    return {
        "sentinels": [("127.0.0.1", node.port) for node in sentinels.sentinels],
        "master_name": MASTER_NAME,
        "sentinel_kwargs": {"socket_timeout": 2, "socket_connect_timeout": 2},
        "db": 0,
    }


def frame(seq: int) -> Any:
    return {"type": "job.frame", "job_id": "sentinel-test", "seq": seq, "terminal": False, "text": "{}"}


def subscribed(port: int) -> Any:
    """A subscription to the group's channel on the Redis at `port`, confirmed."""
    pubsub = redis.Redis(port=port, socket_timeout=RECEIVE_TIMEOUT).pubsub()
    pubsub.subscribe(group_channel_name("asgi", GROUP))
    confirmed = pubsub.get_message(timeout=RECEIVE_TIMEOUT)
    assert confirmed is not None and confirmed["type"] == "subscribe", confirmed
    return pubsub


def received_seq(pubsub: Any, layer: JobStreamChannelLayer, timeout: float) -> int | None:
    message = pubsub.get_message(timeout=timeout)
    return None if message is None else int(layer.deserialize(message["data"])["seq"])


def test_frames_reach_the_master_the_sentinels_name_then_the_promoted_replica(sentinel_set: SentinelSet) -> None:
    layer = JobStreamChannelLayer(hosts=[sentinel_host(sentinel_set)])
    own = Publisher(layer)
    assert sentinel_set.master is not None and sentinel_set.replica is not None
    on_master = subscribed(sentinel_set.master.port)

    own.send_job_frame([GROUP], frame(1))
    # Before the fix the writer dialled localhost:6379, not the master.
    assert received_seq(on_master, layer, RECEIVE_TIMEOUT) == 1

    sentinel_set.kill_master()
    promoted = sentinel_set.wait_promotion()
    on_replica = subscribed(sentinel_set.replica.port)
    seqs = iter(range(2, 10_000))
    heard: list[int] = []

    def reaches_the_promoted_replica() -> bool:
        own.send_job_frame([GROUP], frame(next(seqs)))
        seq = received_seq(on_replica, layer, 0.1)
        if seq is not None:
            heard.append(seq)
        return bool(heard)

    assert wait_until(reaches_the_promoted_replica, timeout=RECOVER_TIMEOUT, interval=0.1)
    print(f"\npublisher back on the promoted replica {time.monotonic() - promoted:.2f} s after the promotion")


def test_the_cancel_listener_hears_cancels_again_after_a_failover(sentinel_set: SentinelSet) -> None:
    own = Publisher(JobStreamChannelLayer(hosts=[sentinel_host(sentinel_set)]))
    job_id = str(uuid.uuid4())
    heard = threading.Event()
    own.watch_cancel(job_id, heard.set)
    try:
        own.send_cancel(job_id)
        assert heard.wait(RECEIVE_TIMEOUT), "the cancel never crossed the master"
        heard.clear()

        sentinel_set.kill_master()
        sentinel_set.wait_promotion()

        def cancel_heard() -> bool:
            own.send_cancel(job_id)  # logged, never raised, while the new master is unknown
            return heard.wait(0.2)

        assert wait_until(cancel_heard, timeout=RECOVER_TIMEOUT, interval=0.1), "no cancel heard after the failover"
    finally:
        own.unwatch_cancel(job_id)
        own.close()
