"""core/compat/django: a process's SQLite write transactions queue in Python, not in SQLite's busy handler."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import OperationalError, connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteWrapper

from core.compat.django import SQLITE_WRITERS
from core.compat.django.base import _WRITERS, DatabaseWrapper
from tests.core.compat.upstream import changed_sources

pytestmark = [
    pytest.mark.skipif(connection.vendor != "sqlite", reason="the SQLite engine's patch; PostgreSQL needs none"),
    pytest.mark.django_db(transaction=True),
]

# The private methods of Django's backends the SQLite wrapper overrides, as they were written against.
UPSTREAM = {
    "sqlite3 DatabaseWrapper._start_transaction_under_autocommit": (
        vars(SQLiteWrapper)["_start_transaction_under_autocommit"],
        "7315cfc61c1dde12",
    ),
    "BaseDatabaseWrapper._commit": (vars(BaseDatabaseWrapper)["_commit"], "8ebc361e1e8fcb8d"),
    "BaseDatabaseWrapper._rollback": (vars(BaseDatabaseWrapper)["_rollback"], "d671ec3bb3c8ed44"),
    "BaseDatabaseWrapper._close": (vars(BaseDatabaseWrapper)["_close"], "d1a3f0e9a11cd084"),
}


def test_the_django_code_the_backend_overrides_is_as_it_was_written_against() -> None:
    assert not changed_sources(UPSTREAM), "re-read core/compat/django/base.py against this Django"


def test_the_writer_queue_is_active_and_the_sqlite_engine_is_jobstreams() -> None:
    assert SQLITE_WRITERS.active
    assert isinstance(connections["default"], DatabaseWrapper)


WAIT = 5.0  # seconds for another thread to get somewhere


def in_thread(body: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = body()
        except Exception as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_second_transaction_waits_for_the_first_and_runs_once_it_commits() -> None:
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with transaction.atomic():
            get_user_model().objects.create(username="first")
            holding.set()
            assert release.wait(WAIT)
            order.append("first")

    def second() -> None:
        assert holding.wait(WAIT)
        with transaction.atomic():
            order.append("second")
            get_user_model().objects.create(username="second")

    first_thread, first_outcome = in_thread(first)
    second_thread, second_outcome = in_thread(second)
    assert holding.wait(WAIT)
    assert _WRITERS.locked()
    assert order == []  # the second cannot be inside its transaction while the first holds the lock
    release.set()
    first_thread.join(WAIT)
    second_thread.join(WAIT)
    assert "error" not in first_outcome and "error" not in second_outcome
    assert order == ["first", "second"]
    assert not _WRITERS.locked()
    assert get_user_model().objects.filter(username__in=["first", "second"]).count() == 2


def test_a_rolled_back_transaction_releases_the_lock() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        get_user_model().objects.create(username="rolled-back")
        assert _WRITERS.locked()
        raise RuntimeError("undo")
    assert not _WRITERS.locked()
    assert not get_user_model().objects.filter(username="rolled-back").exists()


def test_a_connection_closed_inside_a_transaction_releases_the_lock() -> None:
    block = transaction.atomic()
    block.__enter__()
    assert _WRITERS.locked()
    connection.close()
    assert not _WRITERS.locked()
    block.__exit__(None, None, None)
    assert not _WRITERS.locked()


def test_a_thread_that_cannot_have_the_lock_in_time_fails_as_sqlite_would(monkeypatch: pytest.MonkeyPatch) -> None:
    holding, release = threading.Event(), threading.Event()

    def first() -> None:
        with transaction.atomic():
            holding.set()
            assert release.wait(WAIT)

    first_thread, _ = in_thread(first)
    assert holding.wait(WAIT)
    monkeypatch.setitem(connection.settings_dict["OPTIONS"], "timeout", 0.2)
    try:
        with pytest.raises(OperationalError, match="database is locked"), transaction.atomic():
            pass
    finally:
        release.set()
        first_thread.join(WAIT)
    assert not _WRITERS.locked()
