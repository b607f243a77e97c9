"""core/sqlite: a process's write transactions queue in Python, not in SQLite's busy handler."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import OperationalError, connection, transaction

from core.sqlite.base import _WRITERS

pytestmark = [
    pytest.mark.skipif(connection.vendor != "sqlite", reason="core/sqlite is the SQLite engine; PostgreSQL needs none"),
    pytest.mark.django_db(transaction=True),
]
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
