"""POST /api/jobs/<id>/retry/ (docs/contract.md#http) through Django's test client: a new job
of the same kind, parameters and uploaded file for the first job's owner, 409 while it has
not ended, 400 when its file is gone or its parameters no longer pass, 429 over the quota,
404 for anyone who may not see it, CSRF; and a retried upload run on a real worker."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings

from jobs.models import ImportedContact, Job, JobState
from jobs.uploads import upload_dir, upload_job_id, upload_path
from tests.accounts import VIEW_ALL_JOBS
from tests.jobs.test_api import QUICK_JOB, create, csrf_client, errors_of, post_json, user_client, wait_for_state

CONTACTS = b"email,name,age\nada@example.com,Ada Lovelace,36\nnot-an-email,Bob,40\n"
JOB_TIMEOUT = 30.0  # seconds: queued behind at most another test's short job


def retry(client: Client, job_id: str, **extra: Any) -> Any:
    return client.post(f"/api/jobs/{job_id}/retry/", **extra)


def ended(client: Client, body: object = QUICK_JOB) -> dict[str, Any]:
    """A job of this client's visitor, cancelled while queued: ended, with no worker needed."""
    job = create(client, body)
    response = client.post(f"/api/jobs/{job['id']}/cancel/")
    assert response.status_code == 202, response.content
    ended_job: dict[str, Any] = response.json()
    return ended_job


def set_state(job_id: str, state: JobState) -> None:
    Job.objects.filter(pk=job_id).update(state=state)


@pytest.fixture
def own_media_root(tmp_path: Path) -> Iterator[Path]:
    """Each test its own MEDIA_ROOT: rows roll back between tests, files would not."""
    with override_settings(MEDIA_ROOT=str(tmp_path / "media")):
        yield tmp_path / "media"


def upload(client: Client) -> dict[str, Any]:
    file = SimpleUploadedFile("contacts.csv", CONTACTS, content_type="text/csv")
    response = client.post("/api/jobs/", {"kind": "csv_import", "file": file})
    assert response.status_code == 201, response.content
    job: dict[str, Any] = response.json()
    return job


# --- what it makes ---------------------------------------------------------------


@pytest.mark.django_db
def test_retry_of_an_ended_job_answers_201_with_location_and_a_new_queued_job_of_the_same_kind_and_params(
    client: Client,
) -> None:
    first = ended(client, {"kind": "sleep", "params": {"steps": 2, "step_seconds": 0, "fail_at_step": 2}})

    response = retry(client, first["id"])

    assert response.status_code == 201, response.content
    again = response.json()
    assert again["id"] != first["id"]
    assert response["Location"] == f"/api/jobs/{again['id']}/"
    assert (again["kind"], again["params"], again["state"]) == (first["kind"], first["params"], "queued")
    assert client.get("/api/jobs/").json()["results"][0]["id"] == again["id"]  # the owner's, newest first
    assert client.get(f"/api/jobs/{first['id']}/").json()["state"] == "cancelled"  # the first is left as it was


@pytest.mark.django_db
@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED])
def test_every_terminal_state_may_be_retried(client: Client, state: JobState) -> None:
    job = create(client)
    set_state(job["id"], state)
    assert retry(client, job["id"]).status_code == 201


@pytest.mark.django_db
def test_view_all_jobs_retrying_a_visitors_job_makes_the_job_for_that_visitor() -> None:
    visitor = Client()
    first = ended(visitor)
    staff = user_client("clerk", VIEW_ALL_JOBS)

    response = retry(staff, first["id"])

    assert response.status_code == 201, response.content
    again = Job.objects.get(pk=response.json()["id"])
    original = Job.objects.get(pk=first["id"])
    assert (again.owner_user_id, again.owner_token) == (None, original.owner_token)
    assert visitor.get("/api/jobs/").json()["results"][0]["id"] == str(again.id)
    assert staff.get("/api/jobs/?page_size=100").json()["count"] == 2  # sees every job, owns none


@pytest.mark.django_db
def test_view_all_jobs_retrying_a_users_job_makes_the_job_for_that_user() -> None:
    owner = user_client("ada")
    first = ended(owner)

    response = retry(user_client("clerk", VIEW_ALL_JOBS), first["id"])

    assert response.status_code == 201, response.content
    again = Job.objects.get(pk=response.json()["id"])
    assert again.owner_user_id == Job.objects.get(pk=first["id"]).owner_user_id
    assert owner.get(f"/api/jobs/{again.id}/").status_code == 200


# --- refused ---------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.RUNNING])
def test_retry_of_a_job_that_has_not_ended_answers_409_naming_state(client: Client, state: JobState) -> None:
    job = create(client)
    set_state(job["id"], state)

    response = retry(client, job["id"])

    assert response.status_code == 409
    assert errors_of(response) == {
        "state": [f"The job has not ended yet ({state}); only a job that ended can be run again."]
    }
    assert Job.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "stranger",
    [
        pytest.param(Client, id="another-visitor"),
        pytest.param(lambda: user_client("bob"), id="another-user"),
        pytest.param(lambda: user_client("flag", is_staff=True), id="staff-flag-alone"),
    ],
)
def test_retry_of_a_job_one_may_not_see_answers_404_and_makes_nothing(client: Client, stranger: Any) -> None:
    first = ended(client)

    response = retry(stranger(), first["id"])

    assert response.status_code == 404
    assert "id" in errors_of(response)
    assert Job.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("bad_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000007"])
