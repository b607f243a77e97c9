"""Storage quotas per owner (jobs/storage_quota.py): result bytes and imported rows.

A submit at a quota answers 429 naming it; a job that would pass one while it runs, on
the real worker, fails saying so and keeps nothing (no result file, no imported rows).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.utils import timezone

from jobs.models import ImportedContact, Job, JobState
from jobs.progress import Progress, ProgressUpdate
from jobs.storage_quota import ResultBudget, StorageQuotaExceeded, result_budget_for
from tests.accounts import BYPASS_QUOTAS, user_with
from tests.waiting import wait_until

JOB_TIMEOUT = 60.0  # seconds for a small job on the shared test worker, under load
REPORT_1000_ROWS_BYTES = (45_000, 55_000)  # what a 1,000-row report takes, about 49 bytes a row


@pytest.fixture(autouse=True)
def own_media_root(tmp_path: Path) -> Iterator[Path]:
    """Each test its own MEDIA_ROOT: rows roll back between tests, files would not."""
    media = tmp_path / "media"
    with override_settings(MEDIA_ROOT=str(media)):
        yield media


def signed_in(username: str, *codenames: str) -> tuple[Client, Any]:
    user = user_with(username, *codenames)
    client = Client()
    client.force_login(user)
    return client, user


def finished_job(user: Any, *, result_bytes: int = 0, log_bytes: int = 0, days_ago: float = 1) -> Job:
    """A job of `user` that ended `days_ago`, holding `result_bytes` of files and `log_bytes` of log."""
    ended = timezone.now() - timedelta(days=days_ago)
    return Job.objects.create(
        owner_user=user,
        kind="report",
        params={"rows": 1},
        state=JobState.SUCCEEDED,
        seq=3,
        result_bytes=result_bytes,
        log_bytes=log_bytes,
        created_at=ended,
        updated_at=ended,
        finished_at=ended,
    )


def post_report(client: Client, rows: int) -> Any:
    body = {"kind": "report", "params": {"rows": rows}}
    return client.post("/api/jobs/", data=json.dumps(body), content_type="application/json")


def post_import(client: Client, content: bytes) -> Any:
    upload = SimpleUploadedFile("contacts.csv", content, content_type="text/csv")
    return client.post("/api/jobs/", {"kind": "csv_import", "file": upload})


def over_quota_message(response: Any) -> tuple[str, int]:
    """The 429's one message (the API's error shape) and its Retry-After."""
    assert response.status_code == 429, response.content
    body = response.json()
    assert set(body) == {"errors"} and set(body["errors"]) == {"__all__"}, body
    [message] = body["errors"]["__all__"]
    return message, int(response["Retry-After"])


def ended(job_id: str) -> Job:
    assert wait_until(lambda: Job.objects.get(pk=job_id).is_terminal, timeout=JOB_TIMEOUT), "the job never ended"
    return Job.objects.get(pk=job_id)


def contacts_csv(rows: int) -> bytes:
    lines = [b"email,name,age"] + [f"person{n}@example.com,Person {n},{n % 100}".encode() for n in range(rows)]
    return b"\n".join(lines) + b"\n"


# --- at submit ---------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(JOB_QUOTA_RESULT_BYTES=1024 * 1024, JOB_RETENTION_DAYS=30)
def test_submit_when_result_files_fill_the_quota_answers_429_naming_it_and_saves_nothing() -> None:
    client, user = signed_in("ada")
    finished_job(user, result_bytes=600_000, days_ago=10)
    finished_job(user, result_bytes=448_576, days_ago=2)

    response = post_report(client, rows=10)

    message, retry_after = over_quota_message(response)
    assert "result storage quota of 1 MiB" in message and "JOB_QUOTA_RESULT_BYTES" in message, message
    # The oldest holding job passes its 30 days of retention in 20 days.
    assert abs(retry_after - 20 * 86_400) < 60, retry_after
    assert Job.objects.filter(owner_user=user).count() == 2


@pytest.mark.django_db
@override_settings(JOB_QUOTA_RESULT_BYTES=1024 * 1024, JOB_RETENTION_DAYS_ANONYMOUS=1)
def test_an_anonymous_owner_at_the_result_quota_gets_429_until_its_jobs_are_purged() -> None:
    visitor = Client()
    first = post_report(visitor, rows=10)
    assert first.status_code == 201, first.content
    ended_at = timezone.now() - timedelta(hours=6)
    Job.objects.filter(pk=first.json()["id"]).update(
        state=JobState.SUCCEEDED, result_bytes=1024 * 1024, finished_at=ended_at, updated_at=ended_at
    )

    message, retry_after = over_quota_message(post_report(visitor, rows=10))

    assert "result storage quota of 1 MiB" in message, message
    assert abs(retry_after - 18 * 3600) < 60, retry_after  # a day of retention, 6 hours of it gone
    assert post_report(Client(), rows=10).status_code == 201  # another visitor holds nothing


@pytest.mark.django_db
@override_settings(JOB_QUOTA_RESULT_BYTES=1024 * 1024, JOB_RETENTION_DAYS=30)
def test_job_logs_count_in_the_result_storage_quota_and_free_with_their_job() -> None:
    client, user = signed_in("ada")
    finished_job(user, log_bytes=600_000, days_ago=10)  # a log and no file
    finished_job(user, result_bytes=400_000, log_bytes=48_576, days_ago=2)

    message, retry_after = over_quota_message(post_report(client, rows=10))

    assert "result files and logs take 1 MiB" in message and "quota of 1 MiB" in message, message
    assert abs(retry_after - 20 * 86_400) < 60, retry_after  # the job holding only a log is the oldest


@pytest.mark.django_db
def test_a_running_jobs_budget_counts_the_owners_other_logs() -> None:
    _, user = signed_in("ada")
    finished_job(user, result_bytes=1_000, log_bytes=234)
    running = finished_job(user, log_bytes=10**6)
    Job.objects.filter(pk=running.pk).update(state=JobState.RUNNING, finished_at=None)

    with override_settings(JOB_QUOTA_RESULT_BYTES=1024 * 1024):
        budget = result_budget_for(Job.objects.get(pk=running.pk))

    assert budget == ResultBudget(limit=1024 * 1024, held=1_234)


@pytest.mark.django_db
@override_settings(JOB_QUOTA_RESULT_BYTES=1024 * 1024)
def test_submit_under_the_result_bytes_quota_or_with_bypass_quotas_is_created() -> None:
    client, user = signed_in("grace")
    finished_job(user, result_bytes=1024 * 1024 - 1)
    assert post_report(client, rows=10).status_code == 201

    exempt, exempt_user = signed_in("linus", BYPASS_QUOTAS)
    finished_job(exempt_user, result_bytes=5_000_000)
    assert post_report(exempt, rows=10).status_code == 201


@pytest.mark.django_db
@override_settings(JOB_QUOTA_IMPORT_ROWS=3)
def test_submit_when_imported_rows_fill_the_quota_answers_429_naming_it() -> None:
    client, user = signed_in("alan")
    job = finished_job(user)
    ImportedContact.objects.bulk_create(
        ImportedContact(job=job, line=line, email=f"p{line}@example.com", name="P", age=1) for line in (2, 3, 4)
    )

    message, _ = over_quota_message(post_report(client, rows=10))

    assert "imported rows quota of 3" in message and "JOB_QUOTA_IMPORT_ROWS" in message, message


@pytest.mark.django_db
@override_settings(JOB_QUOTA_RESULT_BYTES=0, JOB_QUOTA_IMPORT_ROWS=0)
def test_storage_quotas_of_0_are_off() -> None:
    client, user = signed_in("barbara")
    job = finished_job(user, result_bytes=10**12)
    ImportedContact.objects.create(job=job, line=2, email="p@example.com", name="P", age=1)

    assert post_report(client, rows=10).status_code == 201


# --- the reporter's budget -----------------------------------------------------------


def test_reporter_stops_the_kind_at_the_first_frame_past_its_budget(tmp_path: Path) -> None:
    sent: list[ProgressUpdate] = []

    def emit(update: ProgressUpdate) -> bool:
        sent.append(update)
        return False

    budget = ResultBudget(limit=1_000, held=400)
    progress = Progress(emit=emit, max_rate=0, result_dir=tmp_path, result_check=budget.check)
    report = progress.as_function()
    path = report.result_path("out.csv")  # type: ignore[attr-defined]
    path.write_bytes(b"x" * 600)
    report(current=1, total=2)  # 400 + 600: at the quota, not past it

    path.write_bytes(b"x" * 601)
    with pytest.raises(StorageQuotaExceeded, match="would pass your result storage quota of 1000 bytes"):
        report(current=2, total=2)
    assert [update.current for update in sent] == [1, 2]  # the frame went out; the kind stops after it


# --- while a job runs, on the real worker ------------------------------------------------------


@override_settings(JOB_QUOTA_RESULT_BYTES=80 * 1024)
def test_report_that_would_pass_the_result_quota_fails_saying_so_and_leaves_no_file(
    worker: Any, own_media_root: Path
) -> None:
    client, _ = signed_in("edsger")
    first = ended(post_report(client, rows=1000).json()["id"])
    assert first.state == JobState.SUCCEEDED, first.error
    held = (own_media_root / first.result_file.name).stat().st_size
    assert REPORT_1000_ROWS_BYTES[0] < held < REPORT_1000_ROWS_BYTES[1]
    assert first.result_bytes == held  # recorded at its finish

    second = ended(post_report(client, rows=1000).json()["id"])

    assert second.state == JobState.FAILED
    assert "would pass your result storage quota of 80 KiB" in second.error, second.error
    assert second.result_file.name == "" and second.result_bytes == 0
    left = own_media_root / "results" / str(second.id)
    assert not left.exists() or not any(left.iterdir()), list(left.iterdir())
    assert post_report(client, rows=10).status_code == 201  # under the quota still: the first's 49 KB


@override_settings(JOB_QUOTA_IMPORT_ROWS=1_000)
def test_import_that_would_pass_the_rows_quota_fails_saying_so_and_keeps_no_row(
    worker: Any, own_media_root: Path
) -> None:
    client, _ = signed_in("donald")
    response = post_import(client, contacts_csv(1_200))  # batches of 500: two are stored before the third passes
    assert response.status_code == 201, response.content

    job = ended(response.json()["id"])

    assert job.state == JobState.FAILED
    assert "would pass your imported rows quota of 1,000 rows" in job.error, job.error
    assert "none of its rows were kept" in job.error
    assert not ImportedContact.objects.filter(job=job).exists()
    assert job.progress_current == 1_000  # it stopped at the batch that would pass, after storing two
    left = own_media_root / "results" / str(job.id)
    assert not left.exists() or not any(left.iterdir()), list(left.iterdir())  # no error report either
