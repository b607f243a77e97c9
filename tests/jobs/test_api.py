"""The JSON API (docs/contract.md#http) through Django's test client: validation, CSRF, ownership,
pagination, the kinds and OpenAPI documents, cancel, and real jobs under a real worker."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from jobs.kinds import kind_list
from jobs.models import Job
from jobs.serializers import JOB_KEYS
from tests.accounts import VIEW_ALL_JOBS, user_with
from tests.waiting import wait_until

Response = Any  # what the test client answers: an HttpResponse with .json() and more

QUICK_JOB = {"kind": "sleep", "params": {"steps": 1, "step_seconds": 0}}  # a worker finishes it at once


def post_raw(client: Client, raw: str | bytes, content_type: str) -> Response:
    # CONTENT_TYPE given twice: the test client drops the header of an empty body.
    response: Response = client.post("/api/jobs/", data=raw, content_type=content_type, CONTENT_TYPE=content_type)
    return response


def post_json(client: Client, body: object, **extra: Any) -> Response:
    return client.post("/api/jobs/", data=json.dumps(body), content_type="application/json", **extra)


def create(client: Client, body: object = QUICK_JOB) -> dict[str, Any]:
    response = post_json(client, body)
    assert response.status_code == 201, response.content
    job: dict[str, Any] = response.json()
    return job


def errors_of(response: Response) -> dict[str, list[str]]:
    body = response.json()
    assert set(body) == {"errors"}, body
    errors: dict[str, list[str]] = body["errors"]
    return errors


def names(errors: dict[str, list[str]], field: str) -> bool:
    """The field is a key of `errors`, or a message mentions it."""
    return field in errors or any(field in message for messages in errors.values() for message in messages)


def user_client(username: str, *codenames: str, is_staff: bool = False) -> Client:
    """A signed-in client of a new user with the jobs permissions `codenames`."""
    user = user_with(username, *codenames, is_staff=is_staff)
    client = Client()
    client.force_login(user)
    return client


# --- bad input -------------------------------------------------------------------

JSON = "application/json"


def with_param(kind: str, name: str, value: object) -> str:
    return json.dumps({"kind": kind, "params": {name: value}})


OVERSIZED = json.dumps({"kind": "sleep", "params": {}, "padding": "x" * (64 * 1024)})

# (id, raw body, content type, expected status, field the errors must name)
BAD_INPUTS: list[tuple[str, str | bytes, str, int, str]] = [
    ("unknown-kind", json.dumps({"kind": "nope", "params": {}}), JSON, 400, "kind"),
    ("kind-missing", json.dumps({"params": {"limit": 10}}), JSON, 400, "kind"),
    ("kind-number", json.dumps({"kind": 5}), JSON, 400, "kind"),
    ("kind-null", json.dumps({"kind": None}), JSON, 400, "kind"),
    ("kind-list", json.dumps({"kind": ["primes"]}), JSON, 400, "kind"),
    ("params-list", json.dumps({"kind": "primes", "params": [1]}), JSON, 400, "params"),
    ("params-string", json.dumps({"kind": "primes", "params": "limit=5"}), JSON, 400, "params"),
    ("params-number", json.dumps({"kind": "primes", "params": 5}), JSON, 400, "params"),
    ("params-null", json.dumps({"kind": "primes", "params": None}), JSON, 400, "params"),
    ("unknown-parameter", with_param("primes", "colour", 1), JSON, 400, "colour"),
    ("extra-top-level-field", json.dumps({"kind": "primes", "priority": 9}), JSON, 400, "priority"),
    # notify (an email when the job ends): strict, and for signed-in users only (these run anonymous).
    ("notify-email-1", json.dumps({"kind": "sleep", "notify": {"email": 1}}), JSON, 400, "notify"),
    ("notify-string", json.dumps({"kind": "sleep", "notify": "yes"}), JSON, 400, "notify"),
    ("notify-unknown-key", json.dumps({"kind": "sleep", "notify": {"email": False, "sms": True}}), JSON, 400, "notify"),
    ("notify-anonymous", json.dumps({"kind": "sleep", "notify": {"email": True}}), JSON, 400, "notify"),
    ("steps-0", with_param("sleep", "steps", 0), JSON, 400, "steps"),
    ("steps-1001", with_param("sleep", "steps", 1001), JSON, 400, "steps"),
    ("steps-string", with_param("sleep", "steps", "5"), JSON, 400, "steps"),
    ("steps-true", with_param("sleep", "steps", True), JSON, 400, "steps"),
    ("steps-fraction", with_param("sleep", "steps", 2.5), JSON, 400, "steps"),
    ("steps-object", json.dumps({"kind": "sleep", "params": {"steps": {}}}), JSON, 400, "steps"),
    ("steps-1e400", '{"kind": "sleep", "params": {"steps": 1e400}}', JSON, 400, "steps"),
    ("step_seconds-negative", with_param("sleep", "step_seconds", -1), JSON, 400, "step_seconds"),
    ("step_seconds-5.01", with_param("sleep", "step_seconds", 5.01), JSON, 400, "step_seconds"),
    ("fail_at_step-0", with_param("sleep", "fail_at_step", 0), JSON, 400, "fail_at_step"),
    ("limit-1", with_param("primes", "limit", 1), JSON, 400, "limit"),
    ("limit-50000001", with_param("primes", "limit", 50_000_001), JSON, 400, "limit"),
    ("limit-10e30", with_param("primes", "limit", 10**30), JSON, 400, "limit"),
    ("rows-0", with_param("report", "rows", 0), JSON, 400, "rows"),
    ("rows-1000001", with_param("report", "rows", 1_000_001), JSON, 400, "rows"),
    # typed parameters (jobs/params.py), strict: each type's wrong value names the parameter
    ("format-unknown", with_param("report", "format", "xml"), JSON, 400, "format"),
    ("format-number", with_param("report", "format", 1), JSON, 400, "format"),
    ("region-pattern", with_param("report", "region", "N0rth!"), JSON, 400, "region"),
    ("region-41-chars", with_param("report", "region", "a" * 41), JSON, 400, "region"),
    ("region-number", with_param("report", "region", 5), JSON, 400, "region"),
    ("region-nul", with_param("report", "region", "North\x00"), JSON, 400, "region"),
    ("region-lone-surrogate", '{"kind": "report", "params": {"region": "\\ud800"}}', JSON, 400, "region"),
    ("include_refunds-1", with_param("report", "include_refunds", 1), JSON, 400, "include_refunds"),
    ("include_refunds-string", with_param("report", "include_refunds", "true"), JSON, 400, "include_refunds"),
    ("include_refunds-null", with_param("report", "include_refunds", None), JSON, 400, "include_refunds"),
    ("since-month-13", with_param("report", "since", "2026-13-01"), JSON, 400, "since"),
    ("since-datetime", with_param("report", "since", "2026-06-01T00:00:00"), JSON, 400, "since"),
    ("since-number", with_param("report", "since", 20260601), JSON, 400, "since"),
    ("prepared_for-no-at", with_param("report", "prepared_for", "ana.example.com"), JSON, 400, "prepared_for"),
    ("prepared_for-list", with_param("report", "prepared_for", ["ana@example.com"]), JSON, 400, "prepared_for"),
    ("nan-literal", '{"kind": "primes", "params": {"limit": NaN}}', JSON, 400, "body"),
    ("infinity-literal", '{"kind": "primes", "params": {"limit": Infinity}}', JSON, 400, "body"),
    ("minus-infinity-literal", '{"kind": "primes", "params": {"limit": -Infinity}}', JSON, 400, "body"),
    ("malformed-json", '{"kind": "primes", ', JSON, 400, "body"),
    ("invalid-utf8", b'{"kind": "\xff\xfe\xfd"}', JSON, 400, "body"),
    ("integer-over-4300-digits", '{"kind": "primes", "params": {"limit": ' + "9" * 5000 + "}}", JSON, 400, "body"),
    ("nested-too-deeply", "[" * 60_000, JSON, 400, "body"),
    ("empty-body", "", JSON, 400, "body"),
    ("array-body", json.dumps([{"kind": "primes"}]), JSON, 400, "body"),
    ("string-body", json.dumps("primes"), JSON, 400, "body"),
    ("null-body", "null", JSON, 400, "body"),
    ("text-plain", json.dumps({"kind": "primes"}), "text/plain", 415, "content_type"),
    ("form-encoded", "kind=primes&limit=10", "application/x-www-form-urlencoded", 415, "content_type"),
    ("no-content-type", json.dumps({"kind": "primes"}), "", 415, "content_type"),
    ("body-over-64-KiB", OVERSIZED, JSON, 413, "body"),
]  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("raw", "content_type", "status", "field"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_create_job_with_bad_input_answers_error_naming_the_field(
    client: Client, raw: str | bytes, content_type: str, status: int, field: str
) -> None:
    response = post_raw(client, raw, content_type)
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    errors = errors_of(response)
    assert names(errors, field), errors
    assert not Job.objects.exists()  # bad input never reaches the database, nor a worker


@pytest.mark.django_db
def test_create_job_still_serves_after_every_bad_input(client: Client) -> None:
    for _, raw, content_type, status, _ in BAD_INPUTS:
        assert post_raw(client, raw, content_type).status_code == status
    assert post_json(client, {"kind": "primes", "params": {"limit": 10}}).status_code == 201


@pytest.mark.django_db
def test_create_job_with_unknown_kind_answers_400_listing_the_kinds(client: Client) -> None:
    errors = errors_of(post_json(client, {"kind": "nope"}))
    assert errors["kind"] == ["Unknown kind 'nope'; choose one of: csv_import, pipeline, primes, report, sleep."]


@pytest.mark.django_db
def test_create_job_out_of_range_message_writes_the_bounds_in_plain_digits(client: Client) -> None:
    errors = errors_of(post_json(client, {"kind": "primes", "params": {"limit": 1}}))
    assert errors == {"limit": ["Must be between 2 and 50000000."]}  # as README.md shows it


@pytest.mark.django_db
def test_create_job_reports_every_bad_parameter_at_once(client: Client) -> None:
    errors = errors_of(post_json(client, {"kind": "sleep", "params": {"steps": 0, "step_seconds": 9, "x": 1}}))
    assert set(errors) == {"steps", "step_seconds", "x"}


# --- a created job ---------------------------------------------------------------


@pytest.mark.django_db
def test_create_job_answers_201_with_location_and_the_queued_job(client: Client) -> None:
    response = post_json(client, {"kind": "primes", "params": {"limit": 1000}})
    assert response.status_code == 201
    job = response.json()
    assert set(job) - {"error_detail"} == JOB_KEYS
    assert job.get("error_detail") is None
    assert response["Location"] == f"/api/jobs/{job['id']}/"
    assert uuid.UUID(job["id"])
    assert job["kind"] == "primes"
    assert job["state"] == "queued"
    assert job["seq"] == 1
    assert job["queue_position"] >= 1
    assert job["progress"] is None
    assert job["result"] is None and job["result_url"] is None and job["error"] is None
    assert job["started_at"] is None and job["finished_at"] is None
    assert job["created_at"].endswith("Z") and job["updated_at"].endswith("Z")
    assert job["url"] == f"/jobs/{job['id']}/"


@pytest.mark.django_db
def test_create_job_fills_in_parameter_defaults(client: Client) -> None:
    assert create(client, {"kind": "sleep"})["params"] == {"steps": 10, "step_seconds": 0.5}
    assert create(client, {"kind": "sleep", "params": {"fail_at_step": 3}})["params"] == {
        "steps": 10,
        "step_seconds": 0.5,
        "fail_at_step": 3,
    }
    assert create(client, {"kind": "primes", "params": {}})["params"] == {"limit": 5_000_000}
    assert create(client, {"kind": "report"})["params"] == {"rows": 100_000, "format": "csv", "include_refunds": False}


@pytest.mark.django_db
def test_create_job_leaves_out_an_optional_parameter_sent_as_null(client: Client) -> None:
    job = create(client, {"kind": "sleep", "params": {"fail_at_step": None}})
    assert job["params"] == {"steps": 10, "step_seconds": 0.5}


@pytest.mark.django_db
def test_create_job_refuses_null_for_a_parameter_whose_schema_type_has_no_null(client: Client) -> None:
    response = post_json(client, {"kind": "sleep", "params": {"steps": None}})
    assert response.status_code == 400
    assert errors_of(response) == {"steps": ["Must be an integer, not null; leave it out to take the default, 10."]}
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_create_job_accepts_a_whole_float_as_an_integer(client: Client) -> None:
    assert create(client, {"kind": "primes", "params": {"limit": 1000.0}})["params"] == {"limit": 1000}


@pytest.mark.django_db
def test_queue_position_counts_the_queued_jobs_ahead(client: Client) -> None:
    first = create(client)
    second = create(client)
    assert second["queue_position"] == first["queue_position"] + 1


# --- CSRF ------------------------------------------------------------------------


def csrf_client(user: User | None = None) -> tuple[Client, str]:
    """A client that enforces CSRF, with the csrftoken cookie an API GET hands out."""
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    assert client.get("/api/job-kinds/").status_code == 200
    return client, client.cookies["csrftoken"].value


@pytest.mark.django_db
def test_anonymous_post_without_csrf_header_answers_403_naming_csrf() -> None:
    client, _ = csrf_client()
    response = post_json(client, QUICK_JOB)
    assert response.status_code == 403
    assert "csrf" in errors_of(response)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_anonymous_post_with_csrf_cookie_and_header_answers_201() -> None:
    client, token = csrf_client()
    assert post_json(client, QUICK_JOB, HTTP_X_CSRFTOKEN=token).status_code == 201


@pytest.mark.django_db
def test_anonymous_post_with_wrong_csrf_header_answers_403() -> None:
    client, _ = csrf_client()
    response = post_json(client, QUICK_JOB, HTTP_X_CSRFTOKEN="x" * 32)
    assert response.status_code == 403
    assert "csrf" in errors_of(response)


@pytest.mark.django_db
def test_signed_in_post_without_csrf_header_answers_403_naming_csrf() -> None:
    client, _ = csrf_client(User.objects.create_user("ada", password="pw-for-tests-only"))
    response = post_json(client, QUICK_JOB)
    assert response.status_code == 403
    assert "csrf" in errors_of(response)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_signed_in_post_with_csrf_cookie_and_header_answers_201() -> None:
    client, token = csrf_client(User.objects.create_user("ada", password="pw-for-tests-only"))
    assert post_json(client, QUICK_JOB, HTTP_X_CSRFTOKEN=token).status_code == 201


@pytest.mark.django_db
def test_cancel_without_csrf_header_answers_403_and_leaves_the_job_queued() -> None:
    client, token = csrf_client()
    job = post_json(client, QUICK_JOB, HTTP_X_CSRFTOKEN=token).json()
    response = client.post(f"/api/jobs/{job['id']}/cancel/")
    assert response.status_code == 403
    assert "csrf" in errors_of(response)
    assert Job.objects.get(pk=job["id"]).state == "queued"


# --- ownership -------------------------------------------------------------------
# Transactional: the SSE view reads through database_sync_to_async, which closes a
# connection held inside a test transaction.

OWNER_PATHS: list[tuple[str, str]] = [
    ("get", "/api/jobs/{id}/"),
    ("post", "/api/jobs/{id}/cancel/"),
    ("get", "/api/jobs/{id}/result/"),
    ("get", "/api/jobs/{id}/events/"),
    ("get", "/jobs/{id}/"),
]


def request(client: Client, method: str, path: str) -> Response:
    response: Response = getattr(client, method)(path)
    return response


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("method", "path"), OWNER_PATHS)
def test_another_anonymous_visitors_job_is_404_everywhere(method: str, path: str) -> None:
    mine, theirs = Client(), Client()
    job = create(theirs)
    response = request(mine, method, path.format(id=job["id"]))
    assert response.status_code == 404
    if path.startswith("/api/"):
        assert "id" in errors_of(response)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("method", "path"), OWNER_PATHS)
def test_another_users_job_is_404_everywhere(method: str, path: str) -> None:
    mine, theirs = user_client("ada"), user_client("bob")
    job = create(theirs)
    response = request(mine, method, path.format(id=job["id"]))
    assert response.status_code == 404
    if path.startswith("/api/"):
        assert "id" in errors_of(response)


@pytest.mark.django_db(transaction=True)
def test_an_anonymous_job_is_404_for_a_signed_in_user() -> None:
    job = create(Client())
    assert user_client("ada").get(f"/api/jobs/{job['id']}/").status_code == 404


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/api/jobs/{id}/", "/jobs/{id}/"])
def test_owner_sees_their_own_job(path: str) -> None:
    client = Client()
    job = create(client)
    assert client.get(path.format(id=job["id"])).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_owner_receives_the_event_stream_of_their_own_job() -> None:
    client = Client()
    job = create(client)
    Job.objects.filter(pk=job["id"]).update(state="cancelled", seq=2)  # terminal: the stream ends
    response = client.get(f"/api/jobs/{job['id']}/events/")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"

    async def read_stream() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])  # type: ignore[attr-defined]

    body = async_to_sync(read_stream)().decode()
    assert body.startswith("id: 2\nevent: job\ndata: ")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/api/jobs/{id}/", "/jobs/{id}/"])
def test_view_all_jobs_sees_any_job(path: str) -> None:
    job = create(Client())
    assert user_client("root", VIEW_ALL_JOBS).get(path.format(id=job["id"])).status_code == 200


@pytest.mark.django_db
def test_view_all_jobs_gets_error_detail_and_owners_do_not() -> None:
    owner = Client()
    job = create(owner)
    Job.objects.filter(pk=job["id"]).update(state="failed", error="It broke.", error_detail="Traceback: boom")
    staff_view = user_client("root", VIEW_ALL_JOBS).get(f"/api/jobs/{job['id']}/").json()
    owner_view = owner.get(f"/api/jobs/{job['id']}/").json()
    assert staff_view["error_detail"] == "Traceback: boom"
    assert owner_view["error"] == "It broke."
    assert owner_view.get("error_detail") is None


# --- rights: the permission jobs.view_all_jobs, never the is_staff flag ----------


def failed_with_traceback(job_id: str) -> None:
    Job.objects.filter(pk=job_id).update(state="failed", error="It broke.", error_detail="Traceback: boom")


def with_result_file(job_id: str) -> None:
    """The job succeeded with a small result file (as a report's) under MEDIA_ROOT."""
    name = f"results/{job_id}/sales-report.csv"
    target = Path(settings.MEDIA_ROOT) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("order_id\r\n1\r\n")
    Job.objects.filter(pk=job_id).update(state="succeeded", result_file=name)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("method", "path"), OWNER_PATHS)
