"""The SQLite database backend with a per-process writer queue (see core/compat/django/__init__.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db.backends.sqlite3 import base
from django.db.utils import OperationalError

from core.compat.django import SQLITE_WRITERS

_WRITERS = threading.Lock()  # one write transaction at a time in this process
DEFAULT_TIMEOUT = 5.0  # sqlite3's default, when the settings give none


class DatabaseWrapper(base.DatabaseWrapper):
    holds_writer_lock = False

    def _start_transaction_under_autocommit(self) -> None:
        if not SQLITE_WRITERS.active:
            super()._start_transaction_under_autocommit()  # type: ignore[misc]  # private, not in django-stubs
            return
        timeout = float(self.settings_dict.get("OPTIONS", {}).get("timeout", DEFAULT_TIMEOUT))
        if not _WRITERS.acquire(timeout=timeout):
            raise OperationalError("database is locked (another thread of this process kept writing)")
        self.holds_writer_lock = True
        try:
            super()._start_transaction_under_autocommit()  # type: ignore[misc]
        except BaseException:
            self._release_writer_lock()
            raise

    def _release_writer_lock(self) -> None:
        if self.holds_writer_lock:
            self.holds_writer_lock = False
            _WRITERS.release()

    def _commit(self) -> Any:
        return self._then_release(super()._commit)  # type: ignore[misc]  # private, not in django-stubs

    def _rollback(self) -> Any:
        return self._then_release(super()._rollback)  # type: ignore[misc]

    def _close(self) -> Any:
        return self._then_release(super()._close)  # type: ignore[misc]

    def _then_release(self, end: Callable[[], Any]) -> Any:
        """Ends the transaction (or the connection), then lets the next writer in."""
        try:
            return end()
        finally:
            self._release_writer_lock()