def test_retry_of_an_unknown_job_answers_404(client: Client, bad_id: str) -> None:
    response = retry(client, bad_id)
    assert response.status_code == 404
    assert "id" in errors_of(response)


@pytest.mark.django_db
def test_retry_of_a_job_whose_params_no_longer_pass_answers_400_naming_the_parameter(client: Client) -> None:
    first = ended(client)
    Job.objects.filter(pk=first["id"]).update(params={"steps": 0, "step_seconds": 0})

    response = retry(client, first["id"])

    assert response.status_code == 400
    assert "steps" in errors_of(response)
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_retry_of_a_job_whose_kind_is_gone_answers_400_naming_kind(client: Client) -> None:
    first = ended(client)
    Job.objects.filter(pk=first["id"]).update(kind="retired")

    response = retry(client, first["id"])

    assert response.status_code == 400
    assert "kind" in errors_of(response)


@pytest.mark.django_db
def test_retry_of_an_import_whose_upload_was_deleted_answers_400_naming_file(
    client: Client, own_media_root: Path
) -> None:
    first = upload(client)
    set_state(first["id"], JobState.FAILED)
    shutil.rmtree(upload_dir(first["id"]))

    response = retry(client, first["id"])

    assert response.status_code == 400
    errors = errors_of(response)
    assert list(errors) == ["file"] and "is gone" in errors["file"][0], errors
    assert Job.objects.count() == 1
    assert sorted((own_media_root / "uploads").iterdir()) == []


@pytest.mark.django_db
def test_retry_of_an_import_whose_file_is_now_over_the_limit_answers_400_not_413(
    client: Client, own_media_root: Path
) -> None:
    first = upload(client)
    set_state(first["id"], JobState.SUCCEEDED)

    with override_settings(CSV_IMPORT_MAX_BYTES=10):
        response = retry(client, first["id"])

    assert response.status_code == 400
    assert "file" in errors_of(response)
    assert [path.name for path in (own_media_root / "uploads").iterdir()] == [first["id"]]  # no copy left


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=1, JOB_QUOTA_PER_MINUTE=0)
def test_retry_over_the_owners_quota_answers_429_with_retry_after_and_makes_nothing(client: Client) -> None:
    first = ended(client)
    create(client)  # the one job the quota allows at once

    response = retry(client, first["id"])

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert list(errors_of(response)) == ["__all__"]
    assert Job.objects.count() == 2


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=1, JOB_QUOTA_PER_MINUTE=0)
def test_staff_retrying_a_visitors_job_is_held_to_that_visitors_quota() -> None:
    visitor = Client()
    first = ended(visitor)
    create(visitor)

    response = retry(user_client("clerk", VIEW_ALL_JOBS), first["id"])

    assert response.status_code == 429
    assert Job.objects.count() == 2


# --- CSRF ------------------------------------------------------------------------


@pytest.mark.django_db
def test_retry_without_csrf_header_answers_403_for_a_session_owner_and_with_it_201() -> None:
    client, token = csrf_client()
    first = post_json(client, QUICK_JOB, HTTP_X_CSRFTOKEN=token).json()
    assert client.post(f"/api/jobs/{first['id']}/cancel/", HTTP_X_CSRFTOKEN=token).status_code == 202

    refused = retry(client, first["id"])
    assert refused.status_code == 403
    assert "csrf" in errors_of(refused)
    assert Job.objects.count() == 1

    assert retry(client, first["id"], HTTP_X_CSRFTOKEN=token).status_code == 201


@pytest.mark.django_db
def test_openapi_document_lists_retry_with_its_answers(client: Client) -> None:
    operation = client.get("/api/openapi.json").json()["paths"]["/api/jobs/{job_id}/retry/"]["post"]
    assert set(operation["responses"]) == {"201", "400", "404", "409", "429"}
    assert operation["summary"] == "Run a job again"


# --- under a real worker ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_retry_of_an_import_copies_its_upload_to_the_new_job_which_runs_to_success(
    own_media_root: Path, worker: Any
) -> None:
    client = Client()
    first = upload(client)
    wait_for_state(client, first["id"], "succeeded", timeout=JOB_TIMEOUT)

    response = retry(client, first["id"])

    assert response.status_code == 201, response.content
    again = response.json()
    stored = again["params"]["file"]
    assert upload_job_id(stored) == Job.objects.get(pk=again["id"]).id  # a copy under the new job
    assert upload_path(stored).read_bytes() == CONTACTS
    assert upload_path(first["params"]["file"]).read_bytes() == CONTACTS  # the first keeps its own
    done = wait_for_state(client, again["id"], "succeeded", timeout=JOB_TIMEOUT)
    assert done["result"] == {"rows": 2, "imported": 1, "errors": 1}
    for job_id in (first["id"], again["id"]):
        assert list(ImportedContact.objects.filter(job_id=job_id).values_list("email", flat=True)) == [
            "ada@example.com"
        ]
