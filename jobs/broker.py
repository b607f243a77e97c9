"""What the broker still holds of a task: its message waiting in a queue, or taken by a
worker and not yet acknowledged. The sweeper asks, to find the jobs whose message the
broker accepted and then lost (`job_resend_lost` in jobs/services/recovery.py).

kombu's Redis transport keeps a queue as lists (LPUSH to send, BRPOP from the tail to
take), one per priority step, and a message a worker took but has not acknowledged in a
hash (delivery tag → JSON `[message, exchange, routing key]`); where exactly is kombu's
business (core/compat/kombu.py). Each message is JSON whose `headers.id` is the Celery
task id, which jobstream makes the job id (`job_dispatch`). Only Redis is searched: the
fault this is for is a Redis without persistence restarting.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import redis
from celery import Celery
from kombu import Connection

from core.compat import kombu as kombu_compat

SCAN_CHUNK = 500  # messages per round trip: a reply of bounded size, and few round trips
# The most messages a queue and the unacknowledged hash may hold together for a search,
# which reads and parses every one: this bounds its time and memory. A broker holding more
# is not searched: a backlog that long is a busy broker, not a lost one, and its lost
# messages are found once it is shorter (docs/architecture.md has the figures).
SCAN_LIMIT = 20_000
# Searches in a row that must miss a message before it counts as lost: one search
# when every message is found (the usual case), two when one seems lost.
SEARCHES = 2


class BrokerNotSearchable(Exception):
    """The broker cannot tell which task messages it holds: it is not Redis, or it holds
    more than SCAN_LIMIT messages."""


def broker_queues_for(*, app: Celery, task_name: str) -> list[str]:
    """The names of the queues the task's messages are sent to (its route, else the
    default queue)."""
    return [app.amqp.router.route({}, task_name)["queue"].name]


def broker_task_ids_absent(
    *, connection: Connection, queues: Sequence[str], task_ids: Iterable[str], limit: int = SCAN_LIMIT
) -> set[str]:
    """Of `task_ids`, those with no message in `queues` and none taken by a worker.

    A search reads the unacknowledged hash, then each queue's lists from head (newest)
    to tail, then the hash again, and stops as soon as every id was seen. A worker
    takes a message from a list's tail into the hash, so a message taken during the
    search is seen in one of the two; a message sent meanwhile pushes the list towards
    its tail, so an entry may be read twice, never skipped. A message handed back to
    the head of a list (a worker rejecting it) could still slip between the reads: an
    id counts as absent only when SEARCHES searches in a row miss it.

    Raises BrokerNotSearchable, or the transport's errors when Redis does not answer.
    """
    missing = set(task_ids)
    if not missing:
        return missing
    keys = kombu_compat.redis_message_keys(connection, queues)
    if keys is None:
        raise BrokerNotSearchable(
            f"the broker is {connection.transport.driver_type}, not Redis"
            if connection.transport.driver_type != "redis"
            else f"kombu {kombu_compat.REDIS_LAYOUT.version} is outside the range its layout was read for"
        )
    client, lists, unacked = keys.client, keys.lists, keys.unacked
    with client.pipeline(transaction=False) as pipe:
        for name in lists:
            pipe.llen(name)
        pipe.hlen(unacked)
        held = sum(pipe.execute())
    if held > limit:
        raise BrokerNotSearchable(f"it holds {held} messages, more than the {limit} a search reads")
    for _search in range(SEARCHES):
        for read, message in enumerate(_held_messages(client, lists=lists, unacked=unacked), start=1):
            if read > 2 * limit:  # the hash is read twice; past that the queue grew under the search
                raise BrokerNotSearchable(f"its queue grew past {limit} messages while it was searched")
            task_id = _task_id(message)
            if task_id is not None:
                missing.discard(task_id)
            if not missing:
                return missing
    return missing


def _held_messages(client: redis.Redis, *, lists: Sequence[str], unacked: str) -> Iterator[Any]:
    """Every message in the hash, the lists, then the hash again, each parsed from JSON."""
    yield from _unacked_messages(client, unacked)
    for name in lists:
        start = 0
        while chunk := cast("list[bytes]", client.lrange(name, start, start + SCAN_CHUNK - 1)):
            for raw in chunk:
                yield _parsed(raw)
            start += len(chunk)
    yield from _unacked_messages(client, unacked)


def _unacked_messages(client: redis.Redis, key: str) -> Iterator[Any]:
    for _tag, raw in client.hscan_iter(key, count=SCAN_CHUNK):
        entry = _parsed(raw)
        yield entry[0] if isinstance(entry, list) and entry else None


def _parsed(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None  # not a kombu message: nobody's task


def _task_id(message: Any) -> str | None:
    """The Celery task id of a message: `headers.id` (task protocol 2), else its
    `correlation_id` (protocol 1 keeps the id in the body)."""
    if not isinstance(message, dict):
        return None
    headers, properties = message.get("headers"), message.get("properties")
    task_id = headers.get("id") if isinstance(headers, dict) else None
    if task_id is None and isinstance(properties, dict):
        task_id = properties.get("correlation_id")
    return task_id if isinstance(task_id, str) else None
