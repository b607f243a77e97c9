"""Running a job (jobs/services/run.py): start, progress written through or behind
(`RunningJob`), finish, a start after a lost worker, and the heartbeat."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from jobs.heartbeat import Heartbeat
from jobs.models import Job, JobState
from jobs.progress import ProgressUpdate
from jobs.serializers import job_frame_text, job_payload
from jobs.services import (
    SEQ_WINDOW,
    RunningJob,
    job_cancel,
    job_finish,
    job_heartbeat,
    job_report_progress,
    job_start,
    lost_worker_error,
)
from notifications.groups import job_group
from tests.jobs.services.conftest import FRAME_TIMEOUT, OWNER, fresh, lost_run, new_job, running_job, update
from tests.waiting import wait_until

# --- start, progress, finish ------------------------------------------------------


@pytest.mark.django_db
def test_job_start_moves_queued_to_running_with_task_id() -> None:
    job = job_start(job_id=new_job().id, task_id="task-1")
    assert job is not None
    assert (job.state, job.celery_task_id, job.seq) == (JobState.RUNNING, "task-1", 2)
    assert job.started_at is not None


@pytest.mark.django_db
@pytest.mark.parametrize("state", [JobState.RUNNING, JobState.CANCELLED, JobState.SUCCEEDED])
def test_job_start_of_a_job_not_queued_returns_none_and_changes_nothing(state: JobState) -> None:
    job = new_job(state=state)
    assert job_start(job_id=job.id, task_id="task-1") is None
    assert (fresh(job).state, fresh(job).seq) == (state, 1)


@pytest.mark.django_db
def test_job_report_progress_stores_the_update() -> None:
    job = new_job(state=JobState.RUNNING)
    at = time.time()
    job_report_progress(
        job_id=job.id,
        update=ProgressUpdate(current=4, total=8, message="half", rate=2.0, eta_seconds=2.0, at=at),
    )
    saved = fresh(job)
    assert (saved.progress_current, saved.progress_total, saved.progress_message) == (4, 8, "half")
    assert (saved.progress_rate, saved.progress_eta_seconds, saved.has_progress) == (2.0, 2.0, True)
    assert saved.updated_at.timestamp() == pytest.approx(at, abs=1e-5)  # produced at, not written at


@pytest.mark.django_db
@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.CANCELLED, JobState.FAILED])
def test_job_report_progress_on_a_job_not_running_says_stop_and_changes_nothing(state: JobState) -> None:
    job = new_job(state=state)
    assert job_report_progress(job_id=job.id, update=update(1)) is True
    assert (fresh(job).seq, fresh(job).has_progress) == (1, False)


@pytest.mark.django_db
def test_job_finish_writes_the_terminal_state_with_the_last_progress() -> None:
    job = new_job(state=JobState.RUNNING)
    finished = job_finish(job_id=job.id, state=JobState.FAILED, progress=update(7, 10, "seven"), error="Broke.")
    assert finished is not None
    assert (finished.state, finished.error, finished.progress_current, finished.seq) == ("failed", "Broke.", 7, 2)
    assert finished.finished_at is not None


@pytest.mark.django_db
@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.SUCCEEDED, JobState.CANCELLED])
def test_job_finish_only_from_running_returns_none_otherwise(state: JobState) -> None:
    job = new_job(state=state)
    assert job_finish(job_id=job.id, state=JobState.SUCCEEDED) is None
    assert (fresh(job).state, fresh(job).seq) == (state, 1)


# --- the worker's fast path: RunningJob -------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_running_job_publishes_each_report_at_once_with_the_next_seq(listen: Callable[[str], Any]) -> None:
    running = await sync_to_async(running_job)()
    listener = await listen(job_group(running.job.id))
    for step in (1, 2, 3):
        assert await sync_to_async(running.report)(update(step, 3, f"step {step}")) is False
    frames = [await listener.job() for _ in range(3)]
    assert [f["seq"] for f in frames] == [3, 4, 5]
    assert [f["progress"]["message"] for f in frames] == ["step 1", "step 2", "step 3"]


@pytest.mark.django_db(transaction=True)
def test_running_job_writes_the_row_behind_then_all_at_once_on_persist() -> None:
    running = running_job()
    running.report(update(1))
    assert fresh(running.job).seq == 2  # not yet written: the frame went out, the row waits
    assert running.persist() is False
    row = fresh(running.job)
    assert (row.seq, row.progress_current, row.has_progress) == (3, 1, True)


@pytest.mark.django_db(transaction=True)
def test_running_job_writes_the_row_once_the_interval_has_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    running = running_job()
    running.report(update(1))
    monkeypatch.setattr("jobs.services.run.PERSIST_INTERVAL", 0.0)
    running.report(update(2))
    assert fresh(running.job).progress_current == 2


@pytest.mark.django_db(transaction=True)
def test_running_job_never_runs_more_than_half_the_window_ahead_of_its_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jobs.services.run.PERSIST_INTERVAL", 1e9)  # only the window forces a write
    running = running_job()
    gaps = []
    for step in range(SEQ_WINDOW + 10):
        running.report(update(step, SEQ_WINDOW))
        gaps.append(running.job.seq - fresh(running.job).seq)
    assert max(gaps) == SEQ_WINDOW // 2 - 1
    assert fresh(running.job).seq > 2  # the window did force writes


@pytest.mark.django_db(transaction=True)
def test_running_job_says_stop_at_its_next_write_after_a_cancel_request() -> None:
    running = running_job()
    job_cancel(owner=OWNER, job_id=running.job.id)
    assert running.persist() is True


@pytest.mark.django_db(transaction=True)
def test_running_job_says_stop_when_its_row_is_no_longer_running() -> None:
    running = running_job()
    Job.objects.filter(pk=running.job.pk).update(state=JobState.FAILED)
    assert running.persist() is True


@pytest.mark.django_db(transaction=True)
def test_terminal_seq_is_above_every_seq_the_worker_published() -> None:
    running = running_job()
    for step in range(5):
        running.report(update(step))
    finished = job_finish(job_id=running.job.id, state=JobState.SUCCEEDED, seq_above=running.job.seq)
    assert finished is not None and finished.seq == running.job.seq + 1


# --- attempts: a start after a lost worker ----------------------------------------


@pytest.mark.django_db
def test_job_start_counts_the_attempt_and_marks_the_heartbeat() -> None:
    job = job_start(job_id=new_job().id, task_id="task-1")
    assert job is not None
    assert (job.attempts, job.seq) == (1, 2)
    assert job.heartbeat_at is not None and job.heartbeat_at == job.started_at
    assert job.has_progress is False  # a first run shows no bar until the kind reports


@pytest.mark.django_db
def test_redelivered_task_of_a_running_job_restarts_it_with_the_bar_at_zero() -> None:
    lost = lost_run(attempts=1)
    job = job_start(job_id=lost.id, task_id="task-2", redelivered=True)
    assert job is not None
    assert (job.state, job.attempts, job.celery_task_id) == (JobState.RUNNING, 2, "task-2")
    assert (job.progress_current, job.progress_total, job.progress_rate) == (0, 3, None)
    assert job.progress_message == "Restarted after its worker was lost (attempt 2 of 3)"
    # The lost worker may have published up to SEQ_WINDOW frames it never wrote.
    assert job.seq >= lost.seq + SEQ_WINDOW + 1
    assert job.heartbeat_at is not None and job.heartbeat_at > lost.heartbeat_at  # type: ignore[operator]


@pytest.mark.django_db
def test_redelivered_task_of_a_job_lost_max_attempts_times_fails_it_with_a_clear_error() -> None:
    lost = lost_run(attempts=3)
    assert job_start(job_id=lost.id, task_id="task-4", redelivered=True) is None
    job = fresh(lost)
    assert (job.state, job.attempts) == (JobState.FAILED, 3)
    assert job.error == "The worker running this job was lost 3 times; giving up."
    assert "JOB_MAX_ATTEMPTS" in job.error_detail
    assert job.finished_at is not None and job.seq > lost.seq + SEQ_WINDOW


@pytest.mark.django_db
def test_job_max_attempts_comes_from_settings(settings: Any) -> None:
    settings.JOB_MAX_ATTEMPTS = 1
    lost = lost_run(attempts=1)
    assert job_start(job_id=lost.id, task_id="task-2", redelivered=True) is None
    assert (fresh(lost).state, fresh(lost).error) == (JobState.FAILED, lost_worker_error(1))


@pytest.mark.django_db
def test_redelivered_task_of_a_job_asked_to_cancel_ends_it_cancelled() -> None:
    lost = lost_run(attempts=1, cancel_requested=True)
    assert job_start(job_id=lost.id, task_id="task-2", redelivered=True) is None
    assert (fresh(lost).state, fresh(lost).error) == (JobState.CANCELLED, "")


@pytest.mark.django_db
def test_second_dispatch_of_a_running_job_is_not_started() -> None:
    # Not flagged redelivered: the job runs elsewhere, and that run goes on untouched.
    lost = lost_run(attempts=1, silent_for=0)
    assert job_start(job_id=lost.id, task_id="task-dup") is None
    job = fresh(lost)
    assert (job.state, job.attempts, job.seq, job.progress_current) == (JobState.RUNNING, 1, 7, 2)


@pytest.mark.django_db(transaction=True)
def test_run_replaced_after_its_worker_was_lost_writes_nothing_and_stops() -> None:
    running = running_job()
    running.report(update(1))
    restarted = job_start(job_id=running.job.id, task_id="task-2", redelivered=True)
    assert restarted is not None and restarted.attempts == 2
    assert running.persist() is True  # the old run: told to stop ...
    assert fresh(running.job).seq == restarted.seq  # ... having written nothing
    old_end = job_finish(
        job_id=running.job.id, state=JobState.SUCCEEDED, attempt=running.attempt, seq_above=running.job.seq
    )
    assert old_end is None
    assert fresh(running.job).state == JobState.RUNNING


# --- heartbeat --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_running_job_persist_marks_the_heartbeat() -> None:
    running = running_job()
    before = fresh(running.job).heartbeat_at
    running.report(update(1))
    assert running.persist() is False
    after = fresh(running.job).heartbeat_at
    assert before is not None and after is not None and after > before


@pytest.mark.django_db
def test_job_heartbeat_marks_only_the_running_attempts_it_is_given() -> None:
    mine, replaced, finished = lost_run(attempts=1), lost_run(attempts=2), lost_run(attempts=1)
    Job.objects.filter(pk=finished.pk).update(state=JobState.SUCCEEDED)
    runs = {mine.id: 1, replaced.id: 1, finished.id: 1}
    assert job_heartbeat(runs=runs) == 1
    assert fresh(mine).heartbeat_at > mine.heartbeat_at  # type: ignore[operator]
    assert fresh(replaced).heartbeat_at == replaced.heartbeat_at
    assert fresh(finished).heartbeat_at == finished.heartbeat_at


@pytest.mark.django_db(transaction=True)
def test_heartbeat_thread_keeps_a_silent_running_job_fresh(settings: Any) -> None:
    settings.JOB_HEARTBEAT_INTERVAL = 0.05
    job = lost_run(attempts=1)
    heartbeat = Heartbeat(lambda runs: job_heartbeat(runs=runs))
    heartbeat.add(job.id, attempt=1)
    try:
        assert wait_until(lambda: fresh(job).heartbeat_at > job.heartbeat_at, timeout=5)  # type: ignore[operator]
    finally:
        heartbeat.discard(job.id)
    assert heartbeat.runs() == {}


# --- the frames a running job publishes ------------------------------------------


def unsaved_running_job(*, seq: int) -> Job:
    """A Job instance as job_start hands it over; publishing needs no row."""
    now = datetime.now(UTC)
    return Job(
        id=uuid.uuid4(),
        owner_token="p" * 32,
        kind="sleep",
        params={"steps": 1, "step_seconds": 0},
        state=JobState.RUNNING,
        seq=seq,
        created_at=now,
        started_at=now,
        updated_at=now,
    )


async def test_a_running_jobs_progress_frame_is_the_frame_job_payload_gives(redis_server: Any) -> None:
    job = unsaved_running_job(seq=3)
    layer = get_channel_layer()
    assert layer is not None
    channel = await layer.new_channel()
    await layer.group_add(job_group(job.id), channel)
    running = RunningJob(job)  # built once when the run starts

    running.report(
        ProgressUpdate(current=2.5, total=10, message='step "two" <b>', rate=0.8333, eta_seconds=9.04, at=time.time())
    )
    message = await asyncio.wait_for(layer.receive(channel), FRAME_TIMEOUT)

    assert message["text"] == job_frame_text(job_payload(job))
    assert (message["job_id"], message["seq"], message["terminal"]) == (str(job.id), 4, False)
    await layer.group_discard(job_group(job.id), channel)
