"""Django: SQLite's write transactions of one process queue in Python, not in SQLite (speed).

SQLite has one writer at a time. A connection that finds the write lock taken waits in
SQLite's busy handler, which sleeps in growing steps (up to 100 ms) and looks again:
with many threads of one process writing (a worker running 100 jobs, each starting,
persisting its progress and ending), most of that waiting is sleep while the lock is
already free. So a transaction (`atomic()`, started with `BEGIN IMMEDIATE`) first takes
a lock of this process, handed from thread to thread as soon as it is free; SQLite's busy
handler is left with waits between processes. A thread that cannot have it within the
database's `timeout` fails as SQLite would ("database is locked"). Statements outside
`atomic()` (autocommit) take no lock here.

This is the database ENGINE `core.compat.django` (core/settings.py names it for SQLite):
its `DatabaseWrapper` (base.py) overrides the private `_start_transaction_under_autocommit`,
`_commit`, `_rollback` and `_close` of Django's SQLite backend. PostgreSQL needs none of it.
"""

from __future__ import annotations

from core.compat.patch import Upstream

# The pinned release series: written against 5.2, tested with 5.2.19.
UPSTREAM = Upstream("django", package="Django", tested="~=5.2.0")
SQLITE_WRITERS = UPSTREAM.speed(
    "sqlite-writer-queue",
    changes="the SQLite backend's transactions take a per-process lock before BEGIN IMMEDIATE",
    why="threads of one process then wait for SQLite's lock in its sleeping busy handler",
)

PATCHES = (SQLITE_WRITERS,)
