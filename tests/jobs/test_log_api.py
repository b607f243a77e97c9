"""A job's log over HTTP (docs/contract.md#job-logs): `GET /api/jobs/<id>/log/` in pages
and `GET /api/jobs/<id>/log.txt` whole, through Django's test client, and log.txt
streamed by the real daphne; 404 for anyone who may not see the job, 400 naming a bad
`after` or `limit`."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client, override_settings
from django.utils import timezone

from jobs.api import api
from jobs.downloads import LogTextResponse
from jobs.logs import LOG_PAGE_MAX, LogLevel
from jobs.models import Job, JobState
from jobs.owners import SESSION_OWNER_KEY
from jobs.services.logs import PendingLine, job_log_append
from tests.accounts import VIEW_ALL_JOBS, user_with
from tests.conftest import LiveServer

Response = Any  # what the test client answers
AT = datetime(2026, 11, 25, 12, 0, 3, 123456, tzinfo=UTC)
LOG_PATHS = ["/api/jobs/{id}/log/", "/api/jobs/{id}/log.txt"]
TIMEOUT = 30.0  # seconds for the live server's answer on a shared machine


def running_job(*, owner_user: Any = None, owner_token: str = "") -> Job:
    now = timezone.now()
    return Job.objects.create(
        owner_user=owner_user,
        owner_token=owner_token,
        kind="sleep",
        params={"steps": 3, "step_seconds": 0},
        state=JobState.RUNNING,
        attempts=1,
        seq=2,
        created_at=now,
        updated_at=now,
        started_at=now,
    )


def write(job: Job, *texts: str, level: LogLevel = "info", at: datetime = AT) -> None:
    lines = [PendingLine(t=at + timedelta(seconds=i), level=level, text=text) for i, text in enumerate(texts)]
    assert job_log_append(job_id=job.id, attempt=job.attempts, lines=lines) is not None


def numbered(count: int) -> list[str]:
    return [f"line {n}" for n in range(1, count + 1)]


def signed_in(username: str, *codenames: str, is_staff: bool = False) -> tuple[Client, Any]:
    user = user_with(username, *codenames, is_staff=is_staff)
    client = Client()
    client.force_login(user)
    return client, user


def page(client: Client, job: Job, query: str = "") -> dict[str, Any]:
    response = client.get(f"/api/jobs/{job.id}/log/{query}")
    assert response.status_code == 200, response.content
    body: dict[str, Any] = response.json()
    return body


def ns(body: dict[str, Any]) -> list[int]:
    return [line["n"] for line in body["lines"]]


# --- the pages -----------------------------------------------------------------------


@pytest.mark.django_db
def test_an_empty_log_is_one_empty_page() -> None:
    client, user = signed_in("ada")
    job = running_job(owner_user=user)

    assert page(client, job) == {"lines": [], "total": 0, "dropped": 0, "next": None}


@pytest.mark.django_db
def test_a_line_has_its_number_time_level_and_text() -> None:
    client, user = signed_in("ada")
    job = running_job(owner_user=user)
    write(job, "fetched page 3")
    write(job, "retrying", level="warning")

    body = page(client, job)

    assert body["lines"] == [
        {"n": 1, "t": "2026-11-25T12:00:03.123456Z", "level": "info", "text": "fetched page 3"},
        {"n": 2, "t": "2026-11-25T12:00:03.123456Z", "level": "warning", "text": "retrying"},
    ]
    assert (body["total"], body["dropped"], body["next"]) == (2, 0, None)


@pytest.mark.django_db
def test_pages_follow_next_to_the_end_where_next_is_null() -> None:
    client, user = signed_in("ada")
    job = running_job(owner_user=user)
    write(job, *numbered(5))

    first = page(client, job, "?limit=2")
    second = page(client, job, f"?after={first['next']}&limit=2")
    third = page(client, job, f"?after={second['next']}&limit=2")

    assert (ns(first), first["next"]) == ([1, 2], 2)
    assert (ns(second), second["next"]) == ([3, 4], 4)
    assert (ns(third), third["next"]) == ([5], None)
    assert all(body["total"] == 5 and body["dropped"] == 0 for body in (first, second, third))


@pytest.mark.django_db
def test_a_page_that_ends_at_the_last_line_has_next_null() -> None:
    client, user = signed_in("ada")
    job = running_job(owner_user=user)
    write(job, *numbered(4))

    body = page(client, job, "?after=2&limit=2")

    assert (ns(body), body["next"]) == ([3, 4], None)


@pytest.mark.django_db
def test_after_at_or_past_the_last_line_is_an_empty_page() -> None:
    client, user = signed_in("ada")
    job = running_job(owner_user=user)
    write(job, *numbered(3))

    for after in ("3", "4", "9" * 19):  # 19 digits: past what a line number can be
        assert page(client, job, f"?after={after}") == {"lines": [], "total": 3, "dropped": 0, "next": None}


@pytest.mark.django_db
def test_a_page_holds_1000_lines_by_default_and_at_most() -> None:
    client, user = signed_in("ada")
    job = running_job(owner_user=user)
    write(job, *numbered(LOG_PAGE_MAX + 1))

    first = page(client, job)
    widest = page(client, job, f"?limit={LOG_PAGE_MAX}")
    rest = page(client, job, f"?after={first['next']}")

    assert ns(first) == list(range(1, LOG_PAGE_MAX + 1)) == ns(widest)
    assert first["next"] == LOG_PAGE_MAX
    assert (ns(rest), rest["next"]) == ([LOG_PAGE_MAX + 1], None)


@pytest.mark.django_db
@override_settings(JOB_LOG_MAX_LINES=3)
def test_past_the_kept_lines_total_counts_every_line_and_dropped_the_ones_gone() -> None:
    client, user = signed_in("ada")
    job = running_job(owner_user=user)
    write(job, *numbered(4))
    write(job, "line 5")

    body = page(client, job)
    txt = text_of(client.get(f"/api/jobs/{job.id}/log.txt"))

    assert (ns(body), body["total"], body["dropped"], body["next"]) == ([3, 4, 5], 5, 2, None)
    assert page(client, job, "?after=1&limit=1")["lines"][0]["n"] == 3  # the first kept line above 1
    assert [line.split(" INFO ")[1] for line in txt.splitlines()] == ["line 3", "line 4", "line 5"]


@pytest.mark.django_db
def test_an_ended_jobs_log_is_still_served() -> None:
    client, user = signed_in("ada")
    job = running_job(owner_user=user)
    write(job, *numbered(2))
    Job.objects.filter(pk=job.pk).update(state=JobState.SUCCEEDED, finished_at=timezone.now())

    assert ns(page(client, job)) == [1, 2]


# --- log.txt -------------------------------------------------------------------------


def text_of(response: Response) -> str:
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content).decode()


@pytest.mark.django_db
def test_log_txt_is_one_time_level_text_line_per_line() -> None:
    client, user = signed_in("ada")
    job = running_job(owner_user=user)
    write(job, "fetched page 3", "<b>not html</b> ünïcödé")
    write(job, "retrying", level="warning", at=AT + timedelta(minutes=1))
    write(job, "gave up", level="error", at=AT + timedelta(minutes=2))

    response = client.get(f"/api/jobs/{job.id}/log.txt")

    assert text_of(response) == (
        "2026-11-25T12:00:03.123456Z INFO fetched page 3\n"
        "2026-11-25T12:00:04.123456Z INFO <b>not html</b> ünïcödé\n"
        "2026-11-25T12:01:03.123456Z WARNING retrying\n"
        "2026-11-25T12:02:03.123456Z ERROR gave up\n"
    )
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Content-Disposition"] == f'inline; filename="job-{job.id}.log"'
    assert response["X-Content-Type-Options"] == "nosniff"  # a browser shows it as text, whatever it holds


@pytest.mark.django_db
def test_log_txt_of_an_empty_log_is_empty() -> None:
    client, user = signed_in("ada")
    job = running_job(owner_user=user)

    assert text_of(client.get(f"/api/jobs/{job.id}/log.txt")) == ""


async def test_log_txt_over_asgi_makes_each_chunk_as_the_one_before_is_sent() -> None:
    made: list[int] = []

    def chunks() -> Iterator[str]:
        for n in range(3):
            made.append(n)
            yield f"chunk {n}\n"

    response = LogTextResponse(chunks(), filename="job.log")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Django warns when it must list a sync iterator first
        parts = aiter(response)
        assert await anext(parts) == b"chunk 0\n"
        assert made == [0]
        assert [part async for part in parts] == [b"chunk 1\n", b"chunk 2\n"]


@pytest.mark.django_db(transaction=True)
def test_a_log_txt_of_2500_lines_is_streamed_whole_by_daphne(
    live_server: LiveServer, live_server_env: dict[str, str]
) -> None:
    token = uuid.uuid4().hex
    with override_settings(SECRET_KEY=live_server_env["SECRET_KEY"]):
        session = SessionStore()
        session[SESSION_OWNER_KEY] = token
        session.save()
    job = running_job(owner_token=token)
    texts = [f"line {n} " + "x" * (n % 50) for n in range(1, 2501)]
    for start in range(0, len(texts), 700):  # batches, as the worker writes them
        write(job, *texts[start : start + 700])
    log_offset = live_server.log.stat().st_size

    with httpx.Client(base_url=live_server.url, timeout=TIMEOUT) as http:
        http.cookies.set("sessionid", session.session_key or "")
        with http.stream("GET", f"/api/jobs/{job.id}/log.txt") as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/plain; charset=utf-8"
            body = b"".join(response.iter_bytes()).decode()

    lines = body.splitlines()
    assert len(lines) == 2500
    assert [line.split(" INFO ", 1)[1] for line in lines] == texts
    with live_server.log.open("rb") as log:
        log.seek(log_offset)
        logged = log.read().decode(errors="replace")
    assert "Traceback" not in logged


# --- who may see it ------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", LOG_PATHS)
def test_another_users_job_log_is_404(path: str) -> None:
    _, owner = signed_in("ada")
    job = running_job(owner_user=owner)
    write(job, "secret")
    someone, _ = signed_in("bob")

    response = someone.get(path.format(id=job.id))

    assert response.status_code == 404
    assert response.json() == {"errors": {"id": ["No job with this id."]}}


@pytest.mark.django_db
@pytest.mark.parametrize("path", LOG_PATHS)
def test_a_visitor_without_a_session_gets_404(path: str) -> None:
    _, owner = signed_in("ada")
    job = running_job(owner_user=owner)

    response = Client().get(path.format(id=job.id))

    assert response.status_code == 404
    assert response.json() == {"errors": {"id": ["No job with this id."]}}
    assert "sessionid" not in response.cookies


@pytest.mark.django_db
@pytest.mark.parametrize("path", LOG_PATHS)
def test_another_anonymous_visitors_job_log_is_404(path: str) -> None:
    job = running_job(owner_token="c" * 32)
    visitor = Client()
    session = visitor.session
    session[SESSION_OWNER_KEY] = "d" * 32
    session.save()

    assert visitor.get(path.format(id=job.id)).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("path", LOG_PATHS)
def test_a_staff_flag_alone_gets_404(path: str) -> None:
    _, owner = signed_in("ada")
    job = running_job(owner_user=owner)
    flagged, _ = signed_in("flagged", is_staff=True)

    assert flagged.get(path.format(id=job.id)).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("path", [*LOG_PATHS, "/api/jobs/not-a-uuid/log/", "/api/jobs/not-a-uuid/log.txt"])
def test_an_unknown_or_malformed_id_is_404(path: str) -> None:
    client, _ = signed_in("ada")

    response = client.get(path.format(id=uuid.uuid4()))

    assert response.status_code == 404
    assert response.json() == {"errors": {"id": ["No job with this id."]}}


@pytest.mark.django_db
def test_view_all_jobs_reads_anyones_log() -> None:
    _, owner = signed_in("ada")
    job = running_job(owner_user=owner)
    write(job, "hello")
    staff, _ = signed_in("root", VIEW_ALL_JOBS)

    assert ns(page(staff, job)) == [1]
    assert text_of(staff.get(f"/api/jobs/{job.id}/log.txt")).endswith(" INFO hello\n")


@pytest.mark.django_db
def test_an_anonymous_owner_reads_their_jobs_log() -> None:
    visitor = Client()
    session = visitor.session
    session[SESSION_OWNER_KEY] = "e" * 32
    session.save()
    job = running_job(owner_token="e" * 32)
    write(job, "mine")

    assert ns(page(visitor, job)) == [1]


# --- bad input -----------------------------------------------------------------------

BAD_QUERIES = [
    ("after=-1", "after"),
    ("after=abc", "after"),
    ("after=1.5", "after"),
    ("after=5.0", "after"),
    ("after=", "after"),
    ("after=+5", "after"),
    ("after=%205", "after"),  # " 5"
    ("after=1_000", "after"),
    ("after=1e3", "after"),
    ("after=0x10", "after"),
    ("after=%D9%A3", "after"),  # an Arabic-Indic three: a digit to str.isdigit(), not ASCII
    ("after=" + "9" * 20, "after"),
    ("after=" + "9" * 5000, "after"),
    ("after=1&after=2", "after"),
    ("limit=0", "limit"),
    ("limit=-1", "limit"),
    ("limit=1001", "limit"),
    ("limit=abc", "limit"),
    ("limit=", "limit"),
    ("limit=2.5", "limit"),
    ("limit=10&limit=10", "limit"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("query", "name"), BAD_QUERIES, ids=[query for query, _ in BAD_QUERIES])
def test_a_bad_after_or_limit_gets_400_naming_it(query: str, name: str) -> None:
    client, user = signed_in("ada")
    job = running_job(owner_user=user)

    response = client.get(f"/api/jobs/{job.id}/log/?{query}")

    assert response.status_code == 400, response.content
    body = response.json()
    assert set(body) == {"errors"} and set(body["errors"]) == {name}, body
    assert all(isinstance(message, str) and message for message in body["errors"][name])


@pytest.mark.django_db
def test_the_400_for_after_says_what_it_takes() -> None:
    client, user = signed_in("ada")
    job = running_job(owner_user=user)

    response = client.get(f"/api/jobs/{job.id}/log/?after=abc")

    assert response.json() == {"errors": {"after": ["Must be a whole number of at most 19 digits."]}}


# --- the OpenAPI document ------------------------------------------------------------


def test_the_openapi_document_describes_the_log_page_and_its_query() -> None:
    schema = api.get_openapi_schema()
    operation = schema["paths"]["/api/jobs/{job_id}/log/"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    page_ref = operation["responses"][200]["content"]["application/json"]["schema"]["$ref"]
    components = schema["components"]["schemas"]
    log_page = components[page_ref.rsplit("/", 1)[1]]

    assert set(parameters) == {"after", "limit"}
    assert parameters["after"]["schema"]["type"] == "integer"
    assert parameters["limit"]["schema"]["maximum"] == LOG_PAGE_MAX
    assert set(log_page["properties"]) == {"lines", "total", "dropped", "next"}
    line_ref = log_page["properties"]["lines"]["items"]["$ref"]
    assert set(components[line_ref.rsplit("/", 1)[1]]["properties"]) == {"n", "t", "level", "text"}
    text_operation = schema["paths"]["/api/jobs/{job_id}/log.txt"]["get"]
    assert "text/plain" in text_operation["responses"][200]["content"]
