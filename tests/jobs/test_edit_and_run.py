"""The pages' "Run again" and "Edit and run": the server-drawn card of an ended job carries
both, and `/?edit=<job id>` opens the form on that job's kind with its parameters filled in
(for one who may see the job; anyone else gets the plain form)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.owners import SESSION_OWNER_KEY
from tests.accounts import VIEW_ALL_JOBS
from tests.jobs.test_api import user_client

pytestmark = pytest.mark.django_db


def visitor() -> Client:
    client = Client()
    assert client.get("/").status_code == 200  # the visitor's session
    return client


def job_of(client: Client, state: JobState, kind: str = "sleep", params: dict[str, object] | None = None) -> Job:
    now = timezone.now()
    return Job.objects.create(
        kind=kind,
        params={"steps": 7, "step_seconds": 0.25, "fail_at_step": 3} if params is None else params,
        state=state,
        seq=1,
        created_at=now,
        updated_at=now,
        owner_token=client.session[SESSION_OWNER_KEY],
    )


def input_tag(html: str, name: str) -> str:
    tag = re.search(rf'<input [^>]*name="{name}"[^>]*>', html)
    assert tag is not None, name
    return tag.group(0)


def selected_kind(html: str) -> str:
    option = re.search(r'<option value="([\w-]+)" selected>', html)
    assert option is not None
    return option.group(1)


# --- the card --------------------------------------------------------------------


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED])
def test_the_card_of_an_ended_job_offers_run_again_and_edit_and_run_on_both_pages(state: JobState) -> None:
    client = visitor()
    job = job_of(client, state)
    for path in ("/", f"/jobs/{job.id}/"):
        html = client.get(path).content.decode()
        assert f'data-retry="{job.id}">Run again</button>' in html, path
        assert f'href="/?edit={job.id}#job-form" data-edit="{job.id}">Edit and run</a>' in html, path


@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.RUNNING])
def test_the_card_of_a_job_that_has_not_ended_offers_neither(state: JobState) -> None:
    client = visitor()
    job = job_of(client, state)
    for path in ("/", f"/jobs/{job.id}/"):
        html = client.get(path).content.decode()
        assert "data-retry=" not in html and "data-edit=" not in html, path


# --- /?edit=<job id> -------------------------------------------------------------


def test_edit_opens_the_form_on_the_jobs_kind_with_its_parameters() -> None:
    client = visitor()
    job = job_of(client, JobState.FAILED)

    response = client.get(f"/?edit={job.id}")

    assert response.status_code == 200
    html = response.content.decode()
    assert selected_kind(html) == "sleep"
    assert re.search(r'<fieldset class="kind-params" data-kind="sleep" data-selected>', html)
    assert 'value="7"' in input_tag(html, "sleep-steps")
    assert 'value="0.25"' in input_tag(html, "sleep-step_seconds")
    assert 'value="3"' in input_tag(html, "sleep-fail_at_step")
    assert f'data-editing="{job.id}"' in html and f'href="/jobs/{job.id}/"' in html


def test_edit_of_another_kind_selects_it_and_leaves_the_others_at_their_defaults() -> None:
    client = visitor()
    plain = client.get("/").content.decode()
    job = job_of(client, JobState.SUCCEEDED, kind="primes", params={"limit": 12345})

    html = client.get(f"/?edit={job.id}").content.decode()

    assert selected_kind(html) == "primes"
    assert 'value="12345"' in input_tag(html, "primes-limit")
    assert input_tag(html, "sleep-steps") == input_tag(plain, "sleep-steps")


def test_edit_of_a_job_that_is_still_running_fills_the_form_too() -> None:
    client = visitor()
    job = job_of(client, JobState.RUNNING, kind="primes", params={"limit": 999})
    assert 'value="999"' in input_tag(client.get(f"/?edit={job.id}").content.decode(), "primes-limit")


@pytest.mark.parametrize("edit", ["theirs", "unknown", "not-a-uuid", ""])
def test_edit_of_a_job_one_may_not_see_is_ignored_silently(edit: str) -> None:
    owner = visitor()
    theirs = job_of(owner, JobState.SUCCEEDED, kind="primes", params={"limit": 4242})
    client = visitor()
    plain = client.get("/").content.decode()
    value = {"theirs": str(theirs.id), "unknown": "00000000-0000-4000-8000-000000000000"}.get(edit, edit)

    response = client.get(f"/?edit={value}")

    assert response.status_code == 200
    html = response.content.decode()
    assert "4242" not in html and "data-editing" not in html
    assert selected_kind(html) == selected_kind(plain)


def test_view_all_jobs_may_edit_and_run_anyones_job() -> None:
    job = job_of(visitor(), JobState.SUCCEEDED, kind="primes", params={"limit": 4242})
    html = user_client("clerk", VIEW_ALL_JOBS).get(f"/?edit={job.id}").content.decode()
    assert 'value="4242"' in input_tag(html, "primes-limit")


def test_edit_of_a_job_whose_kind_is_gone_gives_the_plain_form() -> None:
    client = visitor()
    job = job_of(client, JobState.SUCCEEDED, kind="retired", params={"x": 1})
    response = client.get(f"/?edit={job.id}")
    assert response.status_code == 200
    assert "data-editing" not in response.content.decode()


def test_edit_of_an_import_selects_it_and_says_the_file_must_be_chosen_again(tmp_path: Path) -> None:
    client = visitor()
    with override_settings(MEDIA_ROOT=str(tmp_path)):
        file = SimpleUploadedFile("contacts.csv", b"email,name,age\na@example.com,A,1\n", content_type="text/csv")
        created = client.post("/api/jobs/", {"kind": "csv_import", "file": file})
        assert created.status_code == 201, created.content
        job_id = created.json()["id"]
        Job.objects.filter(pk=job_id).update(state=JobState.SUCCEEDED)

        html = client.get(f"/?edit={job_id}").content.decode()

    assert selected_kind(html) == "csv_import"
    assert "value=" not in input_tag(html, "csv_import-file")  # a file input is never prefilled
    note = re.search(r"<p class=\"field__note\" data-file-note>([^<]*)</p>", html)
    assert note is not None and "Choose the file again" in note.group(1)
    assert html.count("data-file-note") == 1  # beside the imported kind's file input only


def test_the_plain_form_has_no_file_note() -> None:
    assert "data-file-note" not in visitor().get("/").content.decode()
