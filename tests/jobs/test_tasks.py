"""The Celery task under a real worker: a job runs from queued to its terminal state."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.models import Job, JobState
from jobs.owners import Owner
from jobs.services import job_create
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Owner(token="t" * 32)


def finished(job: Job, timeout: float = 20) -> Job:
    assert wait_until(lambda: Job.objects.get(pk=job.pk).is_terminal, timeout=timeout), "job never ended"
    return Job.objects.get(pk=job.pk)


def test_worker_runs_primes_to_success(worker: Any) -> None:
    job = finished(job_create(owner=OWNER, kind="primes", params={"limit": 100_000}))
    assert job.state == JobState.SUCCEEDED
    assert job.result == {"count": 9592, "limit": 100_000}
    assert job.progress_current == 100_000
    assert job.started_at is not None and job.finished_at is not None
    assert job.seq >= 4  # created, started, at least one progress, finished


def test_failing_sleep_job_stores_the_users_message(worker: Any) -> None:
    job = finished(job_create(owner=OWNER, kind="sleep", params={"steps": 3, "step_seconds": 0, "fail_at_step": 2}))
    assert job.state == JobState.FAILED
    assert job.error == "Failed at step 2, as asked by fail_at_step."
    assert job.error_detail == ""


def test_final_state_carries_the_last_progress_even_when_the_row_was_behind(worker: Any) -> None:
    # A report every 0.11 s: each one is published (the reporter allows 10/s), while
    # the row is written about once a second, so it lags the last frames; the
    # terminal write must still hold the newest progress (the bar must not go back).
    job = finished(job_create(owner=OWNER, kind="sleep", params={"steps": 30, "step_seconds": 0.11}))
    assert job.state == JobState.SUCCEEDED
    assert (job.progress_current, job.progress_total) == (30, 30)
    assert job.progress_message == "step 30 of 30"
