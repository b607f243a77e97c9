"""Every bad input of issue 5, in one table, against the live daphne (HTTP, WebSocket, SSE
and the page's form), with real Redis behind it.

Each case asserts the status or close code AND that the answer names the problem (the
field, the parameter, the header), never a traceback; after each case the server still
answers the visitor's job over HTTP and WebSocket, and after the whole table in a row it
runs a normal job end to end. The POST bodies of tests/jobs/test_api.py's table (run there
through Django's test client) run here again through the real server.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest
from channels.db import database_sync_to_async
from django.contrib.sessions.backends.db import SessionStore
from django.test.utils import override_settings
from django.utils import timezone
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from jobs.models import Job, JobState
from jobs.owners import SESSION_OWNER_KEY
from jobs.serializers import JOB_KEYS
from tests.conftest import LiveServer
from tests.jobs.test_api import BAD_INPUTS, with_param

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10.0  # seconds for one answer, frame or close on this shared machine
JOB_TIMEOUT = 30.0  # seconds for the normal job after the table, queued behind other tests' jobs
TERMINAL = {"succeeded", "failed", "cancelled"}
JSON = "application/json"
TRACEBACK_MARKERS = ("Traceback", 'File "', "Server Error")

# --- the cases -------------------------------------------------------------------
# Paths may hold {mine} (my queued job), {finished} (my cancelled job), {theirs} (another
# visitor's job) and {unknown} (a UUID no job has).


@dataclass(frozen=True)
class HttpCase:
    """A request; the answer has `status` and names `names` (an errors key or a word of a
    message; on a page, a phrase of the page)."""

    id: str
    method: str
    path: str
    status: int
    names: str
    body: bytes | None = None
    content_type: str | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    csrf: bool = True
    chunked: bool = False


@dataclass(frozen=True)
class FormCase:
    """A submit of the page's form without JavaScript: 400, the error next to its field."""

    id: str
    fields: tuple[tuple[str, str], ...]
    field: str  # the field's html name, whose error element must hold `names`
    names: str


@dataclass(frozen=True)
class SocketCase:
    """A socket: refused at the handshake (HTTP `code`), closed with `code`, or answered with
    an error frame naming `names` and left open."""

    id: str
    path: str
    expect: Literal["refused", "close", "error"]
    code: int = 0
    names: str = ""
    send: tuple[str | bytes, ...] = ()
    origin: str | None = "site"  # "site": the live server's own URL; {port} is its port
    cookie: bool = True  # False: the handshake carries no session cookie


Case = HttpCase | FormCase | SocketCase


def post(case_id: str, body: str | bytes, status: int, names: str, content_type: str | None = JSON) -> HttpCase:
    raw = body.encode() if isinstance(body, str) else body
    return HttpCase(case_id, "POST", "/api/jobs/", status, names, body=raw, content_type=content_type or None)


OVERSIZED = json.dumps({"kind": "sleep", "params": {}, "padding": "x" * (64 * 1024)}).encode()

