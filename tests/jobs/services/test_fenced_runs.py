"""Runs fenced from each other (jobs/services/run.py): each attempt writes its files in
a place of its own and the finish moves them into the job's; a task message sent
before the sweeper queued the job again does nothing; the final write is tried again
after a transient database error."""

from __future__ import annotations

import sqlite3
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from jobs.kinds import JobKind
from jobs.models import JobState
from jobs.services import job_run, job_start, job_sweep_stale
from jobs.services import run as run_module
from tests.jobs.services.conftest import fresh, lost_run, new_job
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 10.0  # seconds for a thread of the test to reach a point


def a_kind(run: Any) -> JobKind:
    return JobKind(name="sleep", title="Test", description="", run=run)


def test_an_attempt_taken_for_lost_that_ends_late_leaves_the_files_of_the_run_that_replaced_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first_wrote, let_first_end = threading.Event(), threading.Event()

    def run(report: Any, **params: Any) -> dict[str, Any]:
        path = report.result_path("out.txt")
        if not first_wrote.is_set():  # attempt 1: writes, goes silent, then writes again
            path.write_text("attempt 1, part")
            first_wrote.set()
            let_first_end.wait(WAIT)
            path.write_text("attempt 1")
            return {"by": 1}
        path.write_text("attempt 2")
        return {"by": 2}

    monkeypatch.setattr(run_module, "kind_get", lambda name: a_kind(run))
    sent_again: list[Any] = []
    monkeypatch.setattr("jobs.services.recovery.job_dispatch", lambda job_id: sent_again.append(job_id))
    job = new_job()
    first = threading.Thread(target=job_run, kwargs={"job_id": job.id, "task_id": "t", "requeues": 0})
    first.start()
    try:
        assert first_wrote.wait(WAIT)
        # Its worker taken for lost: the sweeper queues it again and another message runs it.
        sweep = job_sweep_stale(now=timezone.now() + timedelta(seconds=settings.JOB_STALE_AFTER + 60))
        assert sweep.requeued == 1 and sent_again == [job.id]
        assert fresh(job).requeues == 1
        second = job_run(job_id=job.id, task_id="t", requeues=1)
        assert second is not None and second.state == JobState.SUCCEEDED and second.result == {"by": 2}
    finally:
        let_first_end.set()
        first.join(WAIT)
    assert not first.is_alive()
    ended = fresh(job)
    assert (ended.state, ended.attempts, ended.result) == (JobState.SUCCEEDED, 2, {"by": 2})
    kept = Path(settings.MEDIA_ROOT) / ended.result_file.name
    assert kept == Path(settings.MEDIA_ROOT) / "results" / str(job.id) / "out.txt"
    assert kept.read_text() == "attempt 2"  # the late attempt wrote only in its own place ...
    assert sorted(p.name for p in kept.parent.iterdir()) == ["out.txt"]  # ... which is gone


def test_a_message_sent_before_the_sweeper_queued_the_job_again_does_nothing_whenever_it_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("jobs.services.recovery.job_dispatch", lambda job_id: None)  # this test hands the messages
    lost = lost_run(attempts=1)
    assert job_sweep_stale().requeued == 1
    queued = fresh(lost)
    assert (queued.state, queued.requeues) == (JobState.QUEUED, 1)
    # The old message, handed out again while the job waits for the sweeper's message:
    assert job_start(job_id=lost.id, task_id="t", redelivered=True, requeues=0) is None
    assert fresh(lost).state == JobState.QUEUED
    started = job_start(job_id=lost.id, task_id="t", requeues=1)  # the sweeper's message
    assert started is not None and started.attempts == 2
    # ... and again once that run is going: it must not restart it.
    assert job_start(job_id=lost.id, task_id="t", redelivered=True, requeues=0) is None
    running = fresh(lost)
    assert (running.state, running.attempts, running.seq) == (JobState.RUNNING, 2, started.seq)


def test_a_message_handed_out_again_after_its_own_run_was_lost_still_restarts_it() -> None:
    job = new_job()
    assert job_start(job_id=job.id, task_id="t", requeues=0) is not None
    again = job_start(job_id=job.id, task_id="t", redelivered=True, requeues=0)
    assert again is not None and again.attempts == 2
    again = job_start(job_id=job.id, task_id="t", redelivered=True, requeues=0)  # lost a second time
    assert again is not None and again.attempts == 3


def test_the_final_write_is_tried_again_after_the_database_dropped_or_locked_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run_module, "FINISH_RETRY_DELAYS", (0.5, 0.5, 0.5, 0.5))
    trouble: list[str] = []

    def run(report: Any, **params: Any) -> dict[str, Any]:
        # The job's work is done; the database goes away under the write that ends it.
        trouble.append(_break_the_database_for_a_moment())
        return {"done": True}

    monkeypatch.setattr(run_module, "kind_get", lambda name: a_kind(run))
    job = new_job()
    ended = job_run(job_id=job.id, task_id="t", requeues=0)
    assert trouble and ended is not None and ended.state == JobState.SUCCEEDED
    assert fresh(job).result == {"done": True}


def _break_the_database_for_a_moment() -> str:
    """PostgreSQL: this thread's connection is terminated by the server. SQLite: another
    process-like connection holds the write lock past this connection's busy timeout."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
        info = connection.settings_dict
        dsn = f"host={info['HOST'] or '127.0.0.1'} port={info['PORT'] or 5432} user={info['USER']} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        assert wait_until(lambda: _backend_gone(dsn, pid), timeout=WAIT)
        return "terminated"
    connection.close()
    connection.settings_dict["OPTIONS"]["timeout"] = 0.3  # the next connection gives up fast
    holder = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")

    def let_go() -> None:
        holder.execute("COMMIT")
        holder.close()

    threading.Timer(0.8, let_go).start()
    return "locked"


def _backend_gone(dsn: str, pid: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as admin:
        return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone() == (0,)


@pytest.fixture(autouse=True)
def _sqlite_timeout_restored() -> Any:
    options = connection.settings_dict.get("OPTIONS", {})
    timeout = options.get("timeout")
    yield
    if connection.vendor == "sqlite":
        options["timeout"] = timeout
        connection.close()
