"""The job services: every change bumps `seq` and is published; cancel in each state;
a cancel reaching a running job under a real worker."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone
from kombu.transport.redis import Channel as RedisChannel

from jobs import services
from jobs.exceptions import JobAlreadyFinished, JobNotFound
from jobs.kinds import ParamsInvalid, UnknownKind
from jobs.models import Job, JobState
from jobs.owners import Owner
from jobs.progress import ProgressUpdate
from jobs.services import (
    RunningJob,
    job_cancel,
    job_create,
    job_dispatch,
    job_finish,
    job_report_progress,
    job_start,
)
from notifications.groups import job_group, owner_group
from tests.waiting import wait_until

OWNER = Owner(token="a" * 32)
SOMEONE_ELSE = Owner(token="b" * 32)
FRAME_TIMEOUT = 5.0  # seconds for a published frame to come back through the test Redis


def update(current: float, total: float = 10, message: str = "") -> ProgressUpdate:
    return ProgressUpdate(current=current, total=total, message=message, rate=None, eta_seconds=None, at=time.time())


def new_job(*, state: JobState = JobState.QUEUED, owner: Owner = OWNER) -> Job:
    """A row as job_create leaves it, without handing it to a worker."""
    now = timezone.now()
    return Job.objects.create(
        owner_token=owner.token or "",
        kind="sleep",
        params={"steps": 3, "step_seconds": 0},
        state=state,
        seq=1,
        created_at=now,
        updated_at=now,
    )


def fresh(job: Job) -> Job:
    return Job.objects.get(pk=job.pk)


# --- create ----------------------------------------------------------------------


@pytest.mark.django_db
def test_job_create_saves_a_queued_job_with_seq_1_and_cleaned_params() -> None:
    job = job_create(owner=OWNER, kind="primes", params={"limit": 1000.0})
    saved = fresh(job)
    assert saved.state == JobState.QUEUED
    assert saved.seq == 1
    assert saved.params == {"limit": 1000}
    assert saved.owner_token == OWNER.token and saved.owner_user is None
    assert saved.has_progress is False and saved.started_at is None


@pytest.mark.django_db
def test_job_create_from_text_parses_form_values() -> None:
    job = job_create(owner=OWNER, kind="sleep", params={"steps": "4", "step_seconds": ""}, from_text=True)
    assert fresh(job).params == {"steps": 4, "step_seconds": 0.5}


@pytest.mark.django_db
def test_job_create_of_unknown_kind_saves_nothing() -> None:
    with pytest.raises(UnknownKind):
        job_create(owner=OWNER, kind="nope", params={})
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_job_create_with_bad_params_saves_nothing() -> None:
    with pytest.raises(ParamsInvalid) as raised:
        job_create(owner=OWNER, kind="primes", params={"limit": 0})
    assert set(raised.value.errors) == {"limit"}
    assert not Job.objects.exists()


# --- the lifecycle and seq -------------------------------------------------------


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


@pytest.mark.django_db
def test_nothing_changes_after_a_terminal_state() -> None:
    job = new_job(state=JobState.RUNNING)
    job_finish(job_id=job.id, state=JobState.SUCCEEDED, result={"n": 1})
    assert job_finish(job_id=job.id, state=JobState.FAILED, error="late") is None
    assert job_report_progress(job_id=job.id, update=update(9)) is True
    saved = fresh(job)
    assert (saved.state, saved.result, saved.error, saved.seq) == ("succeeded", {"n": 1}, "", 2)


# --- cancel ----------------------------------------------------------------------


@pytest.mark.django_db
def test_job_cancel_of_a_queued_job_cancels_it_and_bumps_seq() -> None:
    job = new_job()
    cancelled = job_cancel(owner=OWNER, job_id=job.id)
    assert (cancelled.state, cancelled.seq) == (JobState.CANCELLED, 2)
    assert cancelled.finished_at is not None
    assert fresh(job).state == JobState.CANCELLED


@pytest.mark.django_db
def test_job_cancel_of_a_running_job_asks_it_to_stop_and_leaves_it_running() -> None:
    job = new_job(state=JobState.RUNNING)
    asked = job_cancel(owner=OWNER, job_id=str(job.id))
    assert asked.state == JobState.RUNNING
    assert fresh(job).cancel_requested is True


@pytest.mark.django_db
def test_job_report_progress_after_a_cancel_request_says_stop() -> None:
    job = new_job(state=JobState.RUNNING)
    assert job_report_progress(job_id=job.id, update=update(1)) is False
    job_cancel(owner=OWNER, job_id=job.id)
    assert job_report_progress(job_id=job.id, update=update(2)) is True


@pytest.mark.django_db
@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED])
def test_job_cancel_of_a_terminal_job_raises_already_finished(state: JobState) -> None:
    job = new_job(state=state)
    with pytest.raises(JobAlreadyFinished) as raised:
        job_cancel(owner=OWNER, job_id=job.id)
    assert raised.value.state == state
    assert fresh(job).seq == 1


@pytest.mark.django_db
@pytest.mark.parametrize("job_id", ["someone-elses", "not-a-uuid", str(uuid.uuid4())])
def test_job_cancel_of_a_job_not_visible_raises_not_found(job_id: str) -> None:
    theirs = new_job(owner=SOMEONE_ELSE)
    with pytest.raises(JobNotFound):
        job_cancel(owner=OWNER, job_id=str(theirs.id) if job_id == "someone-elses" else job_id)
    assert fresh(theirs).state == JobState.QUEUED


@pytest.mark.django_db
def test_staff_may_cancel_any_job() -> None:
    job = new_job(owner=SOMEONE_ELSE)
    assert job_cancel(owner=Owner(user_id=1, is_staff=True), job_id=job.id).state == JobState.CANCELLED


# --- under a real worker ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cancel_of_a_running_job_stops_it_within_two_seconds(worker: Any) -> None:
    job = job_create(owner=OWNER, kind="sleep", params={"steps": 50, "step_seconds": 0.1})
    assert wait_until(lambda: (fresh(job).progress_current or 0) >= 2, timeout=20), "the job never ran"
    asked_at = time.monotonic()
    assert job_cancel(owner=OWNER, job_id=job.id).state == JobState.RUNNING
    assert wait_until(lambda: fresh(job).state == JobState.CANCELLED, timeout=2), fresh(job).state
    assert time.monotonic() - asked_at < 2
    stopped = fresh(job)
    assert stopped.progress_current is not None and stopped.progress_current < 50
    assert stopped.result is None and stopped.finished_at is not None
    # Progress stopped for good: the row is terminal and stays as it was.
    assert not wait_until(lambda: fresh(job).seq != stopped.seq, timeout=0.5)


@pytest.mark.django_db(transaction=True)
def test_cancel_of_a_queued_job_means_the_worker_never_runs_it(worker: Any) -> None:
    job = new_job()  # saved but not dispatched yet
    job_cancel(owner=OWNER, job_id=job.id)
    assert job_dispatch(job_id=job.id) is True
    assert wait_until(lambda: fresh(job).dispatched_at is not None, timeout=5)
    # A job dispatched after it is finished, to show the worker has handled this task:
    probe = job_create(owner=OWNER, kind="sleep", params={"steps": 1, "step_seconds": 0})
    assert wait_until(lambda: fresh(probe).state == JobState.SUCCEEDED, timeout=20)
    saved = fresh(job)
    assert (saved.state, saved.started_at, saved.seq) == (JobState.CANCELLED, None, 2)


# --- frames on the channel layer -------------------------------------------------


class Listener:
    """A channel in some groups of the real channel layer (Redis pub/sub)."""

    def __init__(self, layer: Any, channel: str) -> None:
        self.layer = layer
        self.channel = channel

    async def job(self) -> dict[str, Any]:
        message = await asyncio.wait_for(self.layer.receive(self.channel), timeout=FRAME_TIMEOUT)
        assert message["type"] == "job.frame"
        frame = json.loads(message["text"])
        assert frame["type"] == "job"
        assert frame["job"]["seq"] == message["seq"]
        assert frame["job"]["id"] == message["job_id"]
        job: dict[str, Any] = frame["job"]
        return job


@pytest.fixture
async def listen(redis_server: Any) -> AsyncIterator[Callable[[str], Any]]:
    layer = get_channel_layer()
    assert layer is not None
    joined: list[tuple[str, str]] = []

    async def join(group: str) -> Listener:
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        joined.append((group, channel))
        return Listener(layer, channel)

    yield join
    for group, channel in joined:
        await layer.group_discard(group, channel)


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
async def test_cancel_of_a_queued_job_publishes_the_cancelled_frame(listen: Callable[[str], Any]) -> None:
    job = await sync_to_async(new_job)()
    listener = await listen(job_group(job.id))
    await sync_to_async(job_cancel)(owner=OWNER, job_id=job.id)
    frame = await listener.job()
    assert (frame["seq"], frame["state"], frame["queue_position"]) == (2, "cancelled", None)


@pytest.mark.django_db(transaction=True)
async def test_job_create_publishes_the_queued_job_to_its_owner_group(listen: Callable[[str], Any]) -> None:
    owner = Owner(token=uuid.uuid4().hex)
    listener = await listen(owner_group(owner.key))
    job = await sync_to_async(job_create)(owner=owner, kind="sleep", params={"steps": 1, "step_seconds": 0})
    frame = await listener.job()
    assert (frame["id"], frame["seq"], frame["state"]) == (str(job.id), 1, "queued")
    assert frame["queue_position"] >= 1
    assert "error_detail" not in frame  # frames go to owners, never with the traceback


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


# --- the worker's fast path: RunningJob --------------------------------------------


def running_job() -> RunningJob:
    job = new_job()
    started = job_start(job_id=job.id, task_id="task-fast")
    assert started is not None
    return RunningJob(started)


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
    monkeypatch.setattr(services, "PERSIST_INTERVAL", 0.0)
    running.report(update(2))
    assert fresh(running.job).progress_current == 2


@pytest.mark.django_db(transaction=True)
def test_running_job_never_runs_more_than_half_the_window_ahead_of_its_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "PERSIST_INTERVAL", 1e9)  # only the window forces a write
    running = running_job()
    gaps = []
    for step in range(services.SEQ_WINDOW + 10):
        running.report(update(step, services.SEQ_WINDOW))
        gaps.append(running.job.seq - fresh(running.job).seq)
    assert max(gaps) == services.SEQ_WINDOW // 2 - 1
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


# --- recovery: lost workers, lost dispatches -----------------------------------------


def lost_run(*, attempts: int = 1, silent_for: float = 3600, cancel_requested: bool = False) -> Job:
    """A running job whose worker went silent `silent_for` seconds ago, mid-way."""
    job = new_job(state=JobState.RUNNING)
    long_ago = timezone.now() - timedelta(seconds=silent_for)
    Job.objects.filter(pk=job.pk).update(
        attempts=attempts,
        heartbeat_at=long_ago,
        started_at=long_ago,
        cancel_requested=cancel_requested,
        seq=7,
        has_progress=True,
        progress_current=2,
        progress_total=3,
        progress_message="step 2 of 3",
    )
    return fresh(job)


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
    assert job.seq >= lost.seq + services.SEQ_WINDOW + 1
    assert job.heartbeat_at is not None and job.heartbeat_at > lost.heartbeat_at  # type: ignore[operator]


@pytest.mark.django_db
def test_redelivered_task_of_a_job_lost_max_attempts_times_fails_it_with_a_clear_error() -> None:
    lost = lost_run(attempts=3)
    assert job_start(job_id=lost.id, task_id="task-4", redelivered=True) is None
    job = fresh(lost)
    assert (job.state, job.attempts) == (JobState.FAILED, 3)
    assert job.error == "The worker running this job was lost 3 times; giving up."
    assert "JOB_MAX_ATTEMPTS" in job.error_detail
    assert job.finished_at is not None and job.seq > lost.seq + services.SEQ_WINDOW


@pytest.mark.django_db
def test_job_max_attempts_comes_from_settings(settings: Any) -> None:
    settings.JOB_MAX_ATTEMPTS = 1
    lost = lost_run(attempts=1)
    assert job_start(job_id=lost.id, task_id="task-2", redelivered=True) is None
    assert (fresh(lost).state, fresh(lost).error) == (JobState.FAILED, services.lost_worker_error(1))


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
    assert services.job_heartbeat(runs=runs) == 1
    assert fresh(mine).heartbeat_at > mine.heartbeat_at  # type: ignore[operator]
    assert fresh(replaced).heartbeat_at == replaced.heartbeat_at
    assert fresh(finished).heartbeat_at == finished.heartbeat_at


@pytest.mark.django_db(transaction=True)
def test_heartbeat_thread_keeps_a_silent_running_job_fresh(settings: Any) -> None:
    settings.JOB_HEARTBEAT_INTERVAL = 0.05
    job = lost_run(attempts=1)
    heartbeat = services.Heartbeat(lambda runs: services.job_heartbeat(runs=runs))
    heartbeat.add(job.id, attempt=1)
    try:
        assert wait_until(lambda: fresh(job).heartbeat_at > job.heartbeat_at, timeout=5)  # type: ignore[operator]
    finally:
        heartbeat.discard(job.id)
    assert heartbeat.runs() == {}


@pytest.mark.django_db
def test_sweep_leaves_running_jobs_that_heartbeat_alone() -> None:
    alive = lost_run(attempts=1, silent_for=1)
    assert services.job_sweep_stale() == services.StaleSweep(requeued=0, failed=0, cancelled=0)
    assert (fresh(alive).state, fresh(alive).seq) == (JobState.RUNNING, 7)


@pytest.mark.django_db
def test_sweep_fails_a_silent_job_lost_max_attempts_times() -> None:
    lost = lost_run(attempts=3)
    assert services.job_sweep_stale() == services.StaleSweep(requeued=0, failed=1, cancelled=0)
    job = fresh(lost)
    assert (job.state, job.error) == (JobState.FAILED, services.lost_worker_error(3))
    assert job.seq > lost.seq + services.SEQ_WINDOW


@pytest.mark.django_db
def test_sweep_cancels_a_silent_job_that_was_asked_to_stop() -> None:
    lost = lost_run(attempts=1, cancel_requested=True)
    assert services.job_sweep_stale() == services.StaleSweep(requeued=0, failed=0, cancelled=1)
    assert fresh(lost).state == JobState.CANCELLED


@pytest.mark.django_db
def test_sweep_fails_a_silent_job_past_its_hard_time_limit_instead_of_running_it_again() -> None:
    lost = lost_run(attempts=1, silent_for=2 * 60 * 60)  # sleep's hard limit is 5460 s
    assert services.job_sweep_stale() == services.StaleSweep(requeued=0, failed=1, cancelled=0)
    job = fresh(lost)
    assert (job.state, job.attempts) == (JobState.FAILED, 1)
    assert job.error == "The job ran longer than its hard limit of 5460 seconds and was stopped."


@pytest.mark.django_db
def test_sweep_takes_a_running_row_with_no_heartbeat_by_its_last_update() -> None:
    lost = lost_run(attempts=3)
    long_ago = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=lost.pk).update(heartbeat_at=None, updated_at=long_ago)  # a row from before heartbeats
    assert services.job_sweep_stale().failed == 1


@pytest.mark.django_db(transaction=True)
def test_sweep_queues_a_silent_job_again_and_a_worker_runs_it_to_the_end(worker: Any) -> None:
    lost = lost_run(attempts=1)
    Job.objects.filter(pk=lost.pk).update(dispatched_at=timezone.now() - timedelta(hours=1))
    assert services.job_sweep_stale() == services.StaleSweep(requeued=1, failed=0, cancelled=0)
    assert wait_until(lambda: fresh(lost).state == JobState.SUCCEEDED, timeout=15)
    job = fresh(lost)
    assert job.attempts == 2 and job.dispatched_at is not None
    assert job.seq > lost.seq + services.SEQ_WINDOW


@pytest.mark.django_db(transaction=True)
async def test_sweep_publishes_the_job_queued_again(listen: Callable[[str], Any]) -> None:
    lost = await sync_to_async(lost_run)(attempts=1)
    listener = await listen(job_group(lost.id))
    with mock.patch.object(services, "job_dispatch") as dispatch:  # no worker here: see the frame, not the run
        await sync_to_async(services.job_sweep_stale)()
    frame = await listener.job()
    assert (frame["state"], frame["seq"], frame["queue_position"]) == ("queued", lost.seq + services.SEQ_WINDOW + 1, 1)
    assert frame["progress"] == {
        "current": 0,
        "total": 3,
        "percent": 0.0,
        "message": "Its worker stopped responding; waiting to run again (attempt 2 of 3)",
        "rate": None,
        "eta_seconds": None,
    }
    dispatch.assert_called_once_with(job_id=lost.id)


@pytest.mark.django_db(transaction=True)
def test_redispatch_sends_queued_jobs_the_broker_never_took(worker: Any) -> None:
    stranded, fresh_one = new_job(), new_job()
    Job.objects.filter(pk=stranded.pk).update(updated_at=timezone.now() - timedelta(minutes=1))
    assert services.job_redispatch_undispatched() == 1
    assert wait_until(lambda: fresh(stranded).state == JobState.SUCCEEDED, timeout=15)
    # Just created: its own dispatch may still be on the way.
    assert (fresh(fresh_one).state, fresh(fresh_one).dispatched_at) == (JobState.QUEUED, None)


@pytest.mark.django_db
def test_sweep_task_reports_what_it_did() -> None:
    from jobs.tasks import sweep

    lost_run(attempts=3)
    assert sweep() == {"requeued": 0, "failed": 1, "cancelled": 0, "redispatched": 0, "resent": 0}


# --- recovery: task messages the broker lost ----------------------------------------


def messages_of(client: Any, job: Job) -> tuple[int, int]:
    """How many task messages of the job wait in the queue, and how many a worker took
    and has not acknowledged (kombu's `unacked` hash)."""
    queued = [json.loads(raw)["headers"]["id"] for raw in client.lrange("celery", 0, -1)]
    taken = [json.loads(raw)[0]["headers"]["id"] for raw in client.hvals("unacked")]
    return queued.count(str(job.id)), taken.count(str(job.id))


def sent_long_ago(job: Job) -> Job:
    """The job as if it had waited in the queue for an hour: over JOB_REQUEUE_AFTER."""
    assert wait_until(lambda: fresh(job).dispatched_at is not None, timeout=5), "never dispatched"
    Job.objects.filter(pk=job.pk).update(dispatched_at=timezone.now() - timedelta(hours=1))
    return fresh(job)


@pytest.fixture
def busy_worker(worker: Any) -> Iterator[Callable[[], None]]:
    """The test worker busy with a long job; the function returned frees it (a cancel).

    The worker runs one task at a time and prefetches one (CELERY_WORKER_PREFETCH_MULTIPLIER),
    so what is sent while it is busy waits in the queue, where the test can see it.
    """
    blocker = job_create(owner=OWNER, kind="sleep", params={"steps": 600, "step_seconds": 0.1})
    assert wait_until(lambda: fresh(blocker).state == JobState.RUNNING, timeout=20), "the blocker never ran"

    def free() -> None:
        if not fresh(blocker).is_terminal:
            job_cancel(owner=OWNER, job_id=blocker.id)
        assert wait_until(lambda: fresh(blocker).is_terminal, timeout=10), "the blocker did not stop"

    yield free
    free()


@pytest.mark.django_db
def test_resend_lost_does_not_search_the_broker_without_jobs_queued_long_enough(settings: Any) -> None:
    settings.JOB_REQUEUE_AFTER = 60
    recent, never_sent, running = new_job(), new_job(), new_job(state=JobState.RUNNING)
    Job.objects.filter(pk=recent.pk).update(dispatched_at=timezone.now() - timedelta(seconds=50))
    Job.objects.filter(pk=running.pk).update(dispatched_at=timezone.now() - timedelta(hours=1))
    with mock.patch.object(services, "broker_task_ids_absent") as search:
        assert services.job_resend_lost() == 0
    search.assert_not_called()
    assert fresh(never_sent).dispatched_at is None  # `job_redispatch_undispatched`'s, not this


@pytest.mark.django_db(transaction=True)
def test_resend_lost_leaves_a_queued_job_whose_message_waits_in_the_queue(
    busy_worker: Callable[[], None], redis_client: Any
) -> None:
    job = sent_long_ago(job_create(owner=OWNER, kind="sleep", params={"steps": 1, "step_seconds": 0}))
    assert messages_of(redis_client, job) == (1, 0)
    assert services.job_resend_lost() == 0
    assert messages_of(redis_client, job) == (1, 0)  # not sent a second time
    assert fresh(job).dispatched_at == job.dispatched_at
    busy_worker()
    assert wait_until(lambda: fresh(job).state == JobState.SUCCEEDED, timeout=20), fresh(job).state
    assert wait_until(lambda: messages_of(redis_client, job) == (0, 0), timeout=5)  # acknowledged
    assert fresh(job).attempts == 1


@pytest.mark.django_db(transaction=True)
def test_resend_lost_sends_again_a_queued_job_whose_message_the_broker_lost(
    busy_worker: Callable[[], None], redis_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    job = sent_long_ago(job_create(owner=OWNER, kind="sleep", params={"steps": 1, "step_seconds": 0}))
    redis_client.delete("celery")  # as a Redis without persistence comes back from a restart
    assert messages_of(redis_client, job) == (0, 0)
    with caplog.at_level(logging.WARNING, logger="jobs.services"):
        assert services.job_resend_lost() == 1
    assert messages_of(redis_client, job) == (1, 0)
    resent = fresh(job)
    assert resent.state == JobState.QUEUED and resent.seq == job.seq  # a send, not a change users see
    assert resent.dispatched_at is not None and resent.dispatched_at > timezone.now() - timedelta(seconds=10)
    (line,) = [r.getMessage() for r in caplog.records if "sent again" in r.getMessage()]
    assert line.startswith(f"job {job.id} (kind sleep): the broker lost its task message")
    assert services.job_resend_lost() == 0  # sent just now: not looked for again yet
    busy_worker()
    assert wait_until(lambda: fresh(job).state == JobState.SUCCEEDED, timeout=20), fresh(job).state
    assert fresh(job).attempts == 1


@pytest.mark.django_db(transaction=True)
def test_resend_lost_leaves_a_queued_job_whose_message_a_worker_holds_unacknowledged(
    busy_worker: Callable[[], None], redis_client: Any
) -> None:
    from celery_app import app

    job = sent_long_ago(job_create(owner=OWNER, kind="sleep", params={"steps": 1, "step_seconds": 0}))
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        assert isinstance(channel, RedisChannel)
        # Taken as a worker prefetches it: out of the list, into `unacked`, not started.
        message = channel.basic_get("celery", no_ack=False)
        assert message is not None and message.headers["id"] == str(job.id)
        assert messages_of(redis_client, job) == (0, 1)
        assert services.job_resend_lost() == 0
        assert messages_of(redis_client, job) == (0, 1)
        message.reject(requeue=True)  # handed back, as a worker that shuts down does
    assert messages_of(redis_client, job) == (1, 0)
    busy_worker()
    assert wait_until(lambda: fresh(job).state == JobState.SUCCEEDED, timeout=20), fresh(job).state
    assert fresh(job).attempts == 1


@pytest.mark.django_db(transaction=True)
def test_a_job_sent_twice_runs_once_and_its_second_message_changes_nothing(
    busy_worker: Callable[[], None], redis_client: Any
) -> None:
    job = job_create(owner=OWNER, kind="sleep", params={"steps": 2, "step_seconds": 0})
    assert wait_until(lambda: fresh(job).dispatched_at is not None, timeout=5)
    assert job_dispatch(job_id=job.id) is True  # a lost message re-sent that was not lost after all
    assert messages_of(redis_client, job) == (2, 0)
    busy_worker()
    assert wait_until(lambda: fresh(job).state == JobState.SUCCEEDED, timeout=20), fresh(job).state
    done = fresh(job)
    # Both messages handled and acknowledged: the second found the job finished.
    assert wait_until(lambda: messages_of(redis_client, job) == (0, 0), timeout=10), messages_of(redis_client, job)
    after = fresh(job)
    assert (after.state, after.attempts, after.seq, after.finished_at) == (
        JobState.SUCCEEDED,
        1,
        done.seq,
        done.finished_at,
    )


@pytest.mark.django_db
def test_resend_lost_with_the_broker_not_answering_sends_nothing_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from celery_app import app
    from core.redis_local import free_port

    job = new_job()
    Job.objects.filter(pk=job.pk).update(dispatched_at=timezone.now() - timedelta(hours=1))
    sent_at = fresh(job).dispatched_at
    monkeypatch.setattr(app.conf, "broker_read_url", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="jobs.services"):
        assert services.job_resend_lost() == 0
    assert time.monotonic() - started < 10
    assert "the broker did not answer" in caplog.text
    assert (fresh(job).state, fresh(job).dispatched_at) == (JobState.QUEUED, sent_at)


@pytest.mark.django_db
def test_resend_lost_leaves_a_job_that_started_while_the_broker_was_searched() -> None:
    job = new_job()
    Job.objects.filter(pk=job.pk).update(dispatched_at=timezone.now() - timedelta(hours=1))
    sent_at = fresh(job).dispatched_at

    def search_while_it_starts(**search: Any) -> set[str]:
        assert job_start(job_id=job.id, task_id=str(job.id)) is not None  # its message was in a worker's hands
        return set(search["task_ids"])  # and the search came too late to see it

    with (
        mock.patch.object(services, "broker_task_ids_absent", side_effect=search_while_it_starts),
        mock.patch.object(services, "job_dispatch") as dispatch,
    ):
        assert services.job_resend_lost() == 0
    dispatch.assert_not_called()
    assert (fresh(job).state, fresh(job).dispatched_at) == (JobState.RUNNING, sent_at)


@pytest.mark.django_db
def test_resend_lost_that_cannot_send_leaves_the_job_to_the_never_sent_sweep() -> None:
    job = new_job()
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=job.pk).update(dispatched_at=an_hour_ago, updated_at=an_hour_ago)
    with (
        mock.patch.object(services, "broker_task_ids_absent", return_value={str(job.id)}),
        mock.patch.object(services, "job_dispatch", return_value=False),  # the broker went away meanwhile
    ):
        assert services.job_resend_lost() == 0
    assert (fresh(job).state, fresh(job).dispatched_at) == (JobState.QUEUED, None)
    with mock.patch.object(services, "job_dispatch", return_value=True) as dispatch:
        assert services.job_redispatch_undispatched() == 1
    dispatch.assert_called_once_with(job_id=job.id)