HTTP_POST_CASES = [post(f"post-{c[0]}", c[1], c[3], c[4], c[2]) for c in BAD_INPUTS] + [
    post("post-steps-1e308", with_param("sleep", "steps", 1e308), 400, "steps"),
    post("post-steps-minus-1e308", with_param("sleep", "steps", -1e308), 400, "steps"),
    post("post-limit-10**400", '{"kind": "primes", "params": {"limit": 1' + "0" * 400 + "}}", 400, "limit"),
    post("post-limit-minus-10**400", '{"kind": "primes", "params": {"limit": -1' + "0" * 400 + "}}", 400, "limit"),
    post("post-steps-smallest-denormal", with_param("sleep", "steps", 5e-324), 400, "steps"),
    post("post-step_seconds-string-NaN", with_param("sleep", "step_seconds", "NaN"), 400, "step_seconds"),
    post("post-step_seconds-list", with_param("sleep", "step_seconds", [0.1]), 400, "step_seconds"),
    post("post-fail_at_step-1001", with_param("sleep", "fail_at_step", 1001), 400, "fail_at_step"),
    post("post-rows-string", with_param("report", "rows", "many"), 400, "rows"),
    # Strict types (DESIGN.md "HTTP"): null only where the schema's type lists "null",
    # no number from a string or a boolean, no fraction for an integer.
    post("post-steps-null", with_param("sleep", "steps", None), 400, "steps"),
    post("post-step_seconds-null", with_param("sleep", "step_seconds", None), 400, "step_seconds"),
    post("post-limit-null", with_param("primes", "limit", None), 400, "limit"),
    post("post-rows-null", with_param("report", "rows", None), 400, "rows"),
    post("post-seed-null", with_param("pipeline", "seed", None), 400, "seed"),
    post("post-csv_import-file-null", with_param("csv_import", "file", None), 400, "file"),
    post("post-limit-string-5", with_param("primes", "limit", "5"), 400, "limit"),
    post("post-step_seconds-string-5", with_param("sleep", "step_seconds", "5"), 400, "step_seconds"),
    post("post-limit-true", with_param("primes", "limit", True), 400, "limit"),
    post("post-steps-false", with_param("sleep", "steps", False), 400, "steps"),
    post("post-step_seconds-true", with_param("sleep", "step_seconds", True), 400, "step_seconds"),
    post("post-steps-1.5", with_param("sleep", "steps", 1.5), 400, "steps"),
    post("post-fail_at_step-1.5", with_param("sleep", "fail_at_step", 1.5), 400, "fail_at_step"),
    post("post-fail_at_step-string-2", with_param("pipeline", "fail_at_step", "2"), 400, "fail_at_step"),
    post("post-params-misspelled", json.dumps({"kind": "primes", "parms": {}}), 400, "parms"),
    post("post-kind-empty-string", json.dumps({"kind": ""}), 400, "kind"),
    post("post-kind-10000-chars", json.dumps({"kind": "x" * 10_000}), 400, "kind"),
    post("post-kind-object", json.dumps({"kind": {"name": "sleep"}}), 400, "kind"),
    post("post-number-body", "42", 400, "body"),
    post("post-true-body", "true", 400, "body"),
    post("post-trailing-garbage", '{"kind": "sleep"} x', 400, "body"),
    post("post-single-quotes", "{'kind': 'sleep'}", 400, "body"),
    post("post-application-jsonx", json.dumps({"kind": "sleep"}), 415, "content_type", "application/jsonx"),
    post("post-multipart", b"--b\r\n\r\n--b--\r\n", 415, "content_type", "multipart/form-data; boundary=b"),
    post("post-text-html", "<p>sleep</p>", 415, "content_type", "text/html"),
    HttpCase(
        "post-over-64-KiB-chunked", "POST", "/api/jobs/", 413, "body", body=OVERSIZED, content_type=JSON, chunked=True
    ),
    HttpCase(
        "post-without-csrf-header",
        "POST",
        "/api/jobs/",
        403,
        "csrf",
        body=b'{"kind": "sleep"}',
        content_type=JSON,
        csrf=False,
    ),
    HttpCase(
        "post-wrong-csrf-header",
        "POST",
        "/api/jobs/",
        403,
        "csrf",
        body=b'{"kind": "sleep"}',
        content_type=JSON,
        headers=(("X-CSRFToken", b"x" * 32),),
        csrf=False,
    ),
    HttpCase("cancel-without-csrf-header", "POST", "/api/jobs/{mine}/cancel/", 403, "csrf", csrf=False),
    HttpCase("retry-without-csrf-header", "POST", "/api/jobs/{finished}/retry/", 403, "csrf", csrf=False),
]

