"""kombu: a worker survives Redis restarting under running tasks; where Redis keeps messages.

- Closed-channel guards (safety; celery/kombu#582, #970). When the broker connection
  drops while tasks run (acks_late: their messages are unacknowledged), Celery closes the
  old channel and opens a new one. kombu's Redis channel then reaches Redis for the old
  channel's messages through a connection it has torn down, and raises `AttributeError`:
  on close, putting the unacknowledged messages back (`QoS.restore_unacked`), and when a
  task that ran through the restart ends (`QoS.ack`/`QoS.reject` -> `_connparams`).
  Celery treats either as unrecoverable and the whole worker exits, taking every running
  job with it. The guards make those calls give up quietly, only on a closed channel
  (its transport, or the transport's connection, gone); anything else still raises.
  Nothing is lost: the calls could not reach Redis through that channel anyway; running
  tasks finish and their rows hold the outcome; an unacknowledged message comes back
  after `visibility_timeout` and finds its job ended; the sweeper re-sends any job whose
  message Redis lost.
- Where the Redis transport keeps messages (the lost-message search, jobs/broker.py): a
  queue is one list per priority step (`Channel._q_for_pri`: the queue's name for step 0,
  `<queue><sep><step>` after), a message taken and not acknowledged is in the
  `unacked_key` hash, every key under `global_keyprefix`, all on `Channel.pool`. Outside
  the tested range the search is skipped, saying so, and lost messages wait for
  `visibility_timeout` as they do with stock Celery.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from kombu import Connection
from kombu.transport import redis as kombu_redis

from core.compat.patch import Upstream

logger = logging.getLogger(__name__)

# The pinned release series: written against 5.7.0, tested with it.
UPSTREAM = Upstream("kombu", package="kombu", tested="~=5.7.0")


def _channel_closed(qos: Any) -> bool:
    """The channel, its transport, or the transport's connection is gone (torn down on close)."""
    channel = getattr(qos, "channel", None)
    transport = getattr(channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


def _guard(stock: Callable[..., Any], what: str, *, clear_delivered: bool = False) -> Callable[..., Any]:
    """`stock`, quiet on a closed channel; `clear_delivered` forgets the channel's
    unacknowledged messages then, as the stock restore does once it put them back."""

    @functools.wraps(stock)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return stock(self, *args, **kwargs)
        except AttributeError:
            if not _channel_closed(self):
                raise
            logger.warning(
                "broker connection gone: %s skipped on the closed channel "
                "(tasks go on; an unacknowledged message comes back after visibility_timeout "
                "and finds its job ended; the sweeper re-sends any job the broker lost)",
                what,
            )
            if clear_delivered:
                self._delivered.clear()
            return None

    guarded.stock = stock  # type: ignore[attr-defined]  # for the canary tests: the unguarded call
    return guarded


def _install_guards() -> None:
    qos = kombu_redis.QoS
    qos.restore_unacked = _guard(  # type: ignore[method-assign]
        qos.restore_unacked, "restore of unacknowledged messages", clear_delivered=True
    )
    qos.ack = _guard(qos.ack, "acknowledgement")  # type: ignore[method-assign]
    qos.reject = _guard(qos.reject, "reject")  # type: ignore[method-assign]


CLOSED_CHANNEL_GUARDS = UPSTREAM.safety(
    "closed-channel-guards",
    changes="redis QoS.ack, QoS.reject and QoS.restore_unacked give up quietly on a closed channel",
    why="a worker with tasks running would exit when Redis restarts, taking every running job with it",
    upstream="celery/kombu#582, celery/kombu#970",
    install=_install_guards,
)


# --- where the Redis transport keeps messages ---------------------------------------------


@dataclass(frozen=True)
class RedisMessageKeys:
    """The keys that hold a broker's task messages, and a client that reads them."""

    client: redis.Redis
    lists: list[str]  # each queue's lists, one per priority step, prefixed
    unacked: str  # the hash of messages taken and not acknowledged, prefixed


def redis_message_keys(connection: Connection, queues: Sequence[str]) -> RedisMessageKeys | None:
    """Where the queues' messages are, on a Redis broker; None for another transport or
    with the patch off."""
    channel = connection.default_channel
    if not isinstance(channel, kombu_redis.Channel) or not REDIS_LAYOUT.active:
        return None
    # kombu's own client prefixes only the commands kombu sends (not LRANGE, not HSCAN):
    # a plain client on the channel's pool, and every key prefixed here.
    prefix = channel.global_keyprefix or ""
    steps = sorted(set(channel.priority_steps))
    lists = [prefix + (f"{queue}{channel.sep}{step}" if step else queue) for queue in queues for step in steps]
    return RedisMessageKeys(
        client=redis.Redis(connection_pool=channel.pool), lists=lists, unacked=prefix + channel.unacked_key
    )


REDIS_LAYOUT = UPSTREAM.speed(
    "redis-layout",
    changes="the lost-message search reads the Redis transport's priority lists and unacked hash",
    why="the sweeper then cannot tell a lost task message from a waiting one, and lost jobs wait for "
    "visibility_timeout",
)

PATCHES = (CLOSED_CHANNEL_GUARDS, REDIS_LAYOUT)