def test_a_staff_flag_alone_gets_404_on_another_visitors_job_everywhere(method: str, path: str) -> None:
    job = create(Client())
    with_result_file(job["id"])
    response = request(user_client("clerk", is_staff=True), method, path.format(id=job["id"]))
    assert response.status_code == 404
    if path.startswith("/api/"):
        assert "id" in errors_of(response)


@pytest.mark.django_db
def test_a_staff_flag_alone_lists_only_its_own_jobs() -> None:
    create(Client())
    clerk = user_client("clerk", is_staff=True)
    mine = create(clerk)
    assert [job["id"] for job in clerk.get("/api/jobs/").json()["results"]] == [mine["id"]]


@pytest.mark.django_db
def test_a_staff_flag_alone_gets_no_error_detail_even_of_its_own_job() -> None:
    clerk = user_client("clerk", is_staff=True)
    job = create(clerk)
    failed_with_traceback(job["id"])
    assert "error_detail" not in clerk.get(f"/api/jobs/{job['id']}/").json()
    assert "Traceback: boom" not in clerk.get(f"/jobs/{job['id']}/").content.decode()


@pytest.mark.django_db
def test_view_all_jobs_lists_every_job() -> None:
    theirs = create(Client())
    root = user_client("root", VIEW_ALL_JOBS)
    mine = create(root)
    assert {job["id"] for job in root.get("/api/jobs/").json()["results"]} == {theirs["id"], mine["id"]}


