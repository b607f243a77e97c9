"""The sockets' database thread: one per process, with a connection it keeps.

Each WebSocket handshake reads the session, maybe the user, and the snapshot. Through
Channels' `database_sync_to_async` each read is a thread hop, and with
`DATABASE_CONN_MAX_AGE=0` (which HTTP needs under ASGI: every request runs in a thread
of its own, so a kept connection is never reused, only leaked) each hop opens and closes
a database connection, which costs daphne more than the reads themselves
(docs/performance.md, "One database thread for sockets").

Socket code runs its database work here instead: one thread for the process's
lifetime, whose connection stays open. Nothing closes it behind our back: Django closes
old connections only at the start and end of a request, in the request's own thread.
After a database error it is closed, so the next call connects afresh.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import DatabaseError, InterfaceError, connections

T = TypeVar("T")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobstream-socket-db")


async def socket_db(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Runs `fn(*args, **kwargs)` in the sockets' database thread."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, functools.partial(_run, fn, *args, **kwargs))


def _run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    except (DatabaseError, InterfaceError):
        # The connection may be broken (the database restarted): the next call reconnects.
        connections.close_all()
        raise


def close_connections() -> None:
    """Closes this process's socket-thread connections (tests call it before the test
    database is dropped: PostgreSQL refuses to drop a database still in use)."""
    _executor.submit(connections.close_all).result()
