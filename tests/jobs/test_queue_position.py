"""queue_position under fair share (jobs/selectors.py, docs/contract.md#queue_position):
the jobs that will start before a queued one, plus one. A job its owner's limit lets
start goes after every such job submitted before it; a held job after every job that may
start and its own owner's queued jobs ahead of it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.selectors import job_queue_position, job_queue_positions

BASE = timezone.now() - timedelta(hours=1)


def job(name: str, *, owner: str | User, state: JobState = JobState.QUEUED, at: int = 0) -> Job:
    """A job of `owner` (an anonymous token, or a user) submitted `at` seconds after BASE."""
    created = BASE + timedelta(seconds=at)
    user = owner if isinstance(owner, User) else None
    return Job.objects.create(
        owner_user=user,
        owner_token="" if user else str(owner),
        kind="sleep",
        params={"name": name},
        state=state,
        seq=1,
        created_at=created,
        updated_at=created,
    )


def positions() -> dict[str, int | None]:
    """Every queued job's place, read one by one; the bulk count must agree."""
    line = list(Job.objects.filter(state=JobState.QUEUED).order_by("created_at", "pk"))
    one_by_one = {row.params["name"]: job_queue_position(job=row) for row in line}
    bulk = job_queue_positions(queued=line)
    assert {row.params["name"]: bulk[row.id] for row in line} == one_by_one
    return one_by_one


@pytest.mark.django_db
@override_settings(JOB_QUOTA_RUNNING=2)
def test_held_jobs_come_after_every_job_that_may_start_and_their_owners_jobs_ahead() -> None:
    user = User.objects.create_user("c", password="pw-for-tests-only")
    # a: two running (no free place); b: none running (two free); c, a user: one running (one free).
    for name, owner in (("a-run-1", "a"), ("a-run-2", "a"), ("c-run", user)):
        job(name, owner=owner, state=JobState.RUNNING)
    job("c1", owner=user, at=1)  # may start: c's one free place
    job("a3", owner="a", at=2)  # held behind a's running jobs
    job("a4", owner="a", at=3)
    job("b1", owner="b", at=4)  # may start
    job("b2", owner="b", at=5)  # may start
    job("c2", owner=user, at=6)  # held: c1 takes c's free place
    job("b3", owner="b", at=7)  # held: b1 and b2 take b's places
    job("a5", owner="a", at=8)

    assert positions() == {
        "c1": 1,
        "b1": 2,  # after c1
        "b2": 3,
        # Held: after c1, b1, b2 (which may all start, b's submitted later included),
        # then their owner's queued jobs ahead of them.
        "a3": 4,
        "a4": 5,
        "a5": 6,
        "c2": 4,  # after the three, c1 counted once: whether a3 or c2 goes first is whose job ends first
        "b3": 4,
    }


@pytest.mark.django_db
@override_settings(JOB_QUOTA_RUNNING=2)
def test_an_owner_with_free_places_is_in_submission_order_with_everyone_else() -> None:
    job("a1", owner="a", at=1)
    job("b1", owner="b", at=2)
    job("a2", owner="a", at=3)
    job("b2", owner="b", at=4)
    assert positions() == {"a1": 1, "b1": 2, "a2": 3, "b2": 4}


@pytest.mark.django_db
@override_settings(JOB_QUOTA_RUNNING=1)
def test_a_job_not_queued_has_no_place() -> None:
    running = job("r", owner="a", state=JobState.RUNNING)
    done = job("d", owner="a", state=JobState.SUCCEEDED)
    assert job_queue_position(job=running) is None and job_queue_position(job=done) is None


@pytest.mark.django_db
@override_settings(JOB_QUOTA_RUNNING=0)
def test_without_the_running_limit_the_place_is_among_every_queued_job_oldest_first() -> None:
    job("a-run", owner="a", state=JobState.RUNNING)
    for at, name in enumerate(("a1", "a2", "b1", "a3")):
        job(name, owner="b" if name.startswith("b") else "a", at=at)
    assert positions() == {"a1": 1, "a2": 2, "b1": 3, "a3": 4}