JOB_PATHS = [
    ("get", "GET", "/api/jobs/{id}/"),
    ("cancel", "POST", "/api/jobs/{id}/cancel/"),
    ("retry", "POST", "/api/jobs/{id}/retry/"),
    ("result", "GET", "/api/jobs/{id}/result/"),
    ("events", "GET", "/api/jobs/{id}/events/"),
    ("log", "GET", "/api/jobs/{id}/log/"),
    ("log-txt", "GET", "/api/jobs/{id}/log.txt"),
    ("page", "GET", "/jobs/{id}/"),
]
BAD_IDS = [
    ("not-a-uuid", "not-a-uuid"),
    ("uuid-plus-2", uuid.UUID(int=7).hex + "00"),
    ("uuid-minus-1", str(uuid.UUID(int=7))[:-1]),
    ("nul-byte", "%00"),
    ("sql", "1'%20OR%20'1'='1"),
]
PAGE_NOT_FOUND = "Nothing here"  # the 404 page's heading


def job_path_case(case_id: str, method: str, path: str, job: str, status: int = 404) -> HttpCase:
    names = PAGE_NOT_FOUND if path.startswith("/jobs/") else "id"
    return HttpCase(case_id, method, path.format(id=job), status, names)


HTTP_PATH_CASES = (
    [job_path_case(f"{name}-id-{bad}", m, p, value) for name, m, p in JOB_PATHS for bad, value in BAD_IDS[:2]]
    + [job_path_case(f"get-id-{bad}", "GET", "/api/jobs/{id}/", value) for bad, value in BAD_IDS[2:]]
    + [job_path_case(f"{name}-unknown-job", m, p, "{unknown}") for name, m, p in JOB_PATHS]
    + [job_path_case(f"{name}-another-visitors-job", m, p, "{theirs}") for name, m, p in JOB_PATHS]
    + [
        HttpCase("result-of-a-job-without-file", "GET", "/api/jobs/{mine}/result/", 404, "result"),
        HttpCase("cancel-of-a-finished-job", "POST", "/api/jobs/{finished}/cancel/", 409, "state"),
        HttpCase("unknown-api-path", "GET", "/api/nothing-here/", 404, "path"),
        HttpCase("job-path-with-extra-segment", "GET", "/api/jobs/{mine}/x/", 404, "path"),
        HttpCase("put-on-the-list", "PUT", "/api/jobs/", 405, "method"),
        HttpCase("patch-on-the-list", "PATCH", "/api/jobs/", 405, "method"),
        HttpCase("delete-a-job", "DELETE", "/api/jobs/{mine}/", 405, "method"),
        HttpCase("get-on-cancel", "GET", "/api/jobs/{mine}/cancel/", 405, "method"),
        HttpCase("retry-of-a-queued-job", "POST", "/api/jobs/{mine}/retry/", 409, "state"),
        HttpCase("get-on-retry", "GET", "/api/jobs/{finished}/retry/", 405, "method"),
        HttpCase("delete-on-retry", "DELETE", "/api/jobs/{finished}/retry/", 405, "method"),
        HttpCase("delete-the-kinds", "DELETE", "/api/job-kinds/", 405, "method"),
        HttpCase("post-to-the-result", "POST", "/api/jobs/{mine}/result/", 405, "method"),
        HttpCase("post-to-the-events", "POST", "/api/jobs/{mine}/events/", 405, "method"),
        HttpCase("events-log-after-not-a-number", "GET", "/api/jobs/{mine}/events/?log_after=x", 400, "log_after"),
        HttpCase(
            "events-log-after-20-digits", "GET", "/api/jobs/{mine}/events/?log_after=" + "9" * 20, 400, "log_after"
        ),
        HttpCase("post-to-the-events-without-csrf", "POST", "/api/jobs/{mine}/events/", 405, "method", csrf=False),
        HttpCase("post-to-the-log", "POST", "/api/jobs/{mine}/log/", 405, "method"),
        HttpCase("delete-the-log-txt", "DELETE", "/api/jobs/{mine}/log.txt", 405, "method"),
        HttpCase("post-to-unknown-api-path-without-csrf", "POST", "/api/nothing-here/", 404, "path", csrf=False),
    ]
)

