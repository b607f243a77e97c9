"""A guard around kombu's Redis transport that keeps a worker alive when Redis restarts.

When the broker connection drops while tasks are running (acks_late: their messages
are unacknowledged), Celery closes the channel, and kombu's Redis channel tries to put
those messages back in the queue through a connection pool it has just torn down:
`AttributeError: 'NoneType' object has no attribute 'hostname'` in `_connparams`
(celery/kombu#582, #970). Celery treats that as unrecoverable and the whole worker
exits, taking every running job with it. Measured here by bench/soak.py: a worker
running 16 jobs died on every Redis restart, and jobs queued after it never started.

`install()` makes that one restore give up quietly instead. Nothing is lost by it:
the restore could not reach Redis anyway; the running tasks go on and finish; Redis
restores unacknowledged messages itself after `visibility_timeout`; and jobs whose
message Redis lost in the restart are sent again by the sweeper (`jobs.sweep`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    from kombu.transport import redis as kombu_redis

    stock = kombu_redis.QoS.restore_unacked

    @functools.wraps(stock)
    def restore_unacked(self: Any, client: Any = None) -> Any:
        try:
            return stock(self, client)
        except AttributeError:
            logger.warning(
                "broker connection gone: %d unacknowledged message(s) not put back now "
                "(their tasks go on; the sweeper re-sends any job the broker lost)",
                len(getattr(self, "_delivered", ())),
            )
            return None

    kombu_redis.QoS.restore_unacked = restore_unacked  # type: ignore[method-assign]
    _installed = True
