"""SQLite, with a process's write transactions queued in Python rather than in SQLite.

SQLite has one writer at a time. A connection that finds the write lock taken waits
in SQLite's busy handler, which sleeps in growing steps (1, 2, 5, 10 ... 100 ms) and
looks again: with many threads of one process writing (a worker running 100 jobs,
each starting, persisting its progress and ending), most of the waiting is sleep
while the lock is free. Measured with bench/fanout.py (100 jobs starting together in
one worker), the last job's start transaction took 1.5-1.9 s; its own work is a
millisecond or two.

So a transaction (`atomic()`, started with `BEGIN IMMEDIATE`) first takes a lock of
this process, handed from thread to thread as soon as it is free; SQLite's busy
handler is left with waits between processes. A thread that cannot have it within the
database's `timeout` fails as SQLite would ("database is locked"). Statements outside
`atomic()` (autocommit) take no lock here: SQLite's handler still serves them.
"""

from __future__ import annotations

import threading
from typing import Any

from django.db.backends.sqlite3 import base
from django.db.utils import OperationalError

_WRITERS = threading.Lock()  # one write transaction at a time in this process
DEFAULT_TIMEOUT = 5.0  # sqlite3's default, when the settings give none


class DatabaseWrapper(base.DatabaseWrapper):
    holds_writer_lock = False

    def _start_transaction_under_autocommit(self) -> None:
        timeout = float(self.settings_dict.get("OPTIONS", {}).get("timeout", DEFAULT_TIMEOUT))
        if not _WRITERS.acquire(timeout=timeout):
            raise OperationalError("database is locked (another thread of this process kept writing)")
        self.holds_writer_lock = True
        try:
            super()._start_transaction_under_autocommit()  # type: ignore[misc]  # private, not in django-stubs
        except BaseException:
            self._release_writer_lock()
            raise

    def _release_writer_lock(self) -> None:
        if self.holds_writer_lock:
            self.holds_writer_lock = False
            _WRITERS.release()

    def _commit(self) -> Any:
        try:
            return super()._commit()  # type: ignore[misc]
        finally:
            self._release_writer_lock()

    def _rollback(self) -> Any:
        try:
            return super()._rollback()  # type: ignore[misc]
        finally:
            self._release_writer_lock()

    def _close(self) -> Any:
        try:
            return super()._close()  # type: ignore[misc]
        finally:
            self._release_writer_lock()