HTTP_PAGING_CASES = [
    HttpCase(f"list-{query.replace('=', '-') or 'empty'}", "GET", f"/api/jobs/?{query}", 400, name)
    for query, name in [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=1.5", "page"),
        ("page=", "page"),
        ("page=2", "page"),  # past the end: the visitor has one page
        ("page=" + "9" * 5000, "page"),
        ("page_size=0", "page_size"),
        ("page_size=101", "page_size"),
        ("page_size=abc", "page_size"),
        ("page_size=-5", "page_size"),
        ("page_size=", "page_size"),
        ("page_size=1e2", "page_size"),
    ]
]

HTTP_LOG_PAGING_CASES = [
    HttpCase(f"log-{case_id}", "GET", f"/api/jobs/{{mine}}/log/?{query}", 400, name)
    for case_id, query, name in [
        ("after-negative", "after=-1", "after"),
        ("after-letters", "after=abc", "after"),
        ("after-fraction", "after=1.5", "after"),
        ("after-whole-float", "after=5.0", "after"),
        ("after-empty", "after=", "after"),
        ("after-plus-sign", "after=%2B5", "after"),
        ("after-leading-space", "after=%205", "after"),
        ("after-underscore", "after=1_000", "after"),
        ("after-exponent", "after=1e3", "after"),
        ("after-arabic-digit", "after=%D9%A3", "after"),
        ("after-20-digits", "after=" + "9" * 20, "after"),
        ("after-5000-digits", "after=" + "9" * 5000, "after"),
        ("after-twice", "after=1&after=2", "after"),
        ("limit-0", "limit=0", "limit"),
        ("limit-1001", "limit=1001", "limit"),
        ("limit-negative", "limit=-5", "limit"),
        ("limit-letters", "limit=abc", "limit"),
        ("limit-empty", "limit=", "limit"),
        ("limit-twice", "limit=5&limit=5", "limit"),
    ]
]


def sse(case_id: str, value: bytes) -> HttpCase:
    return HttpCase(
        f"sse-last-event-id-{case_id}",
        "GET",
        "/api/jobs/{mine}/events/",
        400,
        "Last-Event-ID",
        headers=(("Last-Event-ID", value),),
    )


SSE_CASES = [
    sse("letters", b"abc"),
    sse("negative", b"-1"),
    sse("fraction", b"1.5"),
    sse("plus-sign", b"+5"),
    sse("hex", b"0x10"),
    sse("exponent", b"1e3"),
    sse("superscript-two", b"\xb2"),  # "²" in latin-1: str.isdigit() says yes, int() says no
    sse("arabic-digits-utf8", "٣".encode()),
    sse("20-digits", b"9" * 20),  # past any seq a PositiveBigIntegerField holds
    sse("5000-digits", b"9" * 5000),  # past int()'s 4300-digit limit
]

FORM_CASES = [
    FormCase("form-steps-0", (("kind", "sleep"), ("sleep-steps", "0")), "sleep-steps", "between 1 and 1000"),
    FormCase("form-steps-letters", (("kind", "sleep"), ("sleep-steps", "ten")), "sleep-steps", "integer"),
    FormCase(
        "form-step_seconds-nan", (("kind", "sleep"), ("sleep-step_seconds", "nan")), "sleep-step_seconds", "finite"
    ),
    FormCase("form-limit-1e400", (("kind", "primes"), ("primes-limit", "1e400")), "primes-limit", "integer"),
    FormCase("form-unknown-kind", (("kind", "nope"),), "kind", "valid choice"),
    FormCase("form-format-xml", (("kind", "report"), ("report-format", "xml")), "report-format", "csv, jsonl"),
    FormCase("form-region-digits", (("kind", "report"), ("report-region", "N0rth")), "report-region", "letters"),
    FormCase("form-since-bad-date", (("kind", "report"), ("report-since", "2026-02-30")), "report-since", "YYYY-MM-DD"),
    FormCase(
        "form-email-bad", (("kind", "report"), ("report-prepared_for", "ana@")), "report-prepared_for", "email address"
    ),
]

CANCEL = json.dumps({"type": "cancel"})


def cancel_with(job_id: object) -> str:
    return json.dumps({"type": "cancel", "id": job_id})


