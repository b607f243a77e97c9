"""Sessions only where needed (docs/contract.md#http): against the real daphne, cookieless
API reads (a job's log included), the health check, SSE, pages of a job and sockets write no session row; only
`GET /` and a request that creates a job do. Expired sessions are cleared once a day by
the beat task `jobs.clear_sessions`, run here by a real worker."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from celery.schedules import crontab
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.utils import timezone
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from celery_app import app
from jobs.task_names import CLEAR_SESSIONS_TASK
from tests.conftest import LiveServer
from tests.waiting import wait_until

TIMEOUT = 30.0
ROUNDS = 3  # each cookieless request below, this many times

COOKIELESS_REQUESTS = [
    ("GET", "/api/job-kinds/"),  # the compose healthcheck
    ("GET", "/api/jobs/"),
    ("GET", "/api/jobs/?page=9"),  # a 400
    ("GET", "/api/jobs/{unknown}/"),
    ("GET", "/api/jobs/{unknown}/result/"),
    ("GET", "/api/jobs/{unknown}/events/"),
    ("GET", "/api/jobs/{unknown}/log/"),
    ("GET", "/api/jobs/{unknown}/log/?after=abc"),  # a 400
    ("GET", "/api/jobs/{unknown}/log.txt"),
    ("GET", "/api/openapi.json"),
    ("GET", "/jobs/{unknown}/"),
    ("GET", "/healthz"),
    ("POST", "/api/jobs/{unknown}/cancel/"),  # refused: no CSRF token
    ("POST", "/api/jobs/"),  # refused: no CSRF token, so no job
]


def session_rows() -> int:
    return Session.objects.count()


def cookieless(live_server: LiveServer, method: str, path: str) -> httpx.Response:
    """A request from a client that keeps no cookies."""
    with httpx.Client(base_url=live_server.url, timeout=TIMEOUT) as client:
        response = client.request(method, path.format(unknown=uuid.uuid4()))
    # /healthz may answer 503 here (no worker for this daphne): it answers all the same.
    assert response.status_code < 500 or path == "/healthz", (method, path, response.status_code, response.text[:300])
    return response


def open_cookieless_socket(live_server: LiveServer, path: str) -> None:
    try:
        with connect(f"{live_server.ws_url}{path}", origin=Origin(live_server.url), open_timeout=TIMEOUT) as socket:
            socket.recv(timeout=TIMEOUT)  # the snapshot, or the close
    except (ConnectionClosed, InvalidStatus, TimeoutError):
        pass  # refused or closed: either way the handshake ran, which is what counts here


@pytest.mark.django_db(transaction=True)
def test_cookieless_requests_and_sockets_write_no_session_row(live_server: LiveServer) -> None:
    before = session_rows()

    for _ in range(ROUNDS):
        for method, path in COOKIELESS_REQUESTS:
            assert "sessionid" not in cookieless(live_server, method, path).cookies, (method, path)
        open_cookieless_socket(live_server, "/ws/jobs/")
        open_cookieless_socket(live_server, f"/ws/jobs/{uuid.uuid4()}/")

    assert session_rows() == before


@pytest.mark.django_db(transaction=True)
def test_the_first_get_of_the_page_creates_one_session(live_server: LiveServer) -> None:
    before = session_rows()

    response = cookieless(live_server, "GET", "/")

    assert response.status_code == 200
    assert "sessionid" in response.cookies
    assert session_rows() == before + 1


@pytest.mark.django_db(transaction=True)
def test_a_first_job_posted_without_a_session_creates_one(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=TIMEOUT) as client:
        assert client.get("/api/job-kinds/").status_code == 200  # the csrftoken cookie, and no session
        assert "sessionid" not in client.cookies
        before = session_rows()

        response = client.post(
            "/api/jobs/",
            json={"kind": "sleep", "params": {"steps": 1, "step_seconds": 0}},
            headers={"X-CSRFToken": client.cookies["csrftoken"]},
        )
        assert response.status_code == 201, response.text
        assert session_rows() == before + 1

        # The session it started owns the job.
        assert client.get(f"/api/jobs/{response.json()['id']}/").status_code == 200
        assert session_rows() == before + 1


# --- clearing expired sessions ------------------------------------------------------


def test_beat_sends_clear_sessions_once_a_day() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE[CLEAR_SESSIONS_TASK]
    assert entry["task"] == CLEAR_SESSIONS_TASK
    schedule: Any = entry["schedule"]
    assert isinstance(schedule, crontab)
    hours, minutes, days = (getattr(schedule, name) for name in ("hour", "minute", "day_of_week"))
    assert len(hours) == 1 and len(minutes) == 1 and days == set(range(7))  # one run, every day


def _session(expires_in: timedelta) -> str:
    store = SessionStore()
    store["jobstream_owner"] = uuid.uuid4().hex
    store.create()
    assert store.session_key is not None
    Session.objects.filter(session_key=store.session_key).update(expire_date=timezone.now() + expires_in)
    return store.session_key


def test_clear_sessions_task_deletes_expired_sessions_only(worker: Any) -> None:
    expired, live = _session(timedelta(days=-1)), _session(timedelta(days=1))

    app.send_task(CLEAR_SESSIONS_TASK)  # as beat sends it; the worker runs it

    assert wait_until(lambda: not Session.objects.filter(session_key=expired).exists(), timeout=TIMEOUT)
    assert Session.objects.filter(session_key=live).exists()
