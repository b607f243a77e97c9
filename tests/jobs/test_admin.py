"""The admin's job list and its actions, through Django's test client as staff."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.utils import timezone

from jobs.models import ImportedContact, Job, JobState
from jobs.owners import Owner
from jobs.services import job_create
from jobs.uploads import upload_dir, upload_job_id, upload_path
from tests.accounts import VIEW_ALL_JOBS, user_with
from tests.waiting import wait_until

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


def admin_client(username: str, *codenames: str) -> Client:
    """A staff member of the admin holding the jobs permissions `codenames`."""
    client = Client()
    client.force_login(user_with(username, *codenames, is_staff=True))
    return client


def test_view_only_admin_users_get_neither_action_and_cannot_run_them() -> None:
    viewer = admin_client("viewer", "view_job", VIEW_ALL_JOBS)
    queued = make_job(JobState.QUEUED)
    failed = make_job(JobState.FAILED, error="boom")

    page = viewer.get(CHANGELIST).content.decode()
    assert str(queued.id) in page
    assert "cancel_jobs" not in page and "retry_jobs" not in page

    act(viewer, "cancel_jobs", queued)
    act(viewer, "retry_jobs", failed)
    queued.refresh_from_db()
    assert queued.state == JobState.QUEUED
    assert Job.objects.count() == 2


def test_admin_users_with_change_permission_run_the_actions() -> None:
    clerk = admin_client("clerk", "view_job", "change_job")
    queued = make_job(JobState.QUEUED)

    assert "cancel_jobs" in clerk.get(CHANGELIST).content.decode()
    assert "Cancel asked for 1 job(s)" in act(clerk, "cancel_jobs", queued).content.decode()
    queued.refresh_from_db()
    assert queued.state == JobState.CANCELLED


def test_retry_action_starts_a_new_job_with_the_same_parameters_and_owner(staff_client: Client) -> None:
    failed = make_job(JobState.FAILED, error="boom")
    running = make_job(JobState.RUNNING)

    page = act(staff_client, "retry_jobs", failed, running).content.decode()

    retried = Job.objects.exclude(pk__in=[failed.pk, running.pk]).get()
    assert (retried.kind, retried.params, retried.owner_token) == (failed.kind, failed.params, failed.owner_token)
    assert retried.state == JobState.QUEUED
    assert "Started 1 new job(s)" in page
    assert f"Job {running.id} (sleep) was not retried: it is still running" in page


def test_jobs_cannot_be_added_or_edited_in_the_admin(staff_client: Client) -> None:
    job = make_job(JobState.QUEUED)

    assert staff_client.get("/admin/jobs/job/add/").status_code == 403
    change = staff_client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    assert 'name="state"' not in change  # shown, not editable


# --- retrying a job whose parameter is an uploaded file (csv_import) -------------

CONTACTS = b"email,name,age\nada@example.com,Ada Lovelace,36\nnot-an-email,Bob,40\n"
JOB_TIMEOUT = 30.0  # seconds: queued behind at most another test's short job


@pytest.fixture
def own_media_root(tmp_path: Path) -> Iterator[Path]:
    """Files would outlive the test's rows: each test its own MEDIA_ROOT."""
    with override_settings(MEDIA_ROOT=str(tmp_path / "media")):
        yield tmp_path / "media"


def make_import() -> Job:
    upload = SimpleUploadedFile("contacts.csv", CONTACTS, content_type="text/csv")
    return job_create(owner=Owner(token="c" * 32), kind="csv_import", params={}, files={"file": upload})


def ended(job: Job) -> bool:
    job.refresh_from_db()
    return job.is_terminal


@pytest.mark.django_db(transaction=True)
def test_retry_of_a_csv_import_reruns_a_copy_of_its_upload_on_a_worker(
    staff_client: Client, own_media_root: Path, worker: Any
) -> None:
    first = make_import()
    assert wait_until(lambda: ended(first), timeout=JOB_TIMEOUT)

    page = act(staff_client, "retry_jobs", first).content.decode()

    assert "Started 1 new job(s)" in page
    retried = Job.objects.exclude(pk=first.pk).get()
    assert (retried.kind, retried.owner_token) == ("csv_import", first.owner_token)
    # A copy under the new job: the kind stores its rows for the job its file belongs to.
    assert upload_job_id(retried.params["file"]) == retried.id
    assert upload_path(retried.params["file"]).read_bytes() == CONTACTS
    assert upload_path(first.params["file"]).read_bytes() == CONTACTS  # the first job keeps its own
    assert wait_until(lambda: ended(retried), timeout=JOB_TIMEOUT)
    assert (retried.state, retried.result) == (JobState.SUCCEEDED, {"rows": 2, "imported": 1, "errors": 1})
    for job in (first, retried):
        assert list(ImportedContact.objects.filter(job=job).values_list("email", flat=True)) == ["ada@example.com"]


def test_retry_says_for_each_csv_import_whose_upload_is_gone_why_it_was_not_retried(
    staff_client: Client, own_media_root: Path
) -> None:
    imports = [make_import(), make_import()]
    Job.objects.filter(pk__in=[job.pk for job in imports]).update(state=JobState.FAILED)
    for job in imports:
        shutil.rmtree(upload_dir(job.id))
    other = make_job(JobState.SUCCEEDED)

    response = act(staff_client, "retry_jobs", *imports, other)

    assert response.status_code == 200  # a message, not an error page
    page = response.content.decode()
    for job in imports:
        assert f"Job {job.id} (csv_import) was not retried: its uploaded file {job.params['file']} is gone" in page
    assert "ask its owner to upload the file again" in page
    assert "Started 1 new job(s)" in page  # the others in the selection still go
    assert not Job.objects.filter(kind="csv_import").exclude(pk__in=[job.pk for job in imports]).exists()


def test_retry_of_a_csv_import_whose_upload_is_now_over_the_limit_says_so(
    staff_client: Client, own_media_root: Path
) -> None:
    done = make_import()
    Job.objects.filter(pk=done.pk).update(state=JobState.SUCCEEDED)

    with override_settings(CSV_IMPORT_MAX_BYTES=10):
        page = act(staff_client, "retry_jobs", done).content.decode()

    assert f"Job {done.id} (csv_import) was not retried: its parameters no longer pass the kind" in page
    assert "file: The file" in page and "CSV_IMPORT_MAX_BYTES" in page
    assert Job.objects.count() == 1
    assert sorted(path.name for path in (own_media_root / "uploads").iterdir()) == [str(done.id)]  # no copy left