@pytest.mark.django_db(transaction=True)
def test_view_all_jobs_downloads_another_visitors_result_file() -> None:
    job = create(Client())
    with_result_file(job["id"])
    response = user_client("root", VIEW_ALL_JOBS).get(f"/api/jobs/{job['id']}/result/")
    assert response.status_code == 200
    assert read_file(response) == b"order_id\r\n1\r\n"


@pytest.mark.django_db
def test_a_superuser_has_every_right_without_a_grant() -> None:
    job = create(Client())
    failed_with_traceback(job["id"])
    client = Client()
    client.force_login(User.objects.create_superuser("boss", password="pw-for-tests-only"))
    assert client.get(f"/api/jobs/{job['id']}/").json()["error_detail"] == "Traceback: boom"


@pytest.mark.django_db
def test_the_live_view_page_is_404_for_a_staff_flag_alone_and_200_with_view_all_jobs() -> None:
    assert user_client("clerk", is_staff=True).get("/staff/jobs/").status_code == 404
    assert user_client("root", VIEW_ALL_JOBS).get("/staff/jobs/").status_code == 200


@pytest.mark.django_db
def test_the_header_links_the_live_view_only_with_view_all_jobs() -> None:
    assert "/staff/jobs/" not in user_client("clerk", is_staff=True).get("/").content.decode()
    assert "/staff/jobs/" in user_client("root", VIEW_ALL_JOBS).get("/").content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("method", "path"), [p for p in OWNER_PATHS if p[1].startswith("/api/")])
