"""The admin's job list and its actions, through Django's test client as staff."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.owners import Owner
from jobs.services import job_create

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/jobs/job/"


@pytest.fixture
def staff_client(django_user_model: Any) -> Client:
    admin_user = django_user_model.objects.create_superuser(username="boss", password="pw-for-tests-only")
    client = Client()
    client.force_login(admin_user)
    return client


def make_job(state: JobState, **fields: Any) -> Job:
    job = job_create(owner=Owner(token="a" * 32), kind="sleep", params={"steps": 3, "step_seconds": 0})
    now = timezone.now()
    Job.objects.filter(pk=job.id).update(state=state, started_at=now, updated_at=now, **fields)
    job.refresh_from_db()
    return job


def act(client: Client, action: str, *jobs: Job) -> Any:
    return client.post(CHANGELIST, {"action": action, "_selected_action": [str(job.id) for job in jobs]}, follow=True)


def test_list_shows_state_kind_owner_progress_and_duration(staff_client: Client) -> None:
    make_job(JobState.RUNNING, has_progress=True, progress_current=1, progress_total=4)

    page = staff_client.get(CHANGELIST).content.decode()

    for text in ("sleep", "running", "visitor aaaaaaaa", "25.0 %", "s</td>"):
        assert text in page, text
    for column in ("owner", "progress", "duration", "attempts"):
        assert f"column-{column}" in page


def test_filters_and_search_narrow_the_list(staff_client: Client) -> None:
    running = make_job(JobState.RUNNING)
    failed = make_job(JobState.FAILED, error="disk full")

    by_state = staff_client.get(CHANGELIST, {"state__exact": "failed"}).content.decode()
    assert str(failed.id) in by_state and str(running.id) not in by_state
    by_text = staff_client.get(CHANGELIST, {"q": "disk full"}).content.decode()
    assert str(failed.id) in by_text and str(running.id) not in by_text


def test_cancel_action_cancels_a_queued_job_and_reports_ended_ones(staff_client: Client) -> None:
    queued = make_job(JobState.QUEUED)
    done = make_job(JobState.SUCCEEDED)

    page = act(staff_client, "cancel_jobs", queued, done).content.decode()

    queued.refresh_from_db()
    assert queued.state == JobState.CANCELLED
    assert "Cancel asked for 1 job(s)" in page
    assert "1 job(s) had already ended." in page


def test_retry_action_starts_a_new_job_with_the_same_parameters_and_owner(staff_client: Client) -> None:
    failed = make_job(JobState.FAILED, error="boom")
    running = make_job(JobState.RUNNING)

    page = act(staff_client, "retry_jobs", failed, running).content.decode()

    retried = Job.objects.exclude(pk__in=[failed.pk, running.pk]).get()
    assert (retried.kind, retried.params, retried.owner_token) == (failed.kind, failed.params, failed.owner_token)
    assert retried.state == JobState.QUEUED
    assert "Started 1 new job(s)" in page
    assert f"{running.id} is still running" in page


def test_jobs_cannot_be_added_or_edited_in_the_admin(staff_client: Client) -> None:
    job = make_job(JobState.QUEUED)

    assert staff_client.get("/admin/jobs/job/add/").status_code == 403
    change = staff_client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    assert 'name="state"' not in change  # shown, not editable