SOCKET_CASES = [
    SocketCase("ws-malformed-json", "/ws/jobs/{mine}/", "error", names="JSON", send=("{not json",)),
    SocketCase("ws-log-after-not-a-number", "/ws/jobs/{mine}/?log_after=abc", "error", names="log_after"),
    SocketCase("ws-log-after-negative", "/ws/jobs/{mine}/?log_after=-1", "error", names="log_after"),
    SocketCase("ws-json-nested-2000-deep", "/ws/jobs/{mine}/", "error", names="JSON", send=("[" * 2000,)),
    SocketCase("ws-empty-text", "/ws/jobs/{mine}/", "error", names="JSON", send=("",)),
    SocketCase("ws-unknown-type", "/ws/jobs/{mine}/", "error", names="subscribe", send=('{"type": "subscribe"}',)),
    SocketCase("ws-type-missing", "/ws/jobs/{mine}/", "error", names="type", send=("{}",)),
    SocketCase("ws-type-uppercase", "/ws/jobs/{mine}/", "error", names="CANCEL", send=('{"type": "CANCEL"}',)),
    SocketCase("ws-json-array", "/ws/jobs/{mine}/", "error", names="type", send=('["cancel"]',)),
    SocketCase("ws-json-string", "/ws/jobs/{mine}/", "error", names="type", send=('"cancel"',)),
    SocketCase("ws-json-null", "/ws/jobs/{mine}/", "error", names="type", send=("null",)),
    SocketCase("ws-json-nan", "/ws/jobs/{mine}/", "error", names="type", send=("NaN",)),
    SocketCase("ws-binary-frame", "/ws/jobs/{mine}/", "error", names="Binary", send=(b"\x00\x01",)),
    SocketCase("ws-binary-json", "/ws/jobs/{mine}/", "error", names="Binary", send=(CANCEL.encode(),)),
    SocketCase(
        "ws-frame-over-4-KiB",
        "/ws/jobs/{mine}/",
        "close",
        code=1009,
        send=(json.dumps({"type": "cancel", "pad": "x" * 4096}),),
    ),
    SocketCase("ws-binary-over-4-KiB", "/ws/jobs/{mine}/", "close", code=1009, send=(b"\x00" * 5000,)),
    SocketCase("ws-flood", "/ws/jobs/{mine}/", "close", code=4429, send=('{"type": "ping"}',) * 100),
    SocketCase("ws-cancel-flood", "/ws/jobs/", "close", code=4429, send=(cancel_with("{finished}"),) * 100),
    SocketCase("ws-owner-cancel-without-id", "/ws/jobs/", "error", names="id", send=(CANCEL,)),
    SocketCase("ws-owner-cancel-malformed-id", "/ws/jobs/", "error", names="id", send=(cancel_with("not-a-uuid"),)),
    SocketCase("ws-owner-cancel-numeric-id", "/ws/jobs/", "error", names="id", send=(cancel_with(5),)),
    SocketCase("ws-owner-cancel-object-id", "/ws/jobs/", "error", names="id", send=(cancel_with({"id": 1}),)),
    SocketCase("ws-owner-cancel-unknown-job", "/ws/jobs/", "error", names="id", send=(cancel_with("{unknown}"),)),
    SocketCase(
        "ws-owner-cancel-another-visitors-job", "/ws/jobs/", "error", names="id", send=(cancel_with("{theirs}"),)
    ),
    SocketCase(
        "ws-owner-cancel-finished-job", "/ws/jobs/", "error", names="cancelled", send=(cancel_with("{finished}"),)
    ),
    SocketCase("ws-another-visitors-job", "/ws/jobs/{theirs}/", "close", code=4404),
    SocketCase("ws-unknown-job", "/ws/jobs/{unknown}/", "close", code=4404),
    SocketCase("ws-malformed-id", "/ws/jobs/not-a-uuid/", "close", code=4404),
    SocketCase("ws-malformed-id-150-chars", "/ws/jobs/" + "a" * 150 + "/", "close", code=4404),
    SocketCase("ws-malformed-id-with-slash", "/ws/jobs/x/y/", "close", code=4404),
    SocketCase("ws-unknown-socket-path", "/ws/nothing/", "close", code=4404),
    SocketCase("ws-foreign-origin", "/ws/jobs/{mine}/", "refused", code=403, origin="http://evil.example"),
    SocketCase("ws-no-origin", "/ws/jobs/{mine}/", "refused", code=403, origin=None),
    SocketCase("ws-null-origin", "/ws/jobs/", "refused", code=403, origin="null"),
    SocketCase("ws-origin-lookalike-host", "/ws/jobs/", "refused", code=403, origin="http://127.0.0.1.evil.example"),
    # An origin must match the served one in scheme, host and port, not by host alone.
    SocketCase("ws-no-session-job", "/ws/jobs/{mine}/", "close", code=4401, cookie=False),
    SocketCase("ws-no-session-owner", "/ws/jobs/", "close", code=4401, cookie=False),
    SocketCase("ws-no-session-malformed-id", "/ws/jobs/not-a-uuid/", "close", code=4401, cookie=False),
    SocketCase("ws-no-session-staff", "/ws/staff/jobs/", "close", code=4401, cookie=False),
    SocketCase("ws-origin-other-port", "/ws/jobs/{mine}/", "refused", code=403, origin="http://127.0.0.1:3000"),
    SocketCase("ws-origin-https-for-http", "/ws/jobs/{mine}/", "refused", code=403, origin="https://127.0.0.1:{port}"),
    SocketCase("ws-origin-other-allowed-host", "/ws/jobs/", "refused", code=403, origin="http://localhost:{port}"),
]

