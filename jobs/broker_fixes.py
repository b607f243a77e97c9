"""A guard around kombu's Redis transport that keeps a worker alive when Redis restarts.

When the broker connection drops while tasks are running (acks_late: their messages
are unacknowledged), Celery closes the old channel and opens a new one. kombu's Redis
channel then reaches Redis for that old channel's messages through a connection it
has torn down, and raises `AttributeError` (celery/kombu#582, #970):

- on close, putting the unacknowledged messages back (`QoS.restore_unacked`:
  `'NoneType' object has no attribute 'hostname'`);
- when a task that was running through the restart ends, acknowledging (or
  rejecting) its message on the closed channel (`QoS.ack`/`QoS.reject` ->
  `_connparams`: `'NoneType' object has no attribute 'client'`).

Celery treats either as unrecoverable and the whole worker exits, taking every running
job with it. Measured here by bench/soak.py: a worker running 16 jobs died on every
Redis restart, and 44 of 90 jobs, queued after it, never started.

`install()` makes those calls give up quietly, and only on a closed channel (its
transport, or the transport's connection, is None); anything else still raises. Nothing is lost by it: the calls
could not reach Redis through that channel anyway; the running tasks go on and finish
(their job rows hold the outcome); a message that was not acknowledged comes back after
`visibility_timeout`, and `job_run` does nothing for a job that has already ended; and
jobs whose message Redis lost in the restart are sent again by the sweeper (`jobs.sweep`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_installed = False


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

    return guarded


def install() -> None:
    global _installed
    if _installed:
        return
    from kombu.transport import redis as kombu_redis

    qos = kombu_redis.QoS
    qos.restore_unacked = _guard(  # type: ignore[method-assign]
        qos.restore_unacked, "restore of unacknowledged messages", clear_delivered=True
    )
    qos.ack = _guard(qos.ack, "acknowledgement")  # type: ignore[method-assign]
    qos.reject = _guard(qos.reject, "reject")  # type: ignore[method-assign]
    _installed = True
