"""Searching the broker for task messages: waiting in a queue (any priority), taken by a
worker and unacknowledged, under a global key prefix; and the searches it refuses.

Each test has a Redis of its own, so no worker takes the messages it sends.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection
from kombu.transport.redis import Channel as RedisChannel

from celery_app import app
from core.redis_local import RedisProcess, start_redis
from jobs.broker import BrokerNotSearchable, broker_queues_for, broker_task_ids_absent

QUEUES = ["celery"]


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def broker(own_redis: RedisProcess) -> Iterator[Callable[..., Connection]]:
    """Opens kombu connections to the test's own Redis (transport options as keywords)."""
    opened: list[Connection] = []

    def connect(**transport_options: Any) -> Connection:
        connection = Connection(own_redis.url, transport_options=transport_options)
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        connection.release()


def take(connection: Connection) -> Any:
    """Takes the oldest message as a worker does, unacknowledged: out of the list, into `unacked`."""
    channel = connection.default_channel
    assert isinstance(channel, RedisChannel)
    return channel.basic_get("celery", no_ack=False)


def send(connection: Connection, **options: Any) -> str:
    """Sends a `jobs.run_job` message as `job_dispatch` does; its task id."""
    task_id = str(uuid.uuid4())
    app.send_task("jobs.run_job", args=(task_id,), task_id=task_id, connection=connection, **options)
    return task_id


def test_ids_of_messages_waiting_in_the_queue_are_not_absent(broker: Callable[..., Connection]) -> None:
    connection = broker()
    waiting = [send(connection) for _ in range(3)]
    never_sent = str(uuid.uuid4())
    absent = broker_task_ids_absent(connection=connection, queues=QUEUES, task_ids=[*waiting, never_sent])
    assert absent == {never_sent}


def test_an_emptied_queue_holds_none_of_its_messages(
    broker: Callable[..., Connection], own_redis: RedisProcess
) -> None:
    connection = broker()
    waiting = {send(connection), send(connection)}
    redis.Redis.from_url(own_redis.url).delete("celery")  # what a restart without persistence leaves
    assert broker_task_ids_absent(connection=connection, queues=QUEUES, task_ids=waiting) == waiting


def test_a_message_sent_with_a_priority_is_found_in_its_priority_list(
    broker: Callable[..., Connection], own_redis: RedisProcess
) -> None:
    connection = broker()
    urgent = send(connection, priority=5)
    assert redis.Redis.from_url(own_redis.url).llen("celery\x06\x163") == 1  # kombu's list for step 3
    assert broker_task_ids_absent(connection=connection, queues=QUEUES, task_ids=[urgent]) == set()


def test_a_message_taken_by_a_worker_and_unacknowledged_is_not_absent(
    broker: Callable[..., Connection], own_redis: RedisProcess
) -> None:
    connection = broker()
    taken = send(connection)
    consumer = broker()
    message = take(consumer)
    assert message is not None and message.headers["id"] == taken
    client = redis.Redis.from_url(own_redis.url)
    assert (client.llen("celery"), client.hlen("unacked")) == (0, 1)
    assert broker_task_ids_absent(connection=connection, queues=QUEUES, task_ids=[taken]) == set()
    message.ack()
    assert broker_task_ids_absent(connection=connection, queues=QUEUES, task_ids=[taken]) == {taken}


def test_messages_under_a_global_key_prefix_are_found(
    broker: Callable[..., Connection], own_redis: RedisProcess
) -> None:
    connection = broker(global_keyprefix="js:")
    waiting, taken = send(connection), send(connection)
    consumer = broker(global_keyprefix="js:")
    message = take(consumer)
    assert message is not None and message.headers["id"] == waiting  # the oldest first
    client = redis.Redis.from_url(own_redis.url)
    assert (client.llen("js:celery"), client.hlen("js:unacked"), client.exists("celery")) == (1, 1, 0)
    absent = broker_task_ids_absent(connection=connection, queues=QUEUES, task_ids=[waiting, taken, "gone"])
    assert absent == {"gone"}
    message.ack()


def test_a_broker_holding_more_than_the_limit_is_not_searched(broker: Callable[..., Connection]) -> None:
    connection = broker()
    waiting = [send(connection) for _ in range(3)]
    with pytest.raises(BrokerNotSearchable, match="holds 3 messages, more than the 2 a search reads"):
        broker_task_ids_absent(connection=connection, queues=QUEUES, task_ids=waiting, limit=2)
    assert broker_task_ids_absent(connection=connection, queues=QUEUES, task_ids=waiting, limit=3) == set()


def test_a_broker_that_is_not_redis_is_not_searched() -> None:
    with Connection("memory://") as connection, pytest.raises(BrokerNotSearchable, match="memory, not Redis"):
        broker_task_ids_absent(connection=connection, queues=QUEUES, task_ids=["any"])


def test_entries_that_are_not_task_messages_are_skipped(
    broker: Callable[..., Connection], own_redis: RedisProcess
) -> None:
    connection = broker()
    waiting = send(connection)
    client = redis.Redis.from_url(own_redis.url)
    client.lpush("celery", b"not json", b'{"headers": "no id"}', b"[1, 2]")
    client.hset("unacked", "tag", '["not a message"]')
    assert broker_task_ids_absent(connection=connection, queues=QUEUES, task_ids=[waiting, "x"]) == {"x"}


def test_run_job_messages_go_to_the_default_queue_unless_routed() -> None:
    assert broker_queues_for(app=app, task_name="jobs.run_job") == ["celery"]
    routed = Celery("routed", set_as_current=False)
    routed.conf.task_routes = {"jobs.run_job": {"queue": "jobs"}}
    assert broker_queues_for(app=routed, task_name="jobs.run_job") == ["jobs"]