@pytest.mark.parametrize("bad_id", ["not-a-uuid", "12345", uuid.uuid4().hex + "00"])
def test_malformed_job_id_in_api_path_answers_404_json(client: Client, method: str, path: str, bad_id: str) -> None:
    response = request(client, method, path.format(id=bad_id))
    assert response.status_code == 404
    assert "id" in errors_of(response)


@pytest.mark.django_db
def test_malformed_job_id_on_the_page_answers_404(client: Client) -> None:
    assert client.get("/jobs/not-a-uuid/").status_code == 404


@pytest.mark.django_db
def test_unknown_job_id_answers_404_json(client: Client) -> None:
    response = client.get(f"/api/jobs/{uuid.uuid4()}/")
    assert response.status_code == 404
    assert "id" in errors_of(response)


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/nothing-here/", "/api/jobs/x/y/z/", "/api/jobs"])
def test_unknown_api_path_answers_404_json(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "path" in errors_of(response)


# --- the list --------------------------------------------------------------------


@pytest.mark.django_db
def test_list_answers_my_jobs_newest_first(client: Client) -> None:
    ids = [create(client)["id"] for _ in range(3)]
    create(Client())  # someone else's
    body = client.get("/api/jobs/").json()
    assert body["count"] == 3
    assert [job["id"] for job in body["results"]] == ids[::-1]
    assert body["next"] is None and body["previous"] is None


@pytest.mark.django_db
def test_list_of_a_new_visitor_is_empty(client: Client) -> None:
    assert client.get("/api/jobs/").json() == {"count": 0, "next": None, "previous": None, "results": []}


@pytest.mark.django_db
def test_list_pages_link_to_each_other(client: Client) -> None:
    ids = [create(client)["id"] for _ in range(5)][::-1]
    first = client.get("/api/jobs/?page_size=2").json()
    assert [job["id"] for job in first["results"]] == ids[0:2]
    assert first["count"] == 5 and first["previous"] is None
    second = client.get(first["next"]).json()
    assert [job["id"] for job in second["results"]] == ids[2:4]
    assert client.get(second["previous"]).json() == first
    last = client.get(second["next"]).json()
    assert [job["id"] for job in last["results"]] == ids[4:]
    assert last["next"] is None


@pytest.mark.django_db
def test_list_page_size_defaults_to_20(client: Client) -> None:
    now = timezone.now()
    owner = User.objects.create_user("ada", password="pw-for-tests-only")
    Job.objects.bulk_create(
        Job(owner_user=owner, kind="primes", params={"limit": 10}, created_at=now, updated_at=now) for _ in range(21)
    )
    client.force_login(owner)
    body = client.get("/api/jobs/").json()
    assert body["count"] == 21 and len(body["results"]) == 20 and body["next"] is not None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page_size=0", "page_size"),
        ("page_size=101", "page_size"),
        ("page_size=abc", "page_size"),
        ("page_size=", "page_size"),
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=2", "page"),  # beyond the end of an empty list
        ("page=1.5", "page"),
    ],
)
def test_list_with_bad_paging_answers_400_naming_the_parameter(client: Client, query: str, field: str) -> None:
    response = client.get(f"/api/jobs/?{query}")
    assert response.status_code == 400
    assert field in errors_of(response)


