"""Cancel, every way docs/contract.md#http and #websocket offer it, against real
processes: the API, a `cancel` frame on the job socket, a `cancel` frame with the id on
the owner socket, and the page's button; a queued job never starts; a running job that
reports once a second ends `cancelled` within 2 s; a finished job answers 409 or an error
frame.

Sync on purpose (httpx, websockets' sync client): the module also drives a browser,
whose sync Playwright loop would keep async tests of the same module from starting.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from celery import signals
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from jobs.models import Job, JobState
from jobs.services import job_dispatch
from jobs.tasks import run_job
from tests.waiting import wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.conftest import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)

CANCEL_WITHIN = 2.0  # seconds, for kinds that report at least once a second (docs/job-kinds.md#cancellation)
START_TIMEOUT = 30.0  # seconds for a job to start: it may queue behind another test's job on the solo worker
FRAME_TIMEOUT = 10.0  # seconds for the next frame
TASK_TIMEOUT = 15.0  # seconds for the worker to take a task off the broker
TERMINAL = {"succeeded", "failed", "cancelled"}
ONCE_A_SECOND = {"kind": "sleep", "params": {"steps": 60, "step_seconds": 1.0}}  # reports every second for a minute


# --- helpers ---------------------------------------------------------------------


@pytest.fixture
def http(live_server: LiveServer) -> Iterator[httpx.Client]:
    """A visitor with a session: the first GET / creates it (cookies persist)."""
    with httpx.Client(base_url=live_server.url, timeout=FRAME_TIMEOUT) as client:
        assert client.get("/").status_code == 200
        yield client


def post_job(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/api/jobs/", json=body, headers={"X-CSRFToken": http.cookies["csrftoken"]})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def cancel_over_api(http: httpx.Client, job_id: str) -> httpx.Response:
    return http.post(f"/api/jobs/{job_id}/cancel/", headers={"X-CSRFToken": http.cookies["csrftoken"]})


def open_socket(live_server: LiveServer, http: httpx.Client, path: str) -> ClientConnection:
    return connect(
        f"{live_server.ws_url}{path}",
        origin=Origin(live_server.url),
        additional_headers={"Cookie": f"sessionid={http.cookies['sessionid']}"},
        open_timeout=FRAME_TIMEOUT,
    )


def next_frame(socket: ClientConnection, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(socket.recv(timeout=timeout))
    return frame


def follow_until(socket: ClientConnection, job_id: str, done: Any, timeout: float) -> dict[str, Any]:
    """Reads frames until a frame of the job satisfies `done`; fails on an error frame or the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        frame = next_frame(socket, timeout=max(0.01, deadline - time.monotonic()))
        assert frame["type"] != "error", frame
        if frame["type"] == "log":  # the job's log lines, between its frames
            continue
        jobs = frame["jobs"] if frame["type"] == "snapshot" else [frame["job"]]
        for job in jobs:
            if job["id"] == job_id and done(job):
                return job


def running_with_progress(job: dict[str, Any]) -> bool:
    return job["state"] == "running" and job["progress"] is not None


# --- a running job stops within 2 s, however the cancel is asked ----------------------


