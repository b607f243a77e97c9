"""The "Email me when it ends" option: the `notify` field, and the mail reaching a real SMTP server
(aiosmtpd on loopback, tests/smtp.py) from the real Celery worker, once per job."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from core.redis_local import free_port
from jobs.models import TERMINAL_STATES, Job, JobState
from jobs.owners import Owner
from jobs.services import job_cancel, job_end_lost, job_finish, job_notify_ended
from jobs.tasks import notify_ended
from tests.accounts import user_with
from tests.smtp import SmtpServer
from tests.waiting import wait_until

SITE = "https://jobs.example.test"
MAIL_TIMEOUT = 30.0  # seconds: the job, then the mail task, on the solo worker shared with other tests
ADDRESS = "ada@example.test"


def signed_in(client: Client, *, email: str = ADDRESS, username: str = "ada") -> Any:
    user = user_with(username)
    user.email = email
    user.save(update_fields=["email"])
    client.force_login(user)
    return user


def post_job(client: Client, body: dict[str, Any]) -> Any:
    return client.post("/api/jobs/", data=json.dumps(body), content_type="application/json")


def mails_for(server: SmtpServer, job_id: object) -> list[Any]:
    return [mail for mail in server.received if f"/jobs/{job_id}/" in mail.body]


def row(job_id: Any) -> Job:
    return Job.objects.get(pk=job_id)


@pytest.fixture
def site(settings: Any) -> str:
    settings.SITE_URL = SITE
    settings.DEFAULT_FROM_EMAIL = "jobstream@example.test"
    return SITE


def running_job(owner: Any) -> Job:
    now = timezone.now()
    return Job.objects.create(
        owner_user=owner,
        kind="sleep",
        params={"steps": 3, "step_seconds": 0},
        state=JobState.RUNNING,
        attempts=1,
        notify_email=True,
        seq=5,
        created_at=now,
        started_at=now,
        updated_at=now,
    )


# --- the mail, end to end ----------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "outcome", "words"),
    [
        ({"steps": 2, "step_seconds": 0.01}, "succeeded", []),
        ({"steps": 3, "step_seconds": 0.01, "fail_at_step": 2}, "failed", ["What went wrong:", "Failed at step 2"]),
    ],
)
def test_signed_in_owner_asking_for_email_gets_one_mail_with_outcome_and_link(
    client: Client, worker: Any, smtp_server: SmtpServer, site: str, params: dict, outcome: str, words: list[str]
) -> None:
    signed_in(client)
    response = post_job(client, {"kind": "sleep", "params": params, "notify": {"email": True}})
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]

    assert wait_until(lambda: len(mails_for(smtp_server, job_id)) >= 1, timeout=MAIL_TIMEOUT)
    assert row(job_id).state == outcome
    [mail] = mails_for(smtp_server, job_id)
    assert mail.rcpt_tos == [ADDRESS]
    assert mail.mail_from == "jobstream@example.test"
    assert mail.subject == f"Sleep {outcome} — jobstream"
    assert f"{SITE}/jobs/{job_id}/" in mail.body
    assert f'"Sleep" {outcome}' in mail.body
    for word in words:
        assert word in mail.body
    assert row(job_id).notified_at is not None
    # Again, as a redelivered or second task would: still the one mail.
    assert job_notify_ended(job_id=row(job_id).id) is False
    notify_ended.delay(job_id)
    notify_ended.delay(job_id)
    probe = post_job(client, {"kind": "sleep", "params": {"steps": 1, "step_seconds": 0}})  # runs after both
    assert wait_until(lambda: row(probe.json()["id"]).state in TERMINAL_STATES, timeout=MAIL_TIMEOUT)
    assert len(mails_for(smtp_server, job_id)) == 1


def test_job_without_notify_sends_no_mail(client: Client, worker: Any, smtp_server: SmtpServer, site: str) -> None:
    signed_in(client)
    job_id = post_job(client, {"kind": "sleep", "params": {"steps": 1, "step_seconds": 0}}).json()["id"]
    assert wait_until(lambda: row(job_id).state in TERMINAL_STATES, timeout=MAIL_TIMEOUT)
    probe = post_job(client, {"kind": "sleep", "params": {"steps": 1, "step_seconds": 0}, "notify": {"email": True}})
    assert wait_until(lambda: len(mails_for(smtp_server, probe.json()["id"])) == 1, timeout=MAIL_TIMEOUT)
    assert mails_for(smtp_server, job_id) == []
    assert row(job_id).notified_at is None


def test_an_end_written_twice_and_claimed_twice_sends_one_mail(worker: Any, smtp_server: SmtpServer, site: str) -> None:
    owner = user_with("grace")
    owner.email = "grace@example.test"
    owner.save(update_fields=["email"])
    job = running_job(owner)
    assert job_finish(job_id=job.id, state=JobState.SUCCEEDED, attempt=1, result={"ok": True}) is not None
    assert job_finish(job_id=job.id, state=JobState.FAILED, attempt=1, error="late") is None  # the row moved on
    job_notify_ended(job_id=job.id)  # as a second task would, in this process
    assert wait_until(lambda: row(job.id).notified_at is not None, timeout=MAIL_TIMEOUT)
    assert wait_until(lambda: len(mails_for(smtp_server, job.id)) >= 1, timeout=MAIL_TIMEOUT)
    notify_ended.delay(str(job.id))
    probe = running_job(owner)  # its end's mail task runs after the one above
    job_finish(job_id=probe.id, state=JobState.SUCCEEDED, attempt=1)
    assert wait_until(lambda: len(mails_for(smtp_server, probe.id)) == 1, timeout=MAIL_TIMEOUT)
    [mail] = mails_for(smtp_server, job.id)
    assert "succeeded" in mail.subject


def test_a_queued_job_cancelled_and_a_lost_run_ended_by_the_sweeper_are_mailed(
    worker: Any, smtp_server: SmtpServer, site: str
) -> None:
    owner = user_with("linus")
    owner.email = "linus@example.test"
    owner.save(update_fields=["email"])
    now = timezone.now()
    queued = Job.objects.create(
        owner_user=owner, kind="sleep", params={}, notify_email=True, seq=1, created_at=now, updated_at=now
    )
    job_cancel(owner=Owner(user_id=owner.pk), job_id=queued.id)
    lost = running_job(owner)
    from django.db.models import Q

    job_end_lost(job_id=lost.id, attempts=1, cancelled=False, where=Q())
    assert wait_until(lambda: len(mails_for(smtp_server, queued.id)) == 1, timeout=MAIL_TIMEOUT)
    assert wait_until(lambda: len(mails_for(smtp_server, lost.id)) == 1, timeout=MAIL_TIMEOUT)
    assert mails_for(smtp_server, queued.id)[0].subject == "Sleep cancelled — jobstream"
    assert mails_for(smtp_server, lost.id)[0].subject == "Sleep failed — jobstream"


def test_mail_server_down_leaves_the_job_succeeded_and_logs_the_failure(
    client: Client, worker: Any, settings: Any, site: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()  # nothing listens there
    signed_in(client)
    caplog.set_level(logging.ERROR, logger="jobs.services.notify")
    job_id = post_job(client, {"kind": "sleep", "params": {"steps": 2, "step_seconds": 0}, "notify": {"email": True}})
    job_id = job_id.json()["id"]

    def logged() -> bool:
        return any(job_id in record.getMessage() and record.exc_info for record in caplog.records)

    assert wait_until(logged, timeout=MAIL_TIMEOUT), caplog.text
    assert row(job_id).state == JobState.SUCCEEDED
    assert row(job_id).notified_at is not None  # at most once: not tried again
    assert "could not be sent" in caplog.text


# --- who may ask, and how ----------------------------------------------------------


@pytest.mark.django_db
def test_anonymous_visitor_asking_for_email_gets_400_naming_notify_and_no_session(client: Client) -> None:
    response = post_job(client, {"kind": "sleep", "params": {}, "notify": {"email": True}})
    assert response.status_code == 400
    [message] = response.json()["errors"]["notify"]
    assert "Sign in" in message
    assert not Job.objects.exists()
    assert "sessionid" not in response.cookies


@pytest.mark.django_db
def test_user_without_an_email_address_asking_for_email_gets_400_naming_notify(client: Client) -> None:
    signed_in(client, email="")
    response = post_job(client, {"kind": "sleep", "params": {}, "notify": {"email": True}})
    assert response.status_code == 400
    assert "no email address" in response.json()["errors"]["notify"][0]
    assert not Job.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("notify", "words"),
    [
        ({"email": 1}, "true or false, not 1"),
        ({"email": "yes"}, 'not "yes"'),
        ({"email": None}, "not null"),
        ("yes", 'not "yes"'),
        ([True], "object"),
        ({"email": True, "sms": True}, "'sms'"),
    ],
)
def test_bad_notify_value_gets_400_naming_notify(client: Client, notify: object, words: str) -> None:
    signed_in(client)
    response = post_job(client, {"kind": "sleep", "params": {}, "notify": notify})
    assert response.status_code == 400
    assert words in " ".join(response.json()["errors"]["notify"])
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_signed_in_user_asking_for_email_gets_the_job_marked(client: Client) -> None:
    signed_in(client)
    response = post_job(client, {"kind": "sleep", "params": {"steps": 1}, "notify": {"email": True}})
    assert response.status_code == 201
    assert row(response.json()["id"]).notify_email is True
    response = post_job(client, {"kind": "sleep", "params": {"steps": 1}, "notify": {"email": False}})
    assert row(response.json()["id"]).notify_email is False


@pytest.mark.django_db
@pytest.mark.parametrize(("notify", "status", "marked"), [('{"email": true}', 201, True), ('{"email": 1}', 400, None)])
def test_multipart_submit_takes_notify_as_a_json_string(
    client: Client, notify: str, status: int, marked: bool | None
) -> None:
    signed_in(client)
    upload = SimpleUploadedFile("people.csv", b"email,name,age\na@example.com,A,30\n", content_type="text/csv")
    response = client.post("/api/jobs/", {"kind": "csv_import", "params": "{}", "notify": notify, "file": upload})
    assert response.status_code == status, response.content
    if marked is None:
        assert "notify" in response.json()["errors"]
    else:
        assert row(response.json()["id"]).notify_email is marked


@pytest.mark.django_db
def test_multipart_submit_with_malformed_notify_json_names_notify(client: Client) -> None:
    signed_in(client)
    upload = SimpleUploadedFile("people.csv", b"email,name,age\na@example.com,A,30\n", content_type="text/csv")
    response = client.post("/api/jobs/", {"kind": "csv_import", "notify": "{email", "file": upload})
    assert response.status_code == 400
    assert "Malformed JSON" in response.json()["errors"]["notify"][0]


# --- the form ----------------------------------------------------------------------


@pytest.mark.django_db
def test_form_offers_email_to_signed_in_users_with_an_address_only(client: Client) -> None:
    assert "Email me when it ends" not in client.get("/").content.decode()
    signed_in(client, email="", username="noaddress")
    page = client.get("/").content.decode()
    assert "Email me when it ends" not in page
    assert "Your account has no email address" in page
    client.logout()
    signed_in(client)
    page = client.get("/").content.decode()
    assert 'name="notify_email"' in page
    assert ADDRESS in page


@pytest.mark.django_db
def test_form_post_with_the_box_ticked_marks_the_job(client: Client) -> None:
    signed_in(client)
    fields = {"kind": "sleep", "sleep-steps": "2", "sleep-step_seconds": "0", "notify_email": "on"}
    response = client.post("/", fields)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert get_user_model().objects.get(username="ada").jobs.get().notify_email is True
