"""The state transition (jobs/services/transitions.py): every change bumps `seq` and is
published once committed; a change refused publishes nothing; nothing changes after a
terminal state.

Races, under PostgreSQL: two processes changing one job at once. Each change is one
conditional `UPDATE … WHERE state IN (…)` (`job_transition`), so whichever commits
second finds the row no longer matching and changes nothing. Exactly one terminal state
wins, and its `seq` is above every seq before it. Two threads stand in for two
processes: each has its own database connection, and a barrier sends both into the same
row at once. Each race runs ROUNDS times on fresh jobs, so both orders of arrival get
their turn.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.utils import timezone

from jobs.exceptions import JobAlreadyFinished
from jobs.models import Job, JobState
from jobs.owners import Owner
from jobs.services import (
    OTHER_WRITER_SEQ_GAP,
    job_cancel,
    job_create,
    job_finish,
    job_report_progress,
    job_start,
    job_sweep_stale,
)
from notifications.groups import job_group, owner_group
from tests.jobs.services.conftest import OWNER, fresh, new_job, update

# --- the lifecycle and seq --------------------------------------------------------


@pytest.mark.django_db
def test_seq_strictly_increases_across_start_progress_and_finish() -> None:
    job = job_create(owner=OWNER, kind="sleep", params={"steps": 3})
    seqs = [fresh(job).seq]
    started = job_start(job_id=job.id, task_id="task-1")
    assert started is not None
    seqs.append(fresh(job).seq)
    for step in range(1, 4):
        assert job_report_progress(job_id=job.id, update=update(step, 3)) is False
        seqs.append(fresh(job).seq)
    finished = job_finish(job_id=job.id, state=JobState.SUCCEEDED, result={"ok": True})
    assert finished is not None
    seqs.append(fresh(job).seq)
    assert seqs == [1, 2, 3, 4, 5, 6]


@pytest.mark.django_db
def test_nothing_changes_after_a_terminal_state() -> None:
    job = new_job(state=JobState.RUNNING)
    job_finish(job_id=job.id, state=JobState.SUCCEEDED, result={"n": 1})
    assert job_finish(job_id=job.id, state=JobState.FAILED, error="late") is None
    assert job_report_progress(job_id=job.id, update=update(9)) is True
    saved = fresh(job)
    assert (saved.state, saved.result, saved.error, saved.seq) == ("succeeded", {"n": 1}, "", 2)


# --- frames on the channel layer --------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_each_change_publishes_one_frame_with_its_seq(listen: Callable[[str], Any]) -> None:
    job = await sync_to_async(new_job)()
    listener = await listen(job_group(job.id))
    await sync_to_async(job_start)(job_id=job.id, task_id="task-1")
    await sync_to_async(job_report_progress)(job_id=job.id, update=update(1, 3, "one"))
    await sync_to_async(job_report_progress)(job_id=job.id, update=update(2, 3, "two"))
    await sync_to_async(job_finish)(job_id=job.id, state=JobState.SUCCEEDED, result={"steps": 3})
    frames = [await listener.job() for _ in range(4)]
    assert [(f["seq"], f["state"]) for f in frames] == [
        (2, "running"),
        (3, "running"),
        (4, "running"),
        (5, "succeeded"),
    ]
    assert frames[1]["progress"]["message"] == "one"
    assert frames[2]["progress"]["current"] == 2
    assert frames[3]["result"] == {"steps": 3}


@pytest.mark.django_db(transaction=True)
async def test_a_change_refused_publishes_nothing(listen: Callable[[str], Any]) -> None:
    owner = Owner(token=uuid.uuid4().hex)
    finished = await sync_to_async(new_job)(state=JobState.SUCCEEDED, owner=owner)
    queued = await sync_to_async(new_job)(owner=owner)
    listener = await listen(owner_group(owner.key))
    assert await sync_to_async(job_finish)(job_id=finished.id, state=JobState.FAILED) is None
    assert await sync_to_async(job_start)(job_id=finished.id, task_id="task-1") is None
    await sync_to_async(job_cancel)(owner=owner, job_id=queued.id)
    # One process sends its frames in order: the first to arrive is the cancel's.
    frame = await listener.job()
    assert (frame["id"], frame["state"]) == (str(queued.id), "cancelled")


# --- races ---------------------------------------------------------------------

ROUNDS = 20  # races per test: enough for both orders of arrival to show up
SEQ_BEFORE = 40
WORKER_SEQ = SEQ_BEFORE + 7  # a running worker's last published seq, not yet written to the row
RACE_TIMEOUT = 30  # seconds for both sides of one race


@pytest.fixture
def _postgresql_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip(
            "needs PostgreSQL: SQLite runs one write transaction at a time (IMMEDIATE), so nothing "
            "races; CI runs this in its PostgreSQL pass (make pytest-pg)"
        )


@dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None


def race(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Outcome, Outcome]:
    """Runs both at once, each in a thread with its own connection; their outcomes."""
    barrier = threading.Barrier(2)
    outcomes = (Outcome(), Outcome())

    def run(fn: Callable[[], Any], outcome: Outcome) -> None:
        try:
            barrier.wait(timeout=RACE_TIMEOUT)
            outcome.value = fn()
        except BaseException as exc:
            outcome.error = exc
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=run, args=pair) for pair in zip((first, second), outcomes, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=RACE_TIMEOUT)
        assert not thread.is_alive(), "a side of the race never ended (a lock never released?)"
    return outcomes


def running_job(*, cancel_requested: bool = False, heartbeat_age: timedelta = timedelta(0)) -> Job:
    now = timezone.now()
    return Job.objects.create(
        owner_token=OWNER.token or "",
        kind="sleep",
        params={"steps": 3, "step_seconds": 0},
        state=JobState.RUNNING,
        seq=SEQ_BEFORE,
        attempts=1,
        cancel_requested=cancel_requested,
        created_at=now,
        started_at=now,
        heartbeat_at=now - heartbeat_age,
        updated_at=now,
    )


def queued_job() -> Job:
    now = timezone.now()
    return Job.objects.create(
        owner_token=OWNER.token or "",
        kind="sleep",
        params={"steps": 3, "step_seconds": 0},
        seq=SEQ_BEFORE,
        created_at=now,
        updated_at=now,
    )


@pytest.mark.django_db(transaction=True)  # each thread sees only committed rows
@pytest.mark.usefixtures("_postgresql_only")
def test_a_finish_racing_a_cancelled_end_leaves_exactly_one_terminal_state() -> None:
    for _ in range(ROUNDS):
        job = running_job()
        succeed, cancel = race(
            partial(job_finish, job_id=job.id, state=JobState.SUCCEEDED, attempt=1, result={"ok": 1}),
            partial(job_finish, job_id=job.id, state=JobState.CANCELLED, attempt=1),
        )
        assert succeed.error is None and cancel.error is None, (succeed.error, cancel.error)
        winners = [outcome.value for outcome in (succeed, cancel) if outcome.value is not None]
        assert len(winners) == 1, f"both or neither wrote a terminal state: {succeed.value}, {cancel.value}"
        row = Job.objects.get(pk=job.pk)
        assert row.state == winners[0].state
        assert row.seq == winners[0].seq == SEQ_BEFORE + 1  # one change, one seq
        assert (row.result == {"ok": 1}) == (row.state == JobState.SUCCEEDED)


@pytest.mark.django_db(transaction=True)  # each thread sees only committed rows
@pytest.mark.usefixtures("_postgresql_only")
def test_a_cancel_racing_a_finish_is_either_refused_or_asked_of_a_running_job() -> None:
    for _ in range(ROUNDS):
        job = running_job()
        cancel, finish = race(
            partial(job_cancel, owner=OWNER, job_id=job.id),
            partial(job_finish, job_id=job.id, state=JobState.SUCCEEDED, attempt=1, result={"ok": 1}),
        )
        assert finish.error is None and finish.value is not None  # the worker's end always stands
        row = Job.objects.get(pk=job.pk)
        assert row.state == JobState.SUCCEEDED and row.seq == SEQ_BEFORE + 1
        if cancel.error is not None:  # the finish came first: 409 for the cancel
            assert isinstance(cancel.error, JobAlreadyFinished), cancel.error
            assert row.cancel_requested is False
        else:  # the cancel came first: asked of a running job, which then ended as it did
            assert cancel.value.state == JobState.RUNNING and cancel.value.cancel_requested
            assert row.cancel_requested is True


@pytest.mark.django_db(transaction=True)  # each thread sees only committed rows
@pytest.mark.usefixtures("_postgresql_only")
def test_a_cancel_racing_a_start_either_cancels_the_queued_job_or_asks_the_running_one() -> None:
    for _ in range(ROUNDS):
        job = queued_job()
        cancel, start = race(
            partial(job_cancel, owner=OWNER, job_id=job.id),
            partial(job_start, job_id=job.id, task_id=str(job.id)),
        )
        assert cancel.error is None and start.error is None, (cancel.error, start.error)
        row = Job.objects.get(pk=job.pk)
        if start.value is None:  # the cancel came first: the task must not run it
            assert row.state == JobState.CANCELLED and row.attempts == 0
            assert row.seq == cancel.value.seq == SEQ_BEFORE + 1
        else:  # the start came first: the cancel asks the running job to stop
            assert row.state == JobState.RUNNING and row.attempts == 1 and row.cancel_requested
            assert cancel.value.state == JobState.RUNNING
            assert row.seq == start.value.seq == SEQ_BEFORE + 1


@pytest.mark.django_db(transaction=True)  # each thread sees only committed rows
@pytest.mark.usefixtures("_postgresql_only")
def test_a_worker_finish_racing_the_sweeper_leaves_exactly_one_terminal_state() -> None:
    # A stale run whose cancel was asked: the sweeper ends it as cancelled, while its
    # worker, alive after all, reports success.
    for _ in range(ROUNDS):
        job = running_job(cancel_requested=True, heartbeat_age=timedelta(hours=1))
        finish, sweep = race(
            partial(job_finish, job_id=job.id, state=JobState.SUCCEEDED, attempt=1, seq_above=WORKER_SEQ),
            job_sweep_stale,
        )
        assert finish.error is None and sweep.error is None, (finish.error, sweep.error)
        row = Job.objects.get(pk=job.pk)
        if finish.value is not None:
            assert sweep.value.cancelled == 0
            assert row.state == JobState.SUCCEEDED and row.seq == WORKER_SEQ + 1
        else:
            assert sweep.value.cancelled == 1
            assert row.state == JobState.CANCELLED
            # Past every seq the worker may have published and not written yet.
            assert row.seq == SEQ_BEFORE + OTHER_WRITER_SEQ_GAP
        assert row.seq > WORKER_SEQ