CASES: list[Case] = [
    *HTTP_POST_CASES,
    *HTTP_PATH_CASES,
    *HTTP_PAGING_CASES,
    *HTTP_LOG_PAGING_CASES,
    *SSE_CASES,
    *FORM_CASES,
    *SOCKET_CASES,
]


def test_the_table_has_at_least_40_cases_with_unique_ids() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert len(ids) >= 40


# --- the site a case runs against ------------------------------------------------


@dataclass
class Site:
    live_server: LiveServer
    http: httpx.AsyncClient
    ids: dict[str, str]  # mine, finished, theirs, unknown

    def fill(self, template: str) -> str:
        """The path or frame with {mine}, {finished}, {theirs} and {unknown} filled in."""
        for name in ("mine", "finished", "theirs", "unknown"):
            template = template.replace("{" + name + "}", self.ids[name])
        return template

    def cookie(self) -> dict[str, str]:
        return {"Cookie": f"sessionid={self.http.cookies['sessionid']}"}

    def jobs_of_mine(self) -> int:
        return int(Job.objects.filter(owner_token=self.ids["token"]).count())


@database_sync_to_async
def make_visitor_with_jobs(secret_key: str) -> tuple[str, dict[str, str]]:
    """A session of an anonymous visitor (signed with the live server's key) and three jobs
    with no task behind them: mine (queued), mine (cancelled), another visitor's (queued)."""
    token = secrets.token_hex(16)
    with override_settings(SECRET_KEY=secret_key):
        session = SessionStore()
        session[SESSION_OWNER_KEY] = token
        session.save()
    assert session.session_key is not None

    def job(owner_token: str, state: JobState, seq: int) -> str:
        now = timezone.now()
        row = Job.objects.create(
            owner_token=owner_token,
            kind="sleep",
            params={"steps": 3, "step_seconds": 0.01},
            state=state,
            seq=seq,
            created_at=now,
            updated_at=now,
            dispatched_at=now,
            finished_at=now if state == JobState.CANCELLED else None,
        )
        return str(row.id)

    ids = {
        "mine": job(token, JobState.QUEUED, 1),
        "finished": job(token, JobState.CANCELLED, 2),
        "theirs": job(secrets.token_hex(16), JobState.QUEUED, 1),
        "unknown": str(uuid.uuid4()),
        "token": token,
    }
    return session.session_key, ids


