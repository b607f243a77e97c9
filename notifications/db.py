"""The sockets' database thread: one per process, with a connection it keeps.

Each WebSocket handshake reads the session, maybe the user, and the snapshot. Through
Channels' `database_sync_to_async` that was two thread hops, and with
`DATABASE_CONN_MAX_AGE=0` (which HTTP needs under ASGI: every request runs in a
thread of its own, and kept connections leaked until PostgreSQL refused new ones)
each hop opened and closed a database connection: most of daphne's CPU per handshake.

Socket code runs its database work here instead: one thread for the process's
lifetime, whose connection stays open (Django's `close_at` is cleared) and is closed
and reopened only when it errored and is no longer usable.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import connections

T = TypeVar("T")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobstream-socket-db")


async def socket_db(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Runs `fn(*args, **kwargs)` in the sockets' database thread."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, functools.partial(_run, fn, *args, **kwargs))


def _run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    for connection in connections.all(initialized_only=True):
        connection.close_if_unusable_or_obsolete()  # after an error: closed if no longer usable
    try:
        return fn(*args, **kwargs)
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close_at = None  # kept: this thread serves sockets for the process's life


def close_connections() -> None:
    """Closes this process's socket-thread connections (tests call it before the test
    database is dropped: PostgreSQL refuses to drop a database still in use)."""
    _executor.submit(connections.close_all).result()
