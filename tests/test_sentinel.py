"""The Sentinel harness itself (tests/sentinel.py): it settles, and a killed master is
replaced by its replica, with what was replicated before the kill."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.sentinel import MASTER_NAME, PROMOTION_TIMEOUT, SentinelSet


@pytest.fixture(params=[False, True], ids=["open", "passwords"])
def sentinel_set(request: pytest.FixtureRequest) -> Iterator[SentinelSet]:
    protected = request.param
    started = SentinelSet(
        password="data-secret" if protected else None, sentinel_password="sentinel-secret" if protected else None
    ).start()
    try:
        yield started
    finally:
        started.stop()


def test_a_killed_master_is_replaced_by_its_replica_with_the_replicated_data(sentinel_set: SentinelSet) -> None:
    assert sentinel_set.master is not None and sentinel_set.replica is not None
    assert {sentinel_set.master_port_by(node) for node in sentinel_set.sentinels} == {sentinel_set.master.port}

    client = redis.sentinel.Sentinel(
        [("127.0.0.1", node.port) for node in sentinel_set.sentinels],
        sentinel_kwargs={"password": sentinel_set.sentinel_password, "socket_timeout": 1},
        password=sentinel_set.password,
        socket_timeout=1,
    ).master_for(MASTER_NAME)
    client.set("before-the-kill", "kept")
    assert client.wait(1, 5000) == 1  # on the replica before the master dies

    killed = sentinel_set.kill_master()
    with pytest.raises(redis.ConnectionError):
        sentinel_set.master.ask("PING", password=sentinel_set.password)
    promoted = sentinel_set.wait_promotion()

    assert 0 < promoted - killed < PROMOTION_TIMEOUT
    assert {sentinel_set.master_port_by(node) for node in sentinel_set.sentinels} == {sentinel_set.replica.port}
    assert client.get("before-the-kill") == b"kept"  # the same client, now on the promoted replica
    client.set("after-the-promotion", "taken")
    print(f"\nsentinel failover: kill → promotion {promoted - killed:.2f} s")
