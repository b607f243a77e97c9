"""core/compat/kombu.py on real kombu channels over a Redis of the test's own.

The guards' end-to-end test (a threads-pool worker surviving Redis restarts with jobs
running) is in tests/jobs/services/test_recovery.py; the lost-message search in
tests/jobs/test_broker.py. Here: the canaries of what the patches rely on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis

from core.compat import kombu as compat_kombu
from core.redis_local import RedisProcess, start_redis
from tests.core.compat.upstream import changed_sources

# The kombu code the guards wrap, and the path on which it fails on a torn-down channel.
UPSTREAM = {
    "QoS.ack": (kombu_redis.QoS.ack, "1bc15a4ddf541af6"),
    "QoS.reject": (kombu_redis.QoS.reject, "747a02434344d1a6"),
    "QoS.restore_unacked": (kombu_redis.QoS.restore_unacked, "8954efef014d546e"),
    "Channel._q_for_pri": (vars(kombu_redis.Channel)["_q_for_pri"], "f3997660680dd00f"),
}


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    server = start_redis()
    yield server
    server.stop()


def taken(redis_url: str, **transport_options: Any) -> tuple[Connection, Any, Any]:
    """A connection, its channel and a message taken from a queue and not acknowledged."""
    connection = Connection(redis_url, transport_options=transport_options)
    channel: Any = connection.default_channel
    queue = connection.SimpleQueue("canary")
    queue.put({"n": 1})
    message = channel.basic_get("canary", no_ack=False)
    assert message is not None
    return connection, channel, message


def test_the_kombu_code_the_patches_rely_on_is_as_it_was_written_against() -> None:
    assert not changed_sources(UPSTREAM), "re-read core/compat/kombu.py against this kombu"


def test_the_guards_are_installed_with_the_pinned_version() -> None:
    assert compat_kombu.CLOSED_CHANNEL_GUARDS.apply()
    for name in ("ack", "reject", "restore_unacked"):
        assert hasattr(getattr(kombu_redis.QoS, name), "stock"), name


def test_a_closed_connections_channel_counts_as_closed_and_an_open_ones_does_not(own_redis: RedisProcess) -> None:
    connection, channel, _ = taken(own_redis.url)
    assert not compat_kombu._channel_closed(channel.qos)
    connection.close()
    assert compat_kombu._channel_closed(channel.qos)


@pytest.mark.parametrize("name", ["ack", "reject", "restore_unacked"])
def test_on_a_torn_down_channel_kombu_raises_attribute_error_and_the_guard_does_not(
    own_redis: RedisProcess, name: str
) -> None:
    compat_kombu.CLOSED_CHANNEL_GUARDS.apply()
    connection, channel, message = taken(own_redis.url)
    qos = channel.qos
    connection.close()
    # The state a worker's old channel is in when Redis restarted under it: closed, its
    # pool gone, a task still holding a message (celery/kombu#582, #970).
    channel._pool = None
    qos._delivered[message.delivery_tag] = message
    guarded = getattr(kombu_redis.QoS, name)
    args = () if name == "restore_unacked" else (message.delivery_tag,)
    with pytest.raises(AttributeError):  # the upstream bug: were it fixed, the guard could go
        guarded.stock(qos, *args)
    qos._delivered[message.delivery_tag] = message
    assert guarded(qos, *args) is None


@pytest.mark.parametrize("prefix", ["", "pre:"])
def test_the_message_keys_are_where_kombu_keeps_the_messages(own_redis: RedisProcess, prefix: str) -> None:
    connection, channel, message = taken(own_redis.url, global_keyprefix=prefix)
    try:
        keys = compat_kombu.redis_message_keys(connection, ["canary", "other"])
        assert keys is not None
        expected = [
            prefix + channel._q_for_pri(queue, step)
            for queue in ("canary", "other")
            for step in sorted(set(channel.priority_steps))
        ]
        assert keys.lists == expected
        assert keys.unacked == prefix + channel.qos.unacked_key
        assert keys.client.hexists(keys.unacked, message.delivery_tag)  # the taken message is there
    finally:
        connection.release()


def test_another_transport_has_no_message_keys() -> None:
    with Connection("memory://") as connection:
        assert compat_kombu.redis_message_keys(connection, ["celery"]) is None