@pytest.fixture
async def site(live_server: LiveServer, live_server_env: dict[str, str]) -> AsyncIterator[Site]:
    session_key, ids = await make_visitor_with_jobs(live_server_env["SECRET_KEY"])
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as http:
        http.cookies.set("sessionid", session_key)
        assert (await http.get("/")).status_code == 200  # hands out the csrftoken cookie
        yield Site(live_server, http, ids)


# --- running a case --------------------------------------------------------------


def no_traceback(text: str) -> None:
    for marker in TRACEBACK_MARKERS:
        assert marker not in text, f"the answer shows {marker!r}: {text[:2000]}"


def names(errors: dict[str, list[str]], name: str) -> bool:
    """The name is a key of `errors`, or a message mentions it."""
    return name in errors or any(name in message for messages in errors.values() for message in messages)


async def chunks(body: bytes) -> AsyncIterator[bytes]:
    """The body without Content-Length (Transfer-Encoding: chunked), in 16 KiB pieces."""
    for start in range(0, len(body), 16 * 1024):
        yield body[start : start + 16 * 1024]


async def run_http(site: Site, case: HttpCase) -> None:
    headers = [(name.encode(), value) for name, value in case.headers]  # bytes: some values are not text
    if case.csrf:
        headers.append((b"X-CSRFToken", site.http.cookies["csrftoken"].encode()))
    if case.content_type is not None:
        headers.append((b"Content-Type", case.content_type.encode()))
    content: bytes | AsyncIterator[bytes] | None = chunks(case.body or b"") if case.chunked else case.body
    jobs_before = await database_sync_to_async(site.jobs_of_mine)()

    response = await site.http.request(case.method, site.fill(case.path), content=content, headers=headers)

    text = response.text
    assert response.status_code == case.status, text[:2000]
    no_traceback(text)
    if response.request.url.path.startswith("/api/"):
        assert response.headers["content-type"].startswith("application/json"), response.headers
        body = response.json()
        assert set(body) == {"errors"}, body
        assert names(body["errors"], case.names), body
        if case.status == 405:  # the message names the method refused and those allowed, as `Allow` does
            allowed = [method.strip() for method in response.headers["Allow"].split(",")]
            assert allowed and case.method not in allowed, response.headers
            [message] = body["errors"]["method"]
            assert all(method in message for method in [case.method, *allowed]), message
    else:
        assert case.names in text, text[:2000]
    assert await database_sync_to_async(site.jobs_of_mine)() == jobs_before  # bad input never makes a job


async def run_form(site: Site, case: FormCase) -> None:
    jobs_before = await database_sync_to_async(site.jobs_of_mine)()

    response = await site.http.post(
        "/", data=dict(case.fields), headers={"X-CSRFToken": site.http.cookies["csrftoken"]}
    )

    assert response.status_code == 400, response.text[:2000]
    no_traceback(response.text)
    error = re.search(rf'data-error-for="{re.escape(case.field)}"[^>]*>([^<]*)<', response.text)
    assert error is not None, f"no error element for {case.field}"
    assert case.names in error.group(1), error.group(0)
    assert await database_sync_to_async(site.jobs_of_mine)() == jobs_before


def origin_of(site: Site, case: SocketCase) -> Origin | None:
    if case.origin is None:
        return None
    if case.origin == "site":
        return Origin(site.live_server.url)
    return Origin(case.origin.replace("{port}", str(site.live_server.port)))


async def frames_until_close(socket: ClientConnection) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT)))
    except ConnectionClosed:
        return frames


async def next_error(socket: ClientConnection) -> dict[str, Any]:
    """The next error frame, past the snapshot and any job frame."""
    while True:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
        if frame["type"] == "error":
            return frame


