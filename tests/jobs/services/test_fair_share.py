"""Fair share (jobs/services/fair_share.py): a job starts only while its owner's running
jobs plus its owner's queued jobs ahead of it stay under JOB_QUOTA_RUNNING; otherwise it
is held, queued and out of the broker, and dispatched again when its owner's line moves
(an end, a cancel, the sweeper)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.models import Q
from django.test import override_settings
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.owners import Owner
from jobs.services import (
    job_cancel,
    job_dispatch_held,
    job_end_lost,
    job_finish,
    job_redispatch_undispatched,
    job_resend_lost,
    job_start,
)
from tests.jobs.services.conftest import fresh

LIMIT = 2


def anyone() -> Owner:
    return Owner(token=secrets.token_hex(16))


def queued(owner: Owner, count: int) -> list[Job]:
    """`count` queued jobs of `owner`, submitted one after the other."""
    base = timezone.now() - timedelta(minutes=1)
    jobs = []
    for index in range(count):
        at = base + timedelta(milliseconds=index)
        jobs.append(
            Job.objects.create(
                owner_token=owner.token or "",
                kind="sleep",
                params={"steps": 1, "step_seconds": 0},
                seq=1,
                created_at=at,
                updated_at=at,
                dispatched_at=at,  # its message is on the way to a worker
            )
        )
    return jobs


def start(job: Job) -> Job | None:
    return job_start(job_id=job.id, task_id=str(job.id))


def end(job: Job) -> Job | None:
    return job_finish(job_id=job.id, state=JobState.SUCCEEDED, attempt=fresh(job).attempts, result={})


def states(jobs: list[Job]) -> list[tuple[str, bool]]:
    return [(row.state, row.held) for row in map(fresh, jobs)]


RUNNING, QUEUED, HELD, DONE = (
    (JobState.RUNNING, False),
    (JobState.QUEUED, False),
    (JobState.QUEUED, True),
    (JobState.SUCCEEDED, False),
)


@pytest.fixture(autouse=True)
def _limit_two() -> Any:
    with override_settings(JOB_QUOTA_RUNNING=LIMIT):
        yield


@pytest.mark.django_db
def test_an_owner_at_the_limit_has_its_next_job_held_queued_with_nothing_published() -> None:
    owner = anyone()
    jobs = queued(owner, 3)
    assert start(jobs[0]) is not None and start(jobs[1]) is not None
    assert start(jobs[2]) is None
    assert states(jobs) == [RUNNING, RUNNING, HELD]
    third = fresh(jobs[2])
    assert (third.seq, third.attempts, third.started_at) == (1, 0, None)  # nothing changed that a client sees


@pytest.mark.django_db
def test_another_owners_job_starts_while_one_owner_is_at_the_limit() -> None:
    busy, other = anyone(), anyone()
    jobs = queued(busy, 3)
    for job in jobs:
        start(job)
    [theirs] = queued(other, 1)
    assert start(theirs) is not None
    assert fresh(theirs).state == JobState.RUNNING


@pytest.mark.django_db
def test_a_job_behind_as_many_queued_jobs_as_free_places_is_held_and_they_start_first() -> None:
    owner = anyone()
    first, second, third = queued(owner, 3)
    start(first)
    assert start(third) is None  # one place free, and `second` is ahead of it in line
    assert start(second) is not None
    assert states([first, second, third]) == [RUNNING, RUNNING, HELD]


@pytest.mark.django_db
def test_the_end_of_a_running_job_dispatches_the_owners_oldest_held_job(
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    owner = anyone()
    jobs = queued(owner, 4)
    for job in jobs:
        start(job)
    assert states(jobs) == [RUNNING, RUNNING, HELD, HELD]
    with django_capture_on_commit_callbacks(execute=True):
        end(jobs[0])
    assert states(jobs) == [DONE, RUNNING, QUEUED, HELD]
    assert fresh(jobs[2]).dispatched_at is not None  # sent to the broker again
    assert start(jobs[2]) is not None
    assert start(jobs[3]) is None


@pytest.mark.django_db
def test_cancelling_a_queued_job_ahead_dispatches_the_held_job_behind_it(
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    owner = anyone()
    first, second, third = queued(owner, 3)
    start(first)
    assert start(third) is None
    with django_capture_on_commit_callbacks(execute=True):
        job_cancel(owner=owner, job_id=second.id)
    assert states([first, third]) == [RUNNING, QUEUED]
    assert start(third) is not None


@pytest.mark.django_db
def test_a_lost_run_that_ends_dispatches_the_owners_next_held_job(
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    owner = anyone()
    jobs = queued(owner, 3)
    for job in jobs:
        start(job)
    lost = fresh(jobs[0])
    with django_capture_on_commit_callbacks(execute=True):
        job_end_lost(job_id=lost.id, attempts=lost.attempts, cancelled=False, where=Q())
    assert states(jobs) == [(JobState.FAILED, False), RUNNING, QUEUED]


@pytest.mark.django_db
def test_the_sweep_dispatches_held_jobs_whose_owner_has_a_free_place_and_no_others(
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    stranded, busy = anyone(), anyone()
    mine = queued(stranded, 3)
    for job in mine:
        start(job)
    # The worker that ended the first job died before it could dispatch the next one.
    Job.objects.filter(pk=mine[0].pk).update(state=JobState.SUCCEEDED, finished_at=timezone.now())
    theirs = queued(busy, 3)
    for job in theirs:
        start(job)
    with django_capture_on_commit_callbacks(execute=True):
        assert job_dispatch_held() == 1
    assert states(mine) == [DONE, RUNNING, QUEUED]
    assert states(theirs) == [RUNNING, RUNNING, HELD]


@pytest.mark.django_db
def test_held_jobs_are_left_alone_by_the_sweeps_for_lost_messages() -> None:
    owner = anyone()
    jobs = queued(owner, 3)
    for job in jobs:
        start(job)
    later = timezone.now() + timedelta(hours=1)
    Job.objects.filter(pk=jobs[2].pk).update(dispatched_at=None)
    assert job_redispatch_undispatched(now=later) == 0
    Job.objects.filter(pk=jobs[2].pk).update(dispatched_at=timezone.now() - timedelta(hours=1))
    assert job_resend_lost(now=later) == 0  # never looks for it in the broker
    assert states(jobs) == [RUNNING, RUNNING, HELD]


@pytest.mark.django_db
@override_settings(JOB_QUOTA_RUNNING=0)
def test_zero_turns_the_running_limit_off() -> None:
    jobs = queued(anyone(), 5)
    assert all(start(job) is not None for job in jobs)


@pytest.mark.django_db
def test_a_users_jobs_count_together_whatever_session_started_them() -> None:
    from django.contrib.auth.models import User

    user = User.objects.create_user("fair", password="pw-for-tests-only")
    jobs = queued(anyone(), 1) + queued(anyone(), 1) + queued(anyone(), 1)
    Job.objects.filter(pk__in=[job.pk for job in jobs]).update(owner_user=user)  # adopted at sign-in
    assert [start(job) is not None for job in jobs] == [True, True, False]


@pytest.mark.django_db(transaction=True)
def test_concurrent_starts_of_one_owners_jobs_never_pass_the_limit() -> None:
    owner = anyone()
    jobs = queued(owner, 8)
    begin = threading.Barrier(len(jobs))

    def run(job: Job) -> None:
        try:
            begin.wait(timeout=10)
            start(job)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert states(jobs) == [RUNNING, RUNNING] + [HELD] * 6  # the first two in line, whoever came first
