"""The SQLite database backend with a per-process writer queue (see core/compat/django/__init__.py)."""

from __future__ import annotations

import threading
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
