"""Cancel (jobs/services/cancel.py) in each state, and a cancel reaching a running job
under a real worker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs.exceptions import JobAlreadyFinished, JobNotFound
from jobs.models import JobState
from jobs.owners import Owner
from jobs.services import job_cancel, job_create, job_dispatch, job_report_progress
from notifications.groups import job_group
from tests.jobs.services.conftest import OWNER, SOMEONE_ELSE, fresh, new_job, update
from tests.waiting import wait_until

# --- cancel -----------------------------------------------------------------------


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
def test_an_owner_who_views_all_may_cancel_any_job() -> None:
    job = new_job(owner=SOMEONE_ELSE)
    assert job_cancel(owner=Owner(user_id=1, views_all=True), job_id=job.id).state == JobState.CANCELLED


@pytest.mark.django_db(transaction=True)
async def test_cancel_of_a_queued_job_publishes_the_cancelled_frame(listen: Callable[[str], Any]) -> None:
    job = await sync_to_async(new_job)()
    listener = await listen(job_group(job.id))
    await sync_to_async(job_cancel)(owner=OWNER, job_id=job.id)
    frame = await listener.job()
    assert (frame["seq"], frame["state"], frame["queue_position"]) == (2, "cancelled", None)


# --- under a real worker ----------------------------------------------------------


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


@pytest.mark.django_db
def test_a_cancel_of_a_running_job_is_one_write_and_a_repeat_is_none() -> None:
    job = new_job(state=JobState.RUNNING)
    with CaptureQueriesContext(connection) as first:
        job_cancel(owner=OWNER, job_id=job.id)
    with CaptureQueriesContext(connection) as again:
        asked = job_cancel(owner=OWNER, job_id=job.id)

    def writes(queries: CaptureQueriesContext) -> list[str]:
        return [
            query["sql"] for query in queries.captured_queries if query["sql"].lstrip().upper().startswith("UPDATE")
        ]

    assert len(writes(first)) == 1, writes(first)  # the cancel_requested flag, not a failed queued->cancelled too
    assert writes(again) == []
    assert asked.state == JobState.RUNNING and fresh(job).cancel_requested is True