@pytest.mark.parametrize("how", ["api", "job-socket-frame", "owner-socket-frame"])
def test_running_job_reporting_once_a_second_is_cancelled_within_2_s(
    live_server: LiveServer, http: httpx.Client, worker: Any, how: str
) -> None:
    job = post_job(http, ONCE_A_SECOND)
    with open_socket(live_server, http, f"/ws/jobs/{job['id']}/") as watch:
        follow_until(watch, job["id"], running_with_progress, START_TIMEOUT)

        asked_at = time.monotonic()
        if how == "api":
            response = cancel_over_api(http, job["id"])
            assert response.status_code == 202, response.text
            assert response.json()["state"] == "running"  # asked; the worker stops at its next report
        elif how == "job-socket-frame":
            watch.send(json.dumps({"type": "cancel"}))
        else:
            with open_socket(live_server, http, "/ws/jobs/") as owner_socket:
                assert next_frame(owner_socket)["type"] == "snapshot"
                owner_socket.send(json.dumps({"type": "cancel", "id": job["id"]}))
                # A cancel frame gets no reply of its own: the job frames that follow show it.
                shown = follow_until(owner_socket, job["id"], lambda j: j["state"] in TERMINAL, CANCEL_WITHIN + 1)
                assert shown["state"] == "cancelled"
        ended = follow_until(watch, job["id"], lambda j: j["state"] in TERMINAL, CANCEL_WITHIN + 1)
        took = time.monotonic() - asked_at
        with pytest.raises(ConnectionClosedOK):
            watch.recv(timeout=FRAME_TIMEOUT)
        assert watch.close_code == 1000  # the job socket closes 1000 after the terminal frame

    assert ended["state"] == "cancelled"
    assert took < CANCEL_WITHIN, f"cancelled {took:.2f} s after the cancel was asked"
    assert ended["progress"]["current"] < 60  # it stopped, it did not run out its steps
    assert ended["finished_at"] is not None
    assert http.get(f"/api/jobs/{job['id']}/").json() == ended


def test_cancel_frame_for_a_finished_job_gets_an_error_frame_naming_its_state(
    live_server: LiveServer, http: httpx.Client
) -> None:
    job = post_job(http, ONCE_A_SECOND)
    assert cancel_over_api(http, job["id"]).status_code == 202  # queued (or just started): now ends
    assert wait_until(lambda: http.get(f"/api/jobs/{job['id']}/").json()["state"] in TERMINAL, timeout=START_TIMEOUT)
    ended = http.get(f"/api/jobs/{job['id']}/").json()

    with open_socket(live_server, http, "/ws/jobs/") as owner_socket:
        assert next_frame(owner_socket)["type"] == "snapshot"
        owner_socket.send(json.dumps({"type": "cancel", "id": job["id"]}))
        frame = next_frame(owner_socket)
        assert frame["type"] == "error"
        assert ended["state"] in frame["error"], frame
        owner_socket.send(json.dumps({"type": "cancel", "id": job["id"]}))
        assert next_frame(owner_socket)["type"] == "error"  # the socket stayed open

    response = cancel_over_api(http, job["id"])
    assert response.status_code == 409
    assert response.json() == {"errors": {"state": [f"The job already ended ({ended['state']})."]}}
    assert http.get(f"/api/jobs/{job['id']}/").json()["seq"] == ended["seq"]  # nothing changed


# --- a queued job never starts -----------------------------------------------------