async def run_socket(site: Site, case: SocketCase) -> None:
    url = f"{site.live_server.ws_url}{site.fill(case.path)}"
    headers = site.cookie() if case.cookie else {}
    if case.expect == "refused":
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, origin=origin_of(site, case), additional_headers=headers, open_timeout=TIMEOUT):
                pass
        assert refused.value.response.status_code == case.code
        no_traceback(bytes(refused.value.response.body or b"").decode(errors="replace"))
        return

    async with connect(url, origin=origin_of(site, case), additional_headers=headers, open_timeout=TIMEOUT) as s:
        for frame in case.send:
            await s.send(site.fill(frame) if isinstance(frame, str) else frame)
        if case.expect == "close":
            frames = await frames_until_close(s)
            assert s.close_code == case.code, f"closed {s.close_code} {s.close_reason!r}, frames {frames}"
            no_traceback(s.close_reason or "")
            assert all(frame["type"] != "job" or set(frame["job"]) == JOB_KEYS for frame in frames)
            return
        error = await next_error(s)
        assert set(error) == {"type", "error"}
        assert case.names in error["error"], error
        no_traceback(error["error"])
        # The socket stays open: the next bad frame gets its own answer.
        await s.send('{"type": "ping"}')
        assert "ping" in (await next_error(s))["error"]


async def run_case(site: Site, case: Case) -> None:
    if isinstance(case, HttpCase):
        await run_http(site, case)
    elif isinstance(case, FormCase):
        await run_form(site, case)
    else:
        await run_socket(site, case)


async def still_serves(site: Site) -> None:
    """The visitor's job answers over HTTP and WebSocket, and the queued one is untouched."""
    response = await site.http.get(site.fill("/api/jobs/{mine}/"))
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "queued"
    async with connect(
        f"{site.live_server.ws_url}{site.fill('/ws/jobs/{mine}/')}",
        origin=Origin(site.live_server.url),
        additional_headers=site.cookie(),
        open_timeout=TIMEOUT,
    ) as socket:
        frame = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
    assert frame["type"] == "job" and frame["job"]["id"] == site.ids["mine"]
    theirs = await database_sync_to_async(Job.objects.get)(pk=site.ids["theirs"])
    assert theirs.state == JobState.QUEUED  # nothing in the table reached another visitor's job


# --- the tests -------------------------------------------------------------------


def server_log_size(site: Site) -> int:
    return site.live_server.log.stat().st_size


def assert_no_server_errors_since(site: Site, offset: int) -> None:
    """What daphne logged since `offset` holds no traceback and no error."""
    with site.live_server.log.open("rb") as log:
        log.seek(offset)
        logged = log.read().decode(errors="replace")
    for marker in ("Traceback", " ERROR "):
        assert marker not in logged, f"the server logged {marker.strip()!r}:\n{logged[-4000:]}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_bad_input_is_answered_naming_the_problem(site: Site, case: Case) -> None:
    offset = server_log_size(site)
    await run_case(site, case)
    await still_serves(site)
    assert_no_server_errors_since(site, offset)


async def test_after_the_whole_table_the_server_runs_a_normal_job_end_to_end(site: Site, worker: Any) -> None:
    offset = server_log_size(site)
    for case in CASES:
        await run_case(site, case)

    response = await site.http.post(
        "/api/jobs/",
        json={"kind": "sleep", "params": {"steps": 3, "step_seconds": 0.01}},
        headers={"X-CSRFToken": site.http.cookies["csrftoken"]},
    )
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    states: list[str] = []
    async with connect(
        f"{site.live_server.ws_url}/ws/jobs/{job_id}/",
        origin=Origin(site.live_server.url),
        additional_headers=site.cookie(),
        open_timeout=TIMEOUT,
    ) as socket:
        while not states or states[-1] not in TERMINAL:
            frame = json.loads(await asyncio.wait_for(socket.recv(), JOB_TIMEOUT))
            if frame["type"] == "job":  # its log lines come between
                states.append(frame["job"]["state"])
    assert states[-1] == "succeeded"
    assert (await site.http.get(f"/api/jobs/{job_id}/")).json()["result"] == {"steps": 3, "seconds": 0.03}
    await still_serves(site)
    assert_no_server_errors_since(site, offset)
