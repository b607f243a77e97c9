"""The job services: every change bumps `seq` and is published; cancel in each state;
a cancel reaching a running job under a real worker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

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