class TaskEvents:
    """What the in-process Celery worker did with one task id (Celery's own signals)."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.events: list[str] = []
        self.handled = threading.Event()

    def on_prerun(self, task_id: str | None = None, **_: Any) -> None:
        if task_id == self.task_id:
            self.events.append("prerun")

    def on_postrun(self, task_id: str | None = None, **_: Any) -> None:
        if task_id == self.task_id:
            self.events.append("postrun")
            self.handled.set()

    def on_revoked(self, request: Any = None, **_: Any) -> None:
        if request is not None and getattr(request, "id", None) == self.task_id:
            self.events.append("revoked")
            self.handled.set()

    def __enter__(self) -> TaskEvents:
        signals.task_prerun.connect(self.on_prerun, weak=False)
        signals.task_postrun.connect(self.on_postrun, weak=False)
        signals.task_revoked.connect(self.on_revoked, weak=False)
        return self

    def __exit__(self, *exc: object) -> None:
        signals.task_prerun.disconnect(self.on_prerun)
        signals.task_postrun.disconnect(self.on_postrun)
        signals.task_revoked.disconnect(self.on_revoked)


def queued_job_of(user: User) -> Job:
    """A job as job_create leaves it just before dispatch: queued, its task not yet sent."""
    now = timezone.now()
    return Job.objects.create(
        owner_user=user, kind="sleep", params={"steps": 5, "step_seconds": 0.01}, seq=1, created_at=now, updated_at=now
    )


def signed_in(username: str) -> tuple[User, Client]:
    user = User.objects.create_user(username=username, password="pw-for-tests-only")
    client = Client()
    client.force_login(user)
    return user, client


def assert_never_started(job_id: uuid.UUID, seq_when_cancelled: int) -> None:
    job = Job.objects.get(pk=job_id)
    assert job.state == JobState.CANCELLED
    assert job.started_at is None  # the kind never ran: job_start sets it before the kind is called
    assert job.has_progress is False  # sleep reports as soon as it runs
    assert job.seq == seq_when_cancelled  # nothing changed the job after the cancel


def test_cancelled_queued_job_is_not_run_when_its_task_reaches_a_worker(worker: Any) -> None:
    user, client = signed_in("ada")
    job = queued_job_of(user)
    response = client.post(f"/api/jobs/{job.id}/cancel/")
    assert response.status_code == 202
    cancelled = response.json()
    assert cancelled["state"] == "cancelled" and cancelled["seq"] == 2

    with TaskEvents(str(job.id)) as task:
        assert job_dispatch(job_id=job.id)  # the task, under the job's id, reaches the running worker
        assert task.handled.wait(TASK_TIMEOUT), "the worker never took the task"

    assert_never_started(job.id, cancelled["seq"])


def test_task_of_a_cancelled_job_does_not_run_it_on_a_worker_that_missed_the_revoke(worker: Any) -> None:
    # A worker started after the cancel never heard its revoke (Celery broadcasts revokes
    # to the workers up at the time): only the task's own state check stands in the way.
    # A task id the worker never saw revoked plays that worker.
    user, client = signed_in("ada")
    job = queued_job_of(user)
    response = client.post(f"/api/jobs/{job.id}/cancel/")
    assert response.status_code == 202
    task_id = str(uuid.uuid4())

    with TaskEvents(task_id) as task:
        run_job.apply_async(args=(str(job.id),), task_id=task_id)
        assert task.handled.wait(TASK_TIMEOUT), "the worker never ran the task"

    assert task.events == ["prerun", "postrun"]  # it ran: the state check at its start stopped the job
    assert_never_started(job.id, response.json()["seq"])


# --- the page's button ---------------------------------------------------------------


def test_cancel_button_on_the_index_card_cancels_a_running_job_within_2_s(
    live_server: LiveServer, worker: Any, page: Page
) -> None:
    from playwright.sync_api import expect

    page.goto(f"{live_server.url}/")
    page.wait_for_function("() => window.jobstream !== undefined")
    page.select_option("select[name=kind]", "sleep")
    page.fill("input[name='sleep-steps']", "60")
    page.fill("input[name='sleep-step_seconds']", "1")
    page.get_by_role("button", name="Start").click()
    first = page.locator("#jobs article.job").first
    expect(first).to_have_attribute("data-state", "running", timeout=START_TIMEOUT * 1000)
    job_id = first.get_attribute("data-job-id")
    assert job_id is not None
    card = page.locator(f"#job-{job_id}")  # by id: the page may redraw a card into a new element
    page.wait_for_function(  # it reports: its bar moved
        "(selector) => Number(document.querySelector(selector)?.getAttribute('aria-valuenow')) > 0",
        arg=f"#job-{job_id} [role=progressbar]",
        timeout=START_TIMEOUT * 1000,
    )

    asked_at = time.monotonic()
    card.get_by_role("button", name="Cancel").click()
    expect(card).to_have_attribute("data-state", "cancelled", timeout=CANCEL_WITHIN * 1000)
    took = time.monotonic() - asked_at

    assert took < CANCEL_WITHIN
    expect(card.get_by_role("button", name="Cancel")).to_have_count(0)
    assert Job.objects.get(pk=job_id).state == JobState.CANCELLED