@pytest.mark.django_db
def test_list_page_beyond_the_end_answers_400(client: Client) -> None:
    create(client)
    assert client.get("/api/jobs/?page=1&page_size=1").status_code == 200
    response = client.get("/api/jobs/?page=2&page_size=1")
    assert response.status_code == 400
    assert "page" in errors_of(response)


@pytest.mark.django_db
@pytest.mark.parametrize("page_size", [1, 100])
def test_list_accepts_page_size_bounds(client: Client, page_size: int) -> None:
    assert client.get(f"/api/jobs/?page_size={page_size}").status_code == 200


# --- kinds and OpenAPI -----------------------------------------------------------


@pytest.mark.django_db
def test_job_kinds_lists_sleep_primes_report_with_object_schemas(client: Client) -> None:
    kinds = client.get("/api/job-kinds/").json()
    assert sorted(kind["name"] for kind in kinds) == ["csv_import", "pipeline", "primes", "report", "sleep"]
    for kind in kinds:
        assert set(kind) == {"name", "title", "description", "schema"}
        assert kind["title"] and kind["description"]
        schema = kind["schema"]
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert schema["properties"]


def schema_bounds() -> list[tuple[str, str, float, float, bool]]:
    """(kind, parameter, minimum, maximum, integer) from the one declaration of each kind."""
    return [
        (kind.name, name, prop["minimum"], prop["maximum"], "integer" in prop["type"])
        for kind in kind_list()
        for name, prop in kind.schema()["properties"].items()
        if "minimum" in prop  # numbers; file parameters: tests/jobs/test_csv_import.py
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(("kind", "param", "minimum", "maximum", "integer"), schema_bounds())
def test_served_schema_bounds_are_what_create_accepts(
    client: Client, kind: str, param: str, minimum: float, maximum: float, integer: bool
) -> None:
    served = {k["name"]: k["schema"] for k in client.get("/api/job-kinds/").json()}[kind]["properties"][param]
    assert (served["minimum"], served["maximum"]) == (minimum, maximum)
    step = 1 if integer else 0.01

    def status(value: float) -> int:
        return post_json(client, {"kind": kind, "params": {param: value}}).status_code

    assert status(minimum) == 201
    assert status(maximum) == 201
    assert status(minimum - step) == 400
    assert status(maximum + step) == 400


@pytest.mark.django_db
def test_openapi_document_lists_the_job_paths_and_schema(client: Client) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json()
    for path in (
        "/api/jobs/",
        "/api/jobs/{job_id}/",
        "/api/jobs/{job_id}/cancel/",
        "/api/jobs/{job_id}/result/",
        "/api/job-kinds/",
    ):
        assert path in document["paths"], path
    job_out = document["components"]["schemas"]["JobPayload"]  # jobs/serializers.py, the one declaration
    assert set(job_out["properties"]) >= JOB_KEYS
    assert set(job_out["required"]) == JOB_KEYS  # error_detail: staff only
    assert job_out["properties"]["progress"]["anyOf"][0] == {"$ref": "#/components/schemas/ProgressPayload"}
    assert "application/json" in document["paths"]["/api/jobs/"]["post"]["requestBody"]["content"]


# --- cancel ----------------------------------------------------------------------


@pytest.mark.django_db
def test_cancel_of_a_queued_job_answers_202_cancelled(client: Client) -> None:
    job = create(client)
    response = client.post(f"/api/jobs/{job['id']}/cancel/")
    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "cancelled"
    assert body["seq"] > job["seq"]
    assert body["queue_position"] is None
    assert body["finished_at"] is not None
    assert client.get(f"/api/jobs/{job['id']}/").json()["state"] == "cancelled"


@pytest.mark.django_db
def test_cancel_of_a_finished_job_answers_409_naming_state(client: Client) -> None:
    job = create(client)
    assert client.post(f"/api/jobs/{job['id']}/cancel/").status_code == 202
    response = client.post(f"/api/jobs/{job['id']}/cancel/")
    assert response.status_code == 409
    assert "state" in errors_of(response)


@pytest.mark.django_db
def test_result_of_a_job_without_file_answers_404_naming_result(client: Client) -> None:
    job = create(client)
    response = client.get(f"/api/jobs/{job['id']}/result/")
    assert response.status_code == 404
    assert "result" in errors_of(response)


# --- under a real worker ---------------------------------------------------------


def wait_for_state(client: Client, job_id: str, state: str, *, timeout: float) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(client.get(f"/api/jobs/{job_id}/").json())
        return seen["state"] == state

    assert wait_until(reached, timeout=timeout), f"job {job_id} stayed {seen.get('state')}"
    return seen


def read_file(response: Any) -> bytes:
    try:
        return b"".join(response.streaming_content)
    finally:
        response.close()


@pytest.mark.django_db(transaction=True)
def test_report_job_serves_its_csv_once_succeeded(worker: Any) -> None:
    client = Client()
    job = create(client, {"kind": "report", "params": {"rows": 2000}})
    done = wait_for_state(client, job["id"], "succeeded", timeout=30)
    assert done["result_url"] == f"/api/jobs/{job['id']}/result/"
    assert done["progress"]["current"] == 2000 and done["progress"]["percent"] == 100.0
    response = client.get(done["result_url"])
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    assert response["Content-Disposition"] == 'attachment; filename="sales-report.csv"'
    lines = read_file(response).decode().splitlines()
    assert len(lines) == 2001
    assert lines[0] == "order_id,date,region,product,quantity,unit_price,total"
    assert done["result"]["bytes"] == sum(len(line) + 2 for line in lines)  # csv writes \r\n


@pytest.mark.django_db(transaction=True)
def test_report_result_is_404_for_another_visitor(worker: Any) -> None:
    client = Client()
    job = create(client, {"kind": "report", "params": {"rows": 10}})
    wait_for_state(client, job["id"], "succeeded", timeout=30)
    response = Client().get(f"/api/jobs/{job['id']}/result/")
    assert response.status_code == 404


@pytest.mark.django_db(transaction=True)
def test_primes_job_counts_78498_primes_below_a_million(worker: Any) -> None:
    client = Client()
    job = create(client, {"kind": "primes", "params": {"limit": 1_000_000}})
    done = wait_for_state(client, job["id"], "succeeded", timeout=30)
    assert done["result"] == {"count": 78498, "limit": 1_000_000}
    assert done["result_url"] is None
    assert done["seq"] >= 4  # created, started, progress, finished
    assert done["started_at"] <= done["finished_at"]


@pytest.mark.django_db(transaction=True)
def test_failed_job_shows_its_error_to_the_owner(worker: Any) -> None:
    client = Client()
    job = create(client, {"kind": "sleep", "params": {"steps": 3, "step_seconds": 0, "fail_at_step": 2}})
    done = wait_for_state(client, job["id"], "failed", timeout=30)
    assert done["error"] == "Failed at step 2, as asked by fail_at_step."


@pytest.mark.django_db(transaction=True)
def test_cancel_of_a_succeeded_job_answers_409(worker: Any) -> None:
    client = Client()
    job = create(client)
    wait_for_state(client, job["id"], "succeeded", timeout=30)
    response = client.post(f"/api/jobs/{job['id']}/cancel/")
    assert response.status_code == 409
    assert errors_of(response)["state"] == ["The job already ended (succeeded)."]
